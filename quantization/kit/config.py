"""The shared flags of every route, the typed configuration they become, and the row writer.

One place declares `--weights`, the calibration size checks and the timing flags; a route adds
its own options (`Route.add_options`) and turns them into its own typed options object.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from utils.envinfo import environment_record
from utils.cli import ArgParser, int_list, positive_float, positive_int
from utils.errors import SuiteError
from utils.paths import RUNS_DIR
from utils.plan import Item, Plan, Settings, build_plan
from utils.registry import (SOURCE_HELP, TOOLCHAINS, WEIGHTS, batches_text, calib_text,
                             model_decl, parse_list)
from utils.rows import ResultRow, status_rows, write_row
from utils.specs import ModelSource

log = logging.getLogger(__name__)


def add_source_flags(ap: argparse.ArgumentParser) -> None:
    """--weights / --weights-path / --data: which model and which data (bench, routes and sweeps)."""
    ap.add_argument("--weights", default="embedded", choices=WEIGHTS,
                    help="embedded: the offline default trained on first use; pretrained: real weights; random: the "
                         "real architectures (the model declarations' random configs) randomly initialised, no download: "
                         "latency, size and memory only (accuracy cells stay empty); methods that differ from another only "
                         "by calibration (utils/registry.py latency_twins, e.g. ORT entropy/percentile) run only when "
                         "--methods names them")
    ap.add_argument("--weights-path", default=None, help=SOURCE_HELP["weights_path"])
    ap.add_argument("--data", default=None, help=SOURCE_HELP["data"])


def add_measure_flags(ap: argparse.ArgumentParser) -> None:
    """Calibration size, evaluation cap, threads and timing: the flags every route and the bench share."""
    ap.add_argument("--batches", type=int_list, default=None,
                    help=f"comma list of latency batch sizes (default: {batches_text()}; --weights random: "
                         f"{batches_text('random')})")
    ap.add_argument("--calib-samples", type=positive_int, default=None,
                    help=f"calibration samples from the train split (default: {calib_text()}; --weights random: "
                         f"{calib_text('random')})")
    ap.add_argument("--eval-limit", type=positive_int, default=None,
                    help="cap on evaluation samples (default: all); rows scored on a subset are marked and never "
                         "replace full-evaluation rows")
    ap.add_argument("--threads", type=positive_int, default=2, help="CPU threads for inference")
    ap.add_argument("--min-time", type=positive_float, default=1.0,
                    help="timing budget per latency row in seconds: after --min-iters trials, further trials go to the "
                         "variant whose speedup interval is widest until the budget of the batch is spent")
    ap.add_argument("--min-iters", type=positive_int, default=20,
                    help="minimum timed trials per latency row (each trial times every variant and its baseline once)")


def add_selection_flags(ap: argparse.ArgumentParser, *, models_default: str | None = None) -> None:
    """--models / --methods / --devices: what a run selects (bench and routes; the plan module decides from them)."""
    ap.add_argument("--models", "--model", dest="models", default=models_default,
                    help="comma list of models (default: every model this toolchain has)")
    ap.add_argument("--devices", default=None,
                    help="comma list of cpu,cuda (default: every device the toolchain declares; rows on a device "
                         "missing here are skipped with the reason)")


def route_parser(toolchain: str, description: str) -> argparse.ArgumentParser:
    tc = TOOLCHAINS[toolchain]
    ap = ArgParser(prog=f"python -m {tc.module}", description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_flags(ap)
    ap.add_argument("--methods", default=None, help="comma list; per model: " + "; ".join(
        f"{m}: {','.join(tc.methods(m))}" for m in tc.models()) + (
        f"; the default leaves out the opt-in methods ({tc.opt_in_text()}), which run on that device only when named "
        "here" if tc.opt_in_text() else "") + (
        f"; the default times {','.join(tc.latency_twins)} (calibration-only twins of "
        f"{','.join(sorted(set(tc.latency_twins.values())))}) at the smallest batch only" if tc.latency_twins else ""))
    add_source_flags(ap)
    add_measure_flags(ap)
    ap.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where result rows (one JSON each) go")
    ap.add_argument("--plan", type=Path, default=None,
                    help="a run plan (JSON, written by the bench): run exactly this toolchain's items of it; the plan "
                         "carries every setting, so no other selection or measurement flag is taken with it")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


PLAN_EXCLUSIVE = ("models", "devices", "methods", "weights", "weights_path", "data", "batches", "calib_samples",
                  "eval_limit", "threads", "min_time", "min_iters", "runs_dir")


def check_plan_alone(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--plan carries every setting: another selection or measurement flag with it would decide a second time."""
    given = [k for k in PLAN_EXCLUSIVE if getattr(args, k) != ap.get_default(k)]
    if given:
        raise SuiteError(f"--plan carries the run's settings; drop {', '.join('--' + k.replace('_', '-') for k in given)}")


def plan_from_args(toolchain: str, args: argparse.Namespace) -> Plan:
    """A route started on its own: its flags become a plan through the same builder the bench uses."""
    settings = Settings(weights=args.weights, weights_path=args.weights_path, data=args.data,
                        eval_limit=args.eval_limit, threads=args.threads, min_time=args.min_time,
                        min_iters=args.min_iters)
    for m in parse_list("model", args.models, TOOLCHAINS[toolchain].models()):
        ModelSource(m, args.weights, args.weights_path, args.data)  # weights/data combination (one line, exit 2)
    plan = build_plan(models=args.models or TOOLCHAINS[toolchain].models(), toolchains=(toolchain,),
                      methods=args.methods, devices=args.devices, batches=args.batches,
                      calib_samples=args.calib_samples, settings=settings, runs_dir=args.runs_dir,
                      strict_devices=True)
    plan.run_id = run_id()
    return plan


def _one_repeat(plan: Plan) -> int | None:
    reps = {it.repeat for it in plan.items}
    if len(reps) > 1:
        raise SuiteError(f"a route process runs one pass of a repeated run; its plan holds passes {sorted(reps)}")
    return reps.pop() if reps else None


@dataclass(frozen=True)
class RouteConfig:
    """What a route process measures with: the plan's settings, per model its calibration size and batches."""

    toolchain: str
    weights: str = "embedded"
    weights_path: str | None = None
    data: str | None = None
    batches: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calib_samples: dict[str, int] = field(default_factory=dict)
    eval_limit: int | None = None
    threads: int = 2
    min_time: float = 1.0
    min_iters: int = 20
    runs_dir: Path = RUNS_DIR
    repeat: int | None = None  # --repeats: the pass these rows belong to (every item of a route process shares it)

    def __post_init__(self) -> None:
        Settings(weights=self.weights, eval_limit=self.eval_limit, threads=self.threads, min_time=self.min_time,
                 min_iters=self.min_iters)  # the same checks as the plan's
        for m, n in self.calib_samples.items():
            if n < 1:
                raise SuiteError(f"calibration size must be >= 1 (got {n})")

    @classmethod
    def from_plan(cls, toolchain: str, plan: Plan) -> "RouteConfig":
        s = plan.settings
        return cls(toolchain=toolchain, weights=s.weights, weights_path=s.weights_path, data=s.data,
                   batches=plan.batches(), calib_samples=plan.calib_samples(), eval_limit=s.eval_limit,
                   threads=s.threads, min_time=s.min_time, min_iters=s.min_iters, runs_dir=Path(plan.runs_dir),
                   repeat=_one_repeat(plan))

    def source(self, model: str) -> ModelSource:
        return ModelSource(model, self.weights, self.weights_path, self.data)


def run_id() -> str | None:
    """The bench run this process belongs to (set by evaluation.bench), for the rows' provenance."""
    return os.environ.get("SUITE_RUN_ID") or None


class RowWriter:
    """Builds and writes the rows of one (toolchain, model, device) with the identity fields filled."""

    def __init__(self, cfg: RouteConfig, model: str, manifest: dict | None, *, device: str = "cpu",
                 hashes: dict | None = None, gpu: str | None = None, **env_extra):
        self.cfg, self.model, self.device = cfg, model, device
        self.manifest = manifest or {}
        self.source = cfg.source(model)
        self.dataset = self.manifest.get("dataset") or model_decl(model).dataset(cfg.weights) or cfg.data or "?"
        self.env = environment_record(threads=cfg.threads, gpu=gpu, source=self.source.to_dict(), run_id=run_id(),
                                      eval_limit=cfg.eval_limit, **(hashes or {}), **env_extra)
        self.written: list[ResultRow] = []

    def row(self, method: str, precision: str, batch: int, **fields) -> ResultRow:
        base = dict(model=self.model, weights=self.cfg.weights, dataset=self.dataset, toolchain=self.cfg.toolchain,
                    method=method, precision=precision, device=self.device, batch=batch, metric=model_decl(self.model).metric,
                    ops_per_item=self.manifest.get("ops_per_item"), eval_limit=self.cfg.eval_limit,
                    environment=self.env, repeat=self.cfg.repeat)
        base.update(fields)
        return ResultRow(**base)

    def write(self, row: ResultRow) -> ResultRow:
        write_row(row, self.cfg.runs_dir)
        self.written.append(row)
        log.info("row %s: %s %s", row.key, row.status,
                 f"{row.metric}={row.value:.4g} p50={row.latency_p50_ms}" if row.status == "ok" and row.value is not None
                 else row.reason)
        return row

    def status_item(self, status: str, reason: str, item: Item) -> list[ResultRow]:
        """skipped/failed rows at every batch of one plan item (and its decode row)."""
        rows = self.status(status, reason, [item.variant], item.batches)
        if item.decode:
            rows.append(self.write(self.row(item.method, item.precision, 1, status=status, reason=reason,
                                            latency_kind="decode")))
        return rows

    def status(self, status: str, reason: str, variants, batches=None) -> list[ResultRow]:
        rows = status_rows(status=status, reason=reason, model=self.model, weights=self.cfg.weights,
                           dataset=self.dataset, toolchain=self.cfg.toolchain, variants=variants, device=self.device,
                           batches=batches or self.cfg.batches[self.model], metric=model_decl(self.model).metric,
                           eval_limit=self.cfg.eval_limit, environment=self.env, repeat=self.cfg.repeat)
        return [self.write(r) for r in rows]
