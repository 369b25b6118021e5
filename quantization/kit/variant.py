"""One plan item while a route process measures it (Variant: the built variant, its scoring fields, its rows so far),
the records items end with (ItemRecords), and what a row keeps of a paired comparison and of its memory traffic."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from quantization.kit.config import run_id
from utils.plan import Item, Plan, write_item_record
from quantization.kit.contract import Built, ModelContext

log = logging.getLogger("quantization.kit")

@dataclass
@dataclass


class Variant:
    item: Item
    built: Built
    fields: dict  # row fields from scoring, fidelity, memory
    extra: dict
    seconds: dict  # for the item's record: open, build, score, timing per batch, decode
    rows: dict = field(default_factory=dict)  # row key -> the latest row written for it
    untimed: list = field(default_factory=list)  # batches left untimed (the plan's deadline)

    @property
    def method(self) -> str:
        return self.item.method

    @property
    def precision(self) -> str:
        return self.item.precision


def close_built(built: Built | None) -> None:
    if built is not None and built.close is not None:
        try:
            built.close()
        except Exception:  # noqa: BLE001 - releasing must not hide the real result
            log.debug("close failed", exc_info=True)


def common_fields(v: Variant) -> dict:
    cal = v.built.calibration
    return dict(size_mb=v.built.size_mb, compute_precision=v.built.compute_precision, notes="; ".join(v.built.notes),
                calib_samples=cal.samples if cal else None, calib_seconds=cal.seconds if cal else None,
                calib_method=cal.method if cal else None, **v.fields)


# how every paired speedup interval is computed (stored in the rows, so each one can be recomputed from its row)
SPEEDUP_CI = {"paired": True, "n_boot": 2000, "seed": 0, "conf": 0.95}


def paired_record(trials, base: str, method: str) -> dict:
    """The baseline's side of a paired comparison as a row keeps it: its name, samples and trial indices, and how
    the interval was computed (utils.stats.speedup_ci over the trials both timed)."""
    return {"name": base, "samples_ms": list(trials.latency[base].samples_ms), "trials": list(trials.trial_of[base]),
            "speedup_ci": SPEEDUP_CI}


def traffic_record(ctx: ModelContext, v: Variant, batch: int, kind: str, shape=None, prompt_tokens=None,
             new_tokens=None) -> dict | None:
    """The row's estimated bytes per timed call (utils.traffic: weights at their stored size, activations, KV cache)
    from the manifest's shapes: the memory side of the aggregation's roofline."""
    from utils import traffic

    return traffic.estimate(traffic.shapes_from_manifest(ctx.manifest), size_mb=v.built.size_mb,
                            batch=batch, latency_kind=kind, latency_shape=shape, prompt_tokens=prompt_tokens,
                            new_tokens=new_tokens, compute_precision=v.built.compute_precision)


class ItemRecords:
    """Writes each item's record when it ends (<runs_dir>/items/<item id>.json): status, its rows, seconds spent,
    the configuration hash and code commit. The launcher marks the planned items without a record of this run as
    unfinished, --resume skips the finished ones, the next plan estimates from the seconds."""

    def __init__(self, plan: Plan, runs_dir: Path):
        from utils.envinfo import git_commit

        self.plan, self.runs_dir, self.commit = plan, runs_dir, git_commit()
        self.written: dict[str, str] = {}  # item id -> status

    def write(self, item: Item, status: str, reason: str = "", rows=(), seconds: dict | None = None) -> None:
        write_item_record(self.runs_dir, {
            "item": item.to_dict(), "status": status, "reason": reason,
            "rows": list(dict.fromkeys(r.key if hasattr(r, "key") else str(r) for r in rows)),
            "run_id": run_id(), "git_commit": self.commit, "config_key": self.plan.config_key(item),
            "seconds": rounded(seconds or {})})
        self.written[item.ident] = status


def rounded(x):
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    return x


def cfg_verbose() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)
