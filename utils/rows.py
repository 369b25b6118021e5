"""The result row: one frozen dataclass per measurement, written as one JSON file, atomically.

Tables are rendered from these rows (evaluation.report.aggregate), never from printed output.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from utils.atomic import atomic_write_json
from utils.paths import RUNS_DIR

STATUSES = ("ok", "skipped", "failed")
METRICS = ("top1", "ppl")


@dataclass(frozen=True)
class ResultRow:
    # identity: one row per (model, weights, toolchain, method, precision, device, batch)
    model: str
    weights: str
    dataset: str
    toolchain: str
    method: str
    precision: str
    device: str
    batch: int
    # accuracy (top1 in percent for classifiers, token perplexity for language models)
    metric: str
    value: float | None = None
    top5: float | None = None
    # latency through utils.harness (raw samples are in `extra`)
    latency_kind: str | None = None
    latency_p10_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    first_call_ms: float | None = None
    throughput: float | None = None  # items/s (images/s or tokens/s)
    throughput_unit: str | None = None
    # work per item counted from the model itself, and the precision its matmuls run in
    ops_per_item: float | None = None
    compute_precision: str | None = None
    # % of the model's multiply-accumulates (quantization/kit/macs.py) the deployed artifact ran in reduced precision,
    # read from what its runtime executed (quantized rows; the layers and the scope comparison are in extra.coverage)
    coverage_pct: float | None = None
    size_mb: float | None = None
    calib_samples: int | None = None
    calib_seconds: float | None = None
    calib_method: str | None = None
    eval_limit: int | None = None  # scored on a capped subset (--eval-limit): a separate row, never the full one
    # fidelity against the FP32 baseline's outputs on the same evaluation samples (utils.fidelity)
    fidelity_vs: str | None = None  # "<toolchain>/<method>" the outputs were compared with
    agreement: float | None = None  # % top-1 (classifier) / next-token top-1 (LM) equal to the baseline's
    flips_lost: int | None = None  # samples the baseline got right and this row wrong
    flips_gained: int | None = None  # the reverse
    sqnr_db: float | None = None  # logit SQNR against the baseline's logits (classifiers)
    kl: float | None = None  # mean KL(baseline || this) of the softmax (per sample / per token)
    # an FP32 row compared with the FP32 reference runtime (torch eager): export or runtime faults show here
    xrt_vs: str | None = None
    xrt_agreement: float | None = None
    xrt_sqnr_db: float | None = None
    # latency with confidence: trials interleaved with the baseline in the same process (utils.harness.interleaved)
    latency_samples: int | None = None
    speedup_vs: str | None = None  # what the paired speedup was measured against (in-process baseline)
    speedup_paired: float | None = None  # median(baseline) / median(this), same trials
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    peak_mem_mb: float | None = None  # resident memory high-water of building and running this variant
    gpu_peak_mem_mb: float | None = None  # device memory high-water (torch.cuda.max_memory_allocated), GPU rows
    # KV-cache generation rows (latency_kind "decode"): latency_* is the time per generated token after the first
    ttft_ms: float | None = None  # median time to first token (the prompt's prefill and its first token)
    token_match: float | None = None  # % of greedy tokens equal to the in-process FP32 baseline's, same prompts
    # an ok row written as soon as its variant is scored, before its batch is timed: "timing" (the latency columns
    # come later under the same key; until then the table says "not timed"); "" for a finished row
    pending: str = ""
    # --repeats N: which pass of the run measured this row (1..N; None for a run of one pass); the table combines a
    # run's passes into one line with their between-run spread (evaluation.report.aggregate)
    repeat: int | None = None
    status: str = "ok"
    reason: str = ""
    notes: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.status != "ok" and not self.reason:
            raise ValueError("a skipped or failed row needs a reason")
        if self.status == "ok" and self.value is None and self.latency_p50_ms is None and not self.pending \
                and self.agreement is None:
            raise ValueError("an ok row needs an accuracy value, a fidelity value or a latency (or is pending)")
        if self.pending and self.status != "ok":
            raise ValueError("only an ok row can be pending")
        if int(self.batch) < 1:
            raise ValueError("batch must be >= 1")

    @property
    def complete(self) -> bool:
        """An ok row with nothing pending: what a later failed, skipped or pending row never replaces."""
        return self.status == "ok" and not self.pending

    @property
    def key(self) -> str:
        parts = [self.model, self.weights, self.toolchain, self.method, self.precision, self.device, f"b{self.batch}"]
        if self.eval_limit is not None:
            parts.append(f"lim{self.eval_limit}")
        if self.latency_kind == "decode":  # the generation row of a variant, beside its full-sequence row
            parts.append("decode")
        if self.repeat is not None:  # one row per pass of a repeated run
            parts.append(f"r{self.repeat}")
        return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)) for p in parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResultRow":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> "ResultRow":
        return dataclasses.replace(self, **changes)


ATTEMPTS = "attempts"  # <runs_dir>/attempts/<key>.json: a failed/skipped attempt that did not replace an ok row


def write_row(row: ResultRow, runs_dir: Path | str = RUNS_DIR) -> Path:
    """Write one row as `<runs_dir>/<key>.json`, atomically.

    A complete ok row replaces whatever was there. A row that is not complete (skipped, failed, or ok but pending
    its timing) never replaces a complete ok row of the same key, nor does a skipped or failed row replace a pending
    one: it is kept beside it as `attempts/<key>.json` (the table notes the latest attempt) and the earlier row stays
    until a complete ok row replaces it.
    """
    runs_dir = Path(runs_dir)
    path = runs_dir / f"{row.key}.json"
    attempt = runs_dir / ATTEMPTS / f"{row.key}.json"
    if not row.complete:
        prev = read_row(path)
        if prev is not None and (prev.complete or (prev.status == "ok" and row.status != "ok")):
            return atomic_write_json(attempt, row.to_dict())
    out = atomic_write_json(path, row.to_dict())
    if row.status == "ok" and attempt.exists():
        attempt.unlink()
    return out


def read_row(path: Path | str) -> "ResultRow | None":
    """One row file, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return ResultRow.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError):
        return None


DAMAGED = "damaged"  # <runs_dir>/damaged/: row files that could not be read, moved aside (never deleted)
log = logging.getLogger("utils.rows")


def read_rows(runs_dir: Path | str = RUNS_DIR, damaged: list | None = None) -> list[ResultRow]:
    """Every row of a runs folder. A file that cannot be read as a row (truncated by a full disk, a copy cut short)
    is moved aside to `damaged/`; `damaged` (when given) collects (file, why) for the caller to report, else each is
    named in one warning."""
    rows = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            with open(path, encoding="utf-8") as fh:
                rows.append(ResultRow.from_dict(json.load(fh)))
        except (ValueError, TypeError, KeyError) as exc:
            why = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:160]}"
            dest = quarantine(path)
            if damaged is not None:
                damaged.append((str(path), why))
            else:
                log.warning("damaged row file %s (%s): moved to %s, left out of the table", path, why, dest)
        except OSError as exc:
            if damaged is not None:
                damaged.append((str(path), f"{exc.__class__.__name__}: {exc}"))
            else:
                log.warning("cannot read row file %s: %s", path, exc)
    return rows


def quarantine(path: Path) -> Path:
    """Move a damaged file to `<its folder>/damaged/` (a numbered name when one is there already)."""
    dest_dir = path.parent / DAMAGED
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    n = 1
    while dest.exists():
        dest = dest_dir / f"{path.stem}.{n}{path.suffix}"
        n += 1
    try:
        os.replace(path, dest)
    except OSError:
        return path
    return dest


def read_attempts(runs_dir: Path | str = RUNS_DIR) -> dict[str, ResultRow]:
    """key -> the latest failed/skipped attempt kept beside an ok row."""
    out = {}
    for path in sorted((Path(runs_dir) / ATTEMPTS).glob("*.json")):
        r = read_row(path)
        if r is not None:
            out[r.key] = r
    return out


def status_rows(
    *,
    status: str,
    reason: str,
    model: str,
    weights: str,
    dataset: str,
    toolchain: str,
    variants: Iterable[tuple[str, str]],
    device: str,
    batches: Iterable[int],
    metric: str,
    eval_limit: int | None = None,
    environment: dict[str, Any] | None = None,
    repeat: int | None = None,
) -> list[ResultRow]:
    """`skipped`/`failed` rows for every (method, precision) x batch a route could not measure."""
    return [
        ResultRow(
            model=model, weights=weights, dataset=dataset, toolchain=toolchain, method=method,
            precision=precision, device=device, batch=b, metric=metric, status=status,
            reason=reason, eval_limit=eval_limit, environment=dict(environment or {}), repeat=repeat,
        )
        for method, precision in variants
        for b in batches
    ]
