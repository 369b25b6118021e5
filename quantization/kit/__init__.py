"""The route kit: the one contract every toolchain route implements, and the one loop that measures it.

A route (a `Route` subclass, declared once in utils/registry.py) only *builds*: for each variant it
quantizes or loads the cached artifact and returns a `Built` — a predict function for scoring, a
timed callable per batch, size, calibration facts, compute precision, notes. The kit owns everything
that must be identical across toolchains: the variant loop, failure isolation with one failed-row
format, scoring through the model's task object (image classification / language model), timing
through the one harness (`utils.harness.measure`, with an optional clock plug-in such as CUDA
events), and the rows.

    python -m quantization.kit <toolchain> [route flags]     # what the bench runs
    python -m quantization.<route module> [route flags]      # the same, per route

Analysis tools (per-layer report, planted faults, sweeps) call `open_model` + `build_variant`
instead of faking command lines or importing a route's internals.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quantization.kit.config import RouteConfig, RowWriter, check_plan_alone, plan_from_args, route_parser, run_id
from quantization.kit.tasks import Task, data_hashes, file_size_mb, load_data, task_for  # noqa: F401 (public API)
from utils.errors import (FAILED_REASON_CHARS, RouteUnavailable, SuiteError, cli_main,  # noqa: F401
                          failure_reason, setup_logging)
from utils.plan import Item, Plan, write_item_record
from utils.registry import TOOLCHAINS, resolve
from utils.specs import RANDOM_REASON, ModelSource

log = logging.getLogger("quantization.kit")

class SkipVariant(Exception):
    """This variant cannot run here (hardware or library support missing): `skipped` rows with this reason."""


@dataclass(frozen=True)
class Calibration:
    samples: int | None  # samples fed (0: the method uses none)
    seconds: float | None
    method: str | None


@dataclass
class Built:
    """One variant, built and ready: what the kit scores, times and reports.

    predict:   batch (NumPy) -> logits (NumPy); used for scoring.
    timed:     latency input (NumPy) -> zero-argument callable timed by the harness; default calls predict.
               A runtime that must prepare per shape (select a profile, compile) does it here, untimed.
    timer:     optional clock plug-in `timer(fn) -> milliseconds of one call` (e.g. CUDA events); default host wall.
    sync:      optional synchronisation inside the host-wall timed region (e.g. torch.cuda.synchronize).
    batches:   which latency batches to time; None: the configured ones; () : accuracy only (one row, batch 1).
    generate:  language models with a KV cache: `generate(ids, state) -> (last-position logits (B, V), state)`,
               state None for the prompt; the kit runs greedy generation with it (`greedy`) for the decode rows.
    gpu_peak_mb: optional `() -> MB` device memory high-water since the variant was built (GPU rows).
    reduced_layers: the layers (torch module paths, quantization/kit/macs.py) whose multiply-accumulates the runtime
               ran in reduced precision, read from what it executed (ORT's executed kernels, OpenVINO's runtime model,
               the modules torch swapped, TensorRT's engine inspector), or macs.ALL_LAYERS; None: not reported. The
               kit turns it into the row's `coverage_pct` (share of the model's MACs) and compares it with the
               variant's quantization scope; `coverage_source` says where it was read. Routes whose runtime reports
               names of the FP32 ONNX's nodes (or names derived from them) set `reduced_nodes` instead.
    """

    predict: Callable[[np.ndarray], np.ndarray]
    size_mb: float | None = None
    compute_precision: str | None = None
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timed: Callable[[np.ndarray], Callable[[], object]] | None = None
    timer: Callable[[Callable[[], object]], float] | None = None
    sync: Callable[[], object] | None = None
    latency_kind: str = "host-wall"
    score_batch: int | None = None  # classification scoring batch (None: the task's default)
    score_pad: bool = False  # every scoring call sees exactly score_batch samples (one compiled shape)
    batches: tuple[int, ...] | None = None
    close: Callable[[], object] | None = None
    handle: Any = None  # the runtime object itself (torch module, ORT session), for analysis tools
    generate: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]] | None = None
    gpu_peak_mb: Callable[[], float | None] | None = None
    artifact: Path | None = None  # the file the variant runs, when it is one (ONNX, engine)
    reduced_layers: list[str] | str | None = None
    reduced_nodes: list[str] | None = None  # or: runtime names of the ONNX nodes that ran reduced (the kit maps them)
    coverage_source: str = ""


@dataclass
class ModelContext:
    """What a route sees of one model: configuration, typed options, task, manifest, data, its cache folder."""

    cfg: RouteConfig
    opts: Any
    model: str
    task: Task
    source: ModelSource
    manifest: dict
    data: Any
    hashes: dict
    state: dict = field(default_factory=dict)  # the route's per-model scratch (e.g. a preprocessed ONNX)

    @property
    def cache_dir(self) -> Path:
        """`<model cache>/<toolchain>/`: where this route keeps its artifacts."""
        return self.source.cache_dir / self.cfg.toolchain

    def scope_for(self, method: str):
        """(name, utils.registry.Scope) of the layers `method` quantizes: which ones stay in the higher precision."""
        from utils.registry import scope_of

        return scope_of(self.cfg.toolchain, self.model, method)

    @property
    def macs(self) -> dict:
        """The model's MAC table per layer (quantization/kit/macs.py), from the manifest or computed once."""
        if "_macs" not in self.state:
            from quantization.kit.macs import table_for

            self.state["_macs"] = table_for(self.manifest, self.source.cache_dir, self.task.kind)
        return self.state["_macs"]

    def artifacts_of(self, toolchain: str) -> Path:
        """Another toolchain's artifact folder for this model (only for toolchains this one `needs`)."""
        if toolchain not in TOOLCHAINS[self.cfg.toolchain].needs:
            raise SuiteError(f"{self.cfg.toolchain} does not declare that it needs {toolchain}'s artifacts")
        return self.source.cache_dir / toolchain


class Route:
    """Subclass per toolchain; set `toolchain` and implement `build` (everything else has a default)."""

    toolchain: str = ""
    description: str = ""
    Options: type | None = None  # a dataclass built from the parsed flags (validated in its __post_init__)

    def add_options(self, ap: argparse.ArgumentParser) -> None:
        """Route-specific flags (an argument group)."""

    def options(self, args: argparse.Namespace):
        if self.Options is None:
            return None
        import dataclasses

        names = {f.name for f in dataclasses.fields(self.Options)}
        return self.Options(**{k: v for k, v in vars(args).items() if k in names})

    def unavailable(self, opts) -> str | None:
        """Why nothing of this route can run here (a library that cannot be imported, no device), or None."""
        return None

    def device_unavailable(self, device: str, opts) -> str | None:
        """Why rows on `device` cannot run here (they become skipped), or None."""
        return None

    def environment(self, device: str, opts) -> dict:
        """Extra fields of the rows' environment record on `device` (e.g. gpu name, runtime version)."""
        return {}

    def open(self, ctx: ModelContext) -> None:
        """Per-model set-up before the variants (threads, a model loaded once)."""

    def timing_baseline(self, ctx: ModelContext, device: str) -> "tuple[str, Built] | None":
        """(name, Built) of an in-process FP32 reference to time the variants against, trial by trial, when their
        declared baseline is not among the selected variants of this run. Default: the toolchain's own baseline
        method, built here; None when the declared baseline belongs to another toolchain."""
        tc = TOOLCHAINS[self.toolchain]
        bl = tc.baseline
        if bl is None or bl[0] != self.toolchain or bl[1] not in tc.methods(ctx.model):
            return None
        return bl[1], self.build(ctx, bl[1], tc.precision(ctx.model, bl[1]), device)

    def build(self, ctx: ModelContext, method: str, precision: str, device: str) -> Built:
        raise NotImplementedError


def route_for(toolchain: str) -> Route:
    """The declared route object (imports the route module only now)."""
    if toolchain not in TOOLCHAINS:
        raise SuiteError(f"unknown toolchain {toolchain!r}; valid: {', '.join(TOOLCHAINS)}")
    return resolve(TOOLCHAINS[toolchain].route)


def parser_for(route: Route) -> argparse.ArgumentParser:
    ap = route_parser(route.toolchain, route.description)
    route.add_options(ap)
    return ap


def open_model(route: Route, cfg: RouteConfig, model: str, opts=None) -> ModelContext:
    """Manifest (verified), shared data and task of one model, and the route's per-model set-up."""
    task = task_for(model)
    source = cfg.source(model)
    manifest = source.load_manifest()
    data = task.load_data(source, manifest, cfg.calib_samples[model], cfg.eval_limit)
    ctx = ModelContext(cfg=cfg, opts=opts, model=model, task=task, source=source, manifest=manifest, data=data,
                       hashes=task.hashes(data))
    route.open(ctx)
    return ctx


def build_variant(toolchain: str, model: str, method: str, *, device: str | None = None, argv: list[str] | None = None,
                  **config) -> tuple[ModelContext, Built]:
    """The public build API for analysis tools: one variant of one toolchain, built exactly as the bench builds it.

    `argv` are route flags (e.g. ["--calib-samples", "128"]); keyword `config` overrides RouteConfig fields.
    """
    import dataclasses

    route = route_for(toolchain)
    args = parser_for(route).parse_args(["--models", model, "--methods", method, *(argv or [])])
    plan = plan_from_args(toolchain, args)
    items = [it for it in plan.items if device is None or it.device == device]
    if not items:
        raise SuiteError(f"{toolchain} has no {method} variant of {model} on {device}")
    cfg = dataclasses.replace(RouteConfig.from_plan(toolchain, plan), **config)
    opts = route.options(args)
    why = route.unavailable(opts)
    if why:
        raise RouteUnavailable(why)
    ctx = open_model(route, cfg, model, opts)
    return ctx, route.build(ctx, method, items[0].precision, items[0].device)

def score_built(ctx: ModelContext, built: Built, progress: bool = False):
    """The variant's accuracy on the shared evaluation samples, through the model's task (as the bench scores it)."""
    return ctx.task.score(built.predict, ctx.data, batch=built.score_batch, pad=built.score_pad, progress=progress)


# ------------------------------------------------------------------------------ scoring and timing

OUTPUTS = "outputs"  # <runs_dir>/outputs/<key>.npz: each variant's outputs on the evaluation samples


def outputs_key(cfg: RouteConfig, model: str, toolchain: str, method: str, device: str) -> str:
    parts = [model, cfg.weights, toolchain, method, device] + ([f"lim{cfg.eval_limit}"] if cfg.eval_limit else [])
    return "__".join(parts)


def _find_outputs(cfg: RouteConfig, model: str, ref: tuple[str, str] | None, device: str, eval_sha: str | None):
    """Load the outputs a baseline run kept for these evaluation samples (same device first, else any)."""
    if ref is None:
        return None, None
    from utils.fidelity import load_outputs

    folder = Path(cfg.runs_dir) / OUTPUTS
    names = [outputs_key(cfg, model, *ref, device)] + [outputs_key(cfg, model, *ref, d) for d in ("cpu", "cuda")]
    for name in dict.fromkeys(names):
        p = folder / f"{name}.npz"
        if p.is_file():
            try:
                out = load_outputs(p)
            except (OSError, ValueError, KeyError):
                continue
            if getattr(out, "meta", {}).get("eval_sha") == eval_sha:
                return out, "/".join(ref)
    return None, None


def _rss_mb() -> tuple[float | None, float | None]:
    """(current resident MB, high-water MB) of this process (Linux /proc), else (None, None)."""
    cur = hwm = None
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None, None
    return cur, hwm


def _reset_peak() -> bool:
    """Reset the resident high-water mark (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
@dataclass
class _Variant:
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

def _is_fp32(tc, method: str) -> bool:
    return any(m == method and p == "fp32" for vs in tc.variants.values() for m, p in vs)


def _score_variant(ctx: ModelContext, built: Built, method: str, device: str) -> tuple[dict, dict]:
    """Score once, keep the outputs, compare them with the baseline's and (FP32 rows) the reference runtime's."""
    from utils.fidelity import compare, save_outputs
    from utils.registry import REFERENCE

    cfg, task, tc = ctx.cfg, ctx.task, TOOLCHAINS[ctx.cfg.toolchain]
    eval_sha = ctx.hashes.get("eval_sha")
    bl = tc.baseline_for(method)
    is_baseline = bl is None or bl == (cfg.toolchain, method)
    reference, ref_name = (None, None) if is_baseline else _find_outputs(cfg, ctx.model, bl, device, eval_sha)
    t0 = time.perf_counter()
    score, outputs, fid = task.score_outputs(built.predict, ctx.data, batch=built.score_batch, pad=built.score_pad,
                                             progress=True, reference=reference)
    eval_s = time.perf_counter() - t0
    save_outputs(Path(cfg.runs_dir) / OUTPUTS / f"{outputs_key(cfg, ctx.model, cfg.toolchain, method, device)}.npz",
                 outputs, meta={"eval_sha": eval_sha, "toolchain": cfg.toolchain, "method": method, "device": device})
    fields = {**task.score_fields(score), **task.fidelity_fields(fid), "fidelity_vs": ref_name}
    extra = {**score.extra(), "eval_seconds": round(eval_s, 3)}
    if ctx.source.weights == "random":  # accuracy of random weights means nothing; agreement/SQNR/KL still do
        # flips stay: counted against the same labels as ever, they are few (the random baseline is almost never
        # right), which is what they should say; the accuracy cells are left empty
        fields.update(value=None, top5=None)
        extra = {"eval_seconds": extra["eval_seconds"], "accuracy": RANDOM_REASON,
                 "fidelity_samples": ctx.hashes.get("n_eval") or ctx.hashes.get("n_eval_tokens")}
    if fid and fid.get("ppl_bootstrap"):
        extra["fidelity_ppl_bootstrap"] = {k: fid["ppl_bootstrap"].get(k) for k in
                                           ("ratio", "ratio_ci_low", "ratio_ci_high", "significant", "block_len")}
    if fid and fid.get("kl_exact") is False:
        extra["kl_note"] = "KL over the baseline's top-k tokens plus one tail bucket (a lower bound)"
    if _is_fp32(tc, method) and (cfg.toolchain, method) != REFERENCE:
        ref_out, xname = _find_outputs(cfg, ctx.model, REFERENCE, "cpu", eval_sha)
        if ref_out is not None:
            x = compare(ref_out, outputs)
            fields.update(xrt_vs=xname, xrt_agreement=x.get("agreement"), xrt_sqnr_db=x.get("sqnr_db"))
            if task.kind == "language-model":
                extra["xrt_ppl_ratio"] = x.get("ppl_ratio")
    return fields, extra


def _unit(built: Built, li) -> "Timed":
    from utils.harness import Timed

    fn = built.timed(li.x) if built.timed is not None else (lambda x=li.x: built.predict(x))
    return Timed(fn, li.items, built.latency_kind, built.sync, built.timer)


# how every paired speedup interval is computed (stored in the rows, so each one can be recomputed from its row)
SPEEDUP_CI = {"paired": True, "n_boot": 2000, "seed": 0, "conf": 0.95}


def _paired_record(trials, base: str, method: str) -> dict:
    """The baseline's side of a paired comparison as a row keeps it: its name, samples and trial indices, and how
    the interval was computed (utils.stats.speedup_ci over the trials both timed)."""
    return {"name": base, "samples_ms": list(trials.latency[base].samples_ms), "trials": list(trials.trial_of[base]),
            "speedup_ci": SPEEDUP_CI}


def _time_group(ctx: ModelContext, variants: list, bases: dict, pair_of: dict, batch: int) -> dict:
    """Interleaved trials of the variants and their in-process FP32 baselines at one batch: every unit is timed
    once per trial, so each variant is paired trial by trial with its own baseline (pair_of[method])."""
    from utils.harness import interleaved
    from utils.stats import speedup_ci, widest_interval

    cfg = ctx.cfg
    li = ctx.task.latency_input(batch, ctx.manifest, ctx.data)
    units = {v.method: _unit(v.built, li) for v in variants}
    for name, built in bases.items():
        if name not in units:
            units[name] = _unit(built, li)
    pairs = {m: b for m, b in pair_of.items() if m in units and b in units and m != b}
    main_base = next(iter(bases), None)

    memo = {"n": 0, "pick": None}

    def widest(tr):  # re-ranked every 8 extra trials (a bootstrap per row costs more than a fast call)
        if memo["n"] % 8 == 0:
            rows = {m: tr.paired(b, m) for m, b in pairs.items() if m in tr.latency and b in tr.latency}
            memo["pick"] = widest_interval(rows, paired=True, n_boot=400)[0] if rows else None
        memo["n"] += 1
        pick = memo["pick"]
        return [pairs[pick], pick] if pick else None

    trials = interleaved(units, baseline=main_base, min_trials=cfg.min_iters, budget_s=cfg.min_time * len(units),
                         widest=widest if pairs and main_base else None)
    out = {"overhead_ms": trials.overhead_ms, "shape": list(li.shape), "unit": li.unit, "latency": trials.latency,
           "speedup": {}, "trials": trials}
    for m in units:
        if m in pairs:  # a variant (possibly itself the baseline of another, e.g. inductor for pt2e)
            b = pairs[m]
            xb, xo = trials.paired(b, m)
            if len(xb) >= 3 and units[m].kind == units[b].kind:
                out["speedup"][m] = (*(float(x) for x in speedup_ci(xb, xo, **SPEEDUP_CI)), b)
        elif m in bases:  # the toolchain's own FP32 baseline
            out["speedup"][m] = (1.0, 1.0, 1.0, m)
    return out



# ------------------------------------------------------------------------------ the one loop, over a plan's items

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
            "seconds": _rounded(seconds or {})})
        self.written[item.ident] = status


def _rounded(x):
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def _fits(plan: Plan, seconds: float | None) -> bool:
    """Whether work estimated at `seconds` ends before the plan's deadline (always, without one)."""
    return plan.deadline is None or time.time() + float(seconds or 0.0) <= plan.deadline


def _budget_reason(plan: Plan, seconds: float | None, what: str) -> str:
    left = max(0.0, (plan.deadline or 0.0) - time.time())
    return f"budget: {what} needs ~{float(seconds or 0):.0f} s, {left:.0f} s of the run's budget left"


def run_model(route: Route, cfg: RouteConfig, opts, model: str, items: list[Item], plan: Plan,
              records: ItemRecords) -> list:
    """The plan's items of one model: each built and scored, its rows written at once (latency pending), then timed
    in interleaved trials with the in-process FP32 baseline, batch by batch, each row rewritten with its latency as
    soon as its batch is timed. Failures are isolated per item, in one format; each item ends with its record."""
    from tqdm import tqdm

    t_open = time.time()
    ctx = open_model(route, cfg, model, opts)  # SuiteError (bad input, stale artifact): one line, exit 2
    open_s = time.time() - t_open
    devices = list(dict.fromkeys(it.device for it in items))
    writers = {d: RowWriter(cfg, model, ctx.manifest, device=d, hashes=ctx.hashes, **route.environment(d, opts))
               for d in devices}
    rows, live = [], []
    for d in devices:
        why = route.device_unavailable(d, opts)
        if why:
            for it in (i for i in items if i.device == d):
                written = writers[d].status_item("skipped", why, it)
                records.write(it, "skipped", why, written, {"open": open_s, "total": 0.0})
                rows += written
        else:
            live.append(d)
    rss_open, _ = _rss_mb()
    for d in live:
        done: list[_Variant] = []
        w = writers[d]
        try:
            for it in tqdm([i for i in items if i.device == d], desc=f"{cfg.toolchain}/{model}/{d}", unit="variant"):
                if it.skip:  # the declaration says it has no path on this device: no build
                    written = w.status_item("skipped", it.skip, it)
                    records.write(it, "skipped", it.skip, written, {"open": open_s, "total": 0.0})
                    rows += written
                    continue
                need = (it.est_build_s or 0.0) + (it.est_time_s or 0.0)
                if not _fits(plan, need):
                    why = _budget_reason(plan, need, "this item")
                    log.info("%s: left out (%s)", it.ident, why)
                    records.write(it, "left-out", why, (), {"open": open_s})
                    continue
                v = _build_and_score(route, ctx, w, it, d, rss_open, open_s, records)
                if v is not None:
                    done.append(v)
                    rows += list(v.rows.values())
            rows += _time_and_write(route, ctx, w, d, done, plan, records)
        finally:
            for v in done:
                _close(v.built)
    return rows


def _build_and_score(route: Route, ctx: ModelContext, w: RowWriter, it: Item, d: str, rss_open, open_s: float,
                     records: ItemRecords) -> "_Variant | None":
    """Build and score one item and write its rows at once: pending their timing (or final: accuracy only). A skip
    or failure writes that item's rows and record and returns None."""
    rss_before, _ = _rss_mb()
    measured = _reset_peak()
    built = None
    t0 = time.time()
    reused = _reused_scores(ctx, it, records.plan) if it.scores_from else None
    try:
        built = route.build(ctx, it.method, it.precision, d)
        build_s = time.time() - t0
        if ctx.source.weights == "random":
            built.notes.insert(0, RANDOM_REASON)
        built.notes.extend(n for n in it.notes if n not in built.notes)
        t1 = time.time()
        fields, extra = reused if reused is not None else _score_variant(ctx, built, it.method, d)
        extra["plan_item"] = {"ident": it.ident, "config_key": records.plan.config_key(it),
                              "score_key": records.plan.score_key(it)}
        fields.update(_coverage(ctx, built, it, extra))
        score_s = time.time() - t1
        _, hwm = _rss_mb()
        if reused is not None:
            pass  # the earlier run's memory high-water (it built and scored) stays
        elif measured and hwm and rss_before is not None and rss_open is not None:
            # the high-water of building and scoring this variant, less what the variants built before it still
            # hold in this process (they stay alive to be timed together)
            fields["peak_mem_mb"] = round(hwm - max(0.0, rss_before - rss_open), 1)
            extra["rss_high_water_mb"] = round(hwm, 1)
        if built.gpu_peak_mb is not None:  # device memory high-water of building and scoring it
            gpu = built.gpu_peak_mb()
            fields["gpu_peak_mem_mb"] = round(gpu, 1) if gpu is not None else None
    except SkipVariant as exc:
        _close(built)
        records.write(it, "skipped", str(exc), w.status_item("skipped", str(exc), it),
                      {"open": open_s, "total": time.time() - t0})
        return None
    except (KeyboardInterrupt, MemoryError):
        _close(built)
        raise
    except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
        _close(built)
        log.warning("%s %s on %s failed: %s", ctx.model, it.method, d, failure_reason(exc), exc_info=cfg_verbose())
        records.write(it, "failed", failure_reason(exc), w.status_item("failed", failure_reason(exc), it),
                      {"open": open_s, "total": time.time() - t0})
        return None
    v = _Variant(it, built, fields, {**extra, **built.extra},
                 {"open": open_s, "build": build_s, "score": score_s, "timing": {}})
    if not _timed_batches(v):  # accuracy only: its rows are final now (written with the others in _time_and_write)
        return v
    for b in _timed_batches(v):  # scored: written now, its latency columns when its batch is timed
        r = w.write(w.row(it.method, it.precision, b, **_common(v), pending="timing",
                          extra={**v.extra, "pending": "scored; latency not timed yet"}))
        v.rows[r.key] = r
    return v


def coverage_of(ctx: ModelContext, built: Built, method: str) -> dict | None:
    """The built variant's coverage (quantization/kit/macs.py `coverage`: share of the model's MACs its runtime ran in
    reduced precision, and the layers that differ from the variant's quantization scope) with the scope's name and
    where it was read; None when the route reports no layers. Raises when the model's MAC table cannot be made."""
    if built.reduced_layers is None and built.reduced_nodes is None:
        return None
    from quantization.kit.macs import ALL_LAYERS, coverage, layers_of

    table = ctx.macs
    name, scope = ctx.scope_for(method)
    reduced = built.reduced_layers
    if reduced != ALL_LAYERS:
        reduced = list(reduced or []) + (layers_of(table, built.reduced_nodes) if built.reduced_nodes else [])
    return {**coverage(table, reduced, scope.keeps), "scope": name, "scope_keeps": list(scope.keep),
            "source": built.coverage_source or "the route's runtime"}


def _coverage(ctx: ModelContext, built: Built, it: Item, extra: dict) -> dict:
    """The row's coverage (share of the model's MACs the runtime ran in reduced precision) from the layers the route
    reports, compared with the variant's quantization scope; the comparison goes to the notes and `extra`. FP32 rows
    have none; a quantized row whose route reports nothing says so."""
    if it.precision == "fp32":
        return {}
    from quantization.kit.macs import coverage_note

    try:
        cov = coverage_of(ctx, built, it.method)
    except Exception as exc:  # noqa: BLE001 - no MAC table (an unusual graph): the row stands without its coverage
        log.warning("no MAC table for %s: %s", ctx.model, failure_reason(exc))
        built.notes.append(f"coverage not computed: no MAC table ({failure_reason(exc, 160)})")
        return {}
    if cov is None:
        built.notes.append("coverage not reported: this route does not read which layers its runtime ran in reduced "
                           "precision")
        return {}
    built.notes.append(coverage_note(cov, cov["scope"], cov["source"]))
    extra["coverage"] = cov
    return {"coverage_pct": cov["coverage_pct"]}


SCORE_FIELDS = ("value", "top5", "agreement", "flips_lost", "flips_gained", "sqnr_db", "kl", "fidelity_vs", "xrt_vs",
                "xrt_agreement", "xrt_sqnr_db", "peak_mem_mb", "gpu_peak_mem_mb")


def _reused_scores(ctx: ModelContext, it: Item, plan: Plan) -> tuple[dict, dict] | None:
    """The scoring and fidelity fields of the row `it.scores_from` (scoring is deterministic): --resume of an item
    scored by an earlier run of the same configuration that stopped before timing it, or a later pass of a repeated
    run; None (score again) when that row is missing or was scored with other settings."""
    from utils.rows import read_row

    r = read_row(Path(ctx.cfg.runs_dir) / f"{it.scores_from}.json")
    if r is None or r.status != "ok" or (r.extra.get("plan_item") or {}).get("score_key") != plan.score_key(it):
        return None
    drop = ("latency", "latency_shape", "harness_overhead_ms", "pending", "plan_item")
    extra = {k: v for k, v in r.extra.items() if k not in drop}
    extra["scores_from_run"] = (r.environment or {}).get("run_id")
    extra["scores_from_row"] = it.scores_from
    log.info("%s: scores reused from run %s (row %s); building and timing only", it.ident, extra["scores_from_run"],
             it.scores_from)
    return {k: getattr(r, k) for k in SCORE_FIELDS}, extra


def _timed_batches(v: _Variant) -> list[int]:
    """The item's batches this built variant is timed at (none: an accuracy-only runtime)."""
    if v.built.batches is not None and not v.built.batches:
        return []
    return [b for b in v.item.batches if v.built.batches is None or b in v.built.batches]


def _time_and_write(route: Route, ctx: ModelContext, writer: RowWriter, device: str, done: list, plan: Plan,
                    records: ItemRecords) -> list:
    """Time every scored item, batch by batch, in interleaved trials with the baseline; rewrite each row with its
    latency as soon as its batch is timed; then the generation rows; then each item's record."""
    tc = TOOLCHAINS[ctx.cfg.toolchain]
    rows = []
    timed = [v for v in done if _timed_batches(v)]
    for v in done:
        if v in timed:
            continue
        # accuracy only (e.g. a fake-quant emulation that is not a deployment runtime)
        if v.fields.get("value") is None:  # random weights: nothing this variant measures is meaningful
            why = (f"{RANDOM_REASON}, and this variant is not timed here "
                   f"({'; '.join(v.built.notes[1:2]) or 'accuracy-only runtime'})")
            out = writer.status("skipped", why, [v.item.variant], [1])
            records.write(v.item, "skipped", why, out, v.seconds)
        else:
            out = [writer.write(writer.row(v.method, v.precision, 1, **_common(v), extra=v.extra))]
            records.write(v.item, "ok", "", out, v.seconds)
        rows += out
    if not timed:
        return rows
    bases, pair_of, only_for_timing = _timing_baselines(route, ctx, device, timed)
    failed: dict[str, str] = {}
    recorded: set[str] = set()  # methods whose item record is written already
    try:
        for b in sorted({b for v in timed for b in _timed_batches(v)}):
            group = [v for v in timed if v.method not in failed and b in _timed_batches(v)]
            if not group:
                continue
            need = sum((v.item.est_time_s or 0.0) / (len(v.item.batches) + v.item.decode) for v in group)
            if not _fits(plan, need):
                log.info("%s at batch %d not timed (%s)", ctx.model, b, _budget_reason(plan, need, "timing"))
                for v in group:
                    v.untimed.append(b)
                continue
            t0 = time.time()
            try:
                res = _time_group(ctx, group, bases, pair_of, b)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - find the variant whose timing fails and fail it alone
                res = None
                log.warning("timing %s at batch %d failed (%s); timing each variant alone", ctx.model, b,
                            failure_reason(exc))
            for v in group:
                one = res
                if one is None:
                    try:
                        one = _time_group(ctx, [v], {k: x for k, x in bases.items() if k == pair_of.get(v.method)},
                                          pair_of, b)
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as exc:  # noqa: BLE001
                        failed[v.method] = failure_reason(exc)
                        for r in writer.status("failed", failed[v.method], [v.item.variant], _timed_batches(v)):
                            rows.append(r)
                            v.rows[r.key] = r
                        continue
                r = writer.write(writer.row(v.method, v.precision, b, **_latency_fields(v, one, tc, ctx.cfg, ctx)))
                rows.append(r)
                v.rows[r.key] = r
            for v in group:
                v.seconds["timing"][str(b)] = (time.time() - t0) / len(group)
                if b == max(_timed_batches(v)) and not v.item.decode and v.method not in failed and not v.untimed:
                    # finished (e.g. a calibration twin timed at the smallest batch only): its record now, so a route
                    # stopped while timing a larger batch does not count it unfinished
                    records.write(v.item, "ok", "", v.rows.values(), v.seconds)
                    recorded.add(v.method)
        gen = [v for v in timed if v.item.decode and v.method not in failed]
        if gen:
            need = sum((v.item.est_time_s or 0.0) / (len(v.item.batches) + 1) for v in gen)
            if not _fits(plan, need):
                log.info("%s: no decode rows (%s)", ctx.model, _budget_reason(plan, need, "generation"))
                for v in gen:
                    v.untimed.append("decode")
            else:
                rows += _time_generation(route, ctx, writer, device, gen, bases, pair_of)
    finally:
        for name in only_for_timing:
            _close(bases.get(name))
    for v in timed:
        if v.method in recorded:
            continue
        if v.method in failed:
            records.write(v.item, "failed", f"timing: {failed[v.method]}", v.rows.values(), v.seconds)
        elif v.untimed:
            records.write(v.item, "partial", _budget_reason(plan, v.item.est_time_s, "timing") + " (not timed at "
                          + ", ".join(str(x) for x in v.untimed) + ")", v.rows.values(), v.seconds)
        else:
            records.write(v.item, "ok", "", v.rows.values(), v.seconds)
    return rows


def _traffic(ctx: ModelContext, v: _Variant, batch: int, kind: str, shape=None, prompt_tokens=None,
             new_tokens=None) -> dict | None:
    """The row's estimated bytes per timed call (utils.traffic: weights at their stored size, activations, KV cache)
    from the manifest's shapes: the memory side of the aggregation's roofline."""
    from utils import traffic

    return traffic.estimate(traffic.shapes_from_manifest(ctx.model, ctx.manifest), size_mb=v.built.size_mb,
                            batch=batch, latency_kind=kind, latency_shape=shape, prompt_tokens=prompt_tokens,
                            new_tokens=new_tokens, compute_precision=v.built.compute_precision)


def _latency_fields(v: _Variant, one: dict, tc, cfg: RouteConfig, ctx: ModelContext | None = None) -> dict:
    """A timed row's fields: the variant's scoring fields, its latency and its paired speedup."""
    lat = one["latency"][v.method]
    spd = one["speedup"].get(v.method)
    fields = dict(_common(v), **lat.row_fields(), throughput_unit=one["unit"], latency_samples=len(lat.samples_ms))
    if spd is not None:
        own = spd[3] in tc.methods(v.item.model)
        fields.update(speedup_paired=spd[0], speedup_ci_low=spd[1], speedup_ci_high=spd[2],
                      speedup_vs=f"{cfg.toolchain}/{spd[3]}" + ("" if own else " (in-process FP32)"))
    tr = one["trials"]
    latency = lat.summary(tr.trial_of[v.method])
    if spd is not None and spd[3] != v.method:
        latency["baseline"] = _paired_record(tr, spd[3], v.method)
    fields["extra"] = {**v.extra, "latency": latency, "latency_shape": one["shape"],
                       "harness_overhead_ms": round(one["overhead_ms"], 6)}
    if ctx is not None:
        fields["extra"]["traffic"] = _traffic(ctx, v, int(one["shape"][0]), lat.kind, one["shape"])
    return fields


def _close(built: Built | None) -> None:
    if built is not None and built.close is not None:
        try:
            built.close()
        except Exception:  # noqa: BLE001 - releasing must not hide the real result
            log.debug("close failed", exc_info=True)


def _common(v: _Variant) -> dict:
    cal = v.built.calibration
    return dict(size_mb=v.built.size_mb, compute_precision=v.built.compute_precision, notes="; ".join(v.built.notes),
                calib_samples=cal.samples if cal else None, calib_seconds=cal.seconds if cal else None,
                calib_method=cal.method if cal else None, **v.fields)


def _timing_baselines(route: Route, ctx: ModelContext, device: str, timed: list) -> tuple[dict, dict, list]:
    """(bases name -> Built, pair_of method -> base name, names built here only for timing): each timed variant is
    paired with its own FP32 baseline in this process: the toolchain's baseline method (or the method-specific one,
    e.g. pt2e -> inductor), or the route's in-process FP32 reference when the declared baseline is another
    toolchain's row (e.g. the FP32 ONNX for ModelOpt's Q/DQ models)."""
    tc = TOOLCHAINS[ctx.cfg.toolchain]
    live = {v.method: v.built for v in timed}
    bases, pair_of, extra = {}, {}, []
    fallback = None
    for v in timed:
        bl = tc.baseline_for(v.method)
        if bl is None or bl == (ctx.cfg.toolchain, v.method):
            bases.setdefault(v.method, v.built)
            continue
        if bl[0] == ctx.cfg.toolchain and bl[1] in live:
            bases.setdefault(bl[1], live[bl[1]])
            pair_of[v.method] = bl[1]
            continue
        if fallback is None:
            try:
                fallback = route.timing_baseline(ctx, device) or False
            except Exception as exc:  # noqa: BLE001 - no paired speedup then; the rows still get their latency
                log.warning("no in-process timing baseline for %s on %s: %s", ctx.model, device, failure_reason(exc))
                fallback = False
            if fallback:
                extra.append(fallback[0])
        if fallback:
            bases.setdefault(fallback[0], fallback[1])
            pair_of[v.method] = fallback[0]
    return bases, pair_of, extra



# ------------------------------------------------------------------------------ generation (language models)

GEN_BATCHES = (1,)  # generation rows: batch 1, what LM latency is quoted at
WARMUP_GEN = 1  # warm-up generations per unit after the first (each is already new_tokens cached steps)


def greedy(generate, prompt: np.ndarray, new_tokens: int, clock=time.perf_counter) -> tuple[np.ndarray, float, list]:
    """Greedy generation with a KV cache through `generate(ids, state)`: (new ids (B, new_tokens), ms to the first
    token (the prompt's prefill and its argmax), ms of each later token (one cached step and its argmax))."""
    b = prompt.shape[0]
    t0 = clock()
    logits, state = generate(prompt, None)
    tok = np.asarray(logits).reshape(b, -1).argmax(-1).astype(np.int64)
    ttft = (clock() - t0) * 1000.0
    out, per = [tok], []
    for _ in range(new_tokens - 1):
        t = clock()
        logits, state = generate(tok[:, None], state)
        tok = np.asarray(logits).reshape(b, -1).argmax(-1).astype(np.int64)
        per.append((clock() - t) * 1000.0)
        out.append(tok)
    return np.stack(out, 1), ttft, per


class _GenUnit:
    """One variant's generation as a harness unit: each call generates the whole continuation; the sample is the mean
    time per token after the first (TTFT and the tokens are kept aside)."""

    def __init__(self, generate, prompt: np.ndarray, new_tokens: int):
        self.generate, self.prompt, self.new_tokens = generate, prompt, new_tokens
        self.ttft: list[float] = []
        self.tokens: np.ndarray | None = None

    def timer(self, _fn) -> float:
        toks, ttft, per = greedy(self.generate, self.prompt, self.new_tokens)
        if self.tokens is None:
            self.tokens = toks
        self.ttft.append(ttft)
        return float(np.mean(per)) if per else ttft


def token_match(a: np.ndarray | None, b: np.ndarray | None) -> tuple[float | None, int | None]:
    """(% of positions where two greedy continuations agree, first position where they differ or None)."""
    if a is None or b is None or a.shape != b.shape:
        return None, None
    eq = a == b
    first = int(np.argmin(eq.all(0))) if not eq.all() else None
    return round(float(eq.mean() * 100), 2), first


def _time_generation(route: Route, ctx: ModelContext, writer: RowWriter, device: str, gen: list, bases: dict,
                     pair_of: dict) -> list:
    """Decode rows: greedy generation with a KV cache, interleaved with the FP32 baseline's generation, per batch."""
    from utils.harness import Timed, interleaved
    from utils.stats import speedup_ci

    cfg, tc = ctx.cfg, TOOLCHAINS[ctx.cfg.toolchain]
    rows = []
    for v in gen:
        if v.built.generate is None:  # declared to generate (registry `generates`), yet this model has no decoder
            log.warning("%s/%s: no decode row (its build has no generate(): e.g. a model prepared without a KV-cache "
                        "decoder)", cfg.toolchain, v.method)
    gen = [v for v in gen if v.built.generate is not None]
    if not gen or not hasattr(ctx.task, "generation_input"):
        return rows
    for b in GEN_BATCHES:
        t0 = time.time()
        prompt, new = ctx.task.generation_input(b, ctx.manifest, ctx.data)
        units: dict[str, _GenUnit] = {v.method: _GenUnit(v.built.generate, prompt, new) for v in gen}
        for name, built in bases.items():
            if name not in units and built.generate is not None:
                units[name] = _GenUnit(built.generate, prompt, new)
        timed = {n: Timed(lambda: None, b, "decode", None, u.timer) for n, u in units.items()}
        try:
            trials = interleaved(timed, min_trials=cfg.min_iters, budget_s=0.0, warmup=WARMUP_GEN)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - generation failing must not lose the full-sequence rows
            log.warning("generation timing of %s failed: %s", ctx.model, failure_reason(exc))
            for v in gen:
                r = writer.write(writer.row(v.method, v.precision, b, status="failed", latency_kind="decode",
                                            reason=f"generation: {failure_reason(exc)}"))
                rows.append(r)
                v.rows[r.key] = r
            continue
        for v in gen:
            u, lat = units[v.method], trials.latency[v.method]
            base = pair_of.get(v.method)
            fields = dict(_common(v), **lat.row_fields(), throughput_unit="tokens/s (decode)",
                          latency_samples=len(lat.samples_ms), ttft_ms=float(np.median(u.ttft[1 + WARMUP_GEN:] or u.ttft)))
            fields["first_call_ms"] = None  # a generation's first call is not one token
            for k in ("value", "top5", "agreement", "flips_lost", "flips_gained", "sqnr_db", "kl", "fidelity_vs",
                      "xrt_vs", "xrt_agreement", "xrt_sqnr_db"):
                fields.pop(k, None)  # accuracy and fidelity live in the variant's full-sequence row
            gen_extra = {"prompt_tokens": int(prompt.shape[1]), "new_tokens": int(new), "greedy": True,
                         "ttft_ms_samples": [round(x, 3) for x in u.ttft]}
            if base in units and base != v.method:
                match, first = token_match(units[base].tokens, u.tokens)
                fields.update(token_match=match)
                gen_extra.update(token_match_vs=f"{cfg.toolchain}/{base}", first_divergence=first)
                xb, xo = trials.paired(base, v.method)
                if len(xb) >= 3:
                    spd = speedup_ci(xb, xo, **SPEEDUP_CI)
                    own = base in tc.methods(ctx.model)
                    fields.update(speedup_paired=float(spd[0]), speedup_ci_low=float(spd[1]),
                                  speedup_ci_high=float(spd[2]),
                                  speedup_vs=f"{cfg.toolchain}/{base}" + ("" if own else " (in-process FP32)"))
            elif base is None or base == v.method:
                fields.update(speedup_paired=1.0, speedup_ci_low=1.0, speedup_ci_high=1.0,
                              speedup_vs=f"{cfg.toolchain}/{v.method}")
            latency = lat.summary(trials.trial_of[v.method])
            if base in units and base != v.method:
                latency["baseline"] = _paired_record(trials, base, v.method)
            extra = {**v.extra, "latency": latency, "generation": gen_extra,
                     "harness_overhead_ms": round(trials.overhead_ms, 6),
                     "traffic": _traffic(ctx, v, b, "decode", prompt_tokens=int(prompt.shape[1]), new_tokens=int(new))}
            r = writer.write(writer.row(v.method, v.precision, b, **fields, extra=extra))
            rows.append(r)
            v.rows[r.key] = r
            v.seconds["decode"] = (time.time() - t0) / len(gen)
    return rows


CALIB_BATCH = {"image-classification": 16, "language-model": 8}  # calibration feed batch size per task


def calibration_batches(ctx: ModelContext, batch_size: int | None = None) -> list[np.ndarray]:
    """The configured calibration samples, in order, cut into batches (every sample exactly once)."""
    arr = ctx.task.calib_array(ctx.data)
    bs = batch_size or CALIB_BATCH[ctx.task.kind]
    return [arr[i:i + bs] for i in range(0, arr.shape[0], bs)]


def cfg_verbose() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def run(route: Route, argv: list[str] | None = None) -> int:
    """A route process: `--plan FILE` (what the bench passes) runs exactly this toolchain's items of that plan; the
    flags of a route started on its own become a plan through the same builder. A route that cannot run here
    writes skipped rows for every item."""
    import os

    ap = parser_for(route)
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    if args.plan is not None:
        check_plan_alone(ap, args)
        plan = Plan.load(args.plan)
        own = plan.route_args.get(route.toolchain)
        opts = route.options(ap.parse_args(own) if own else args)
    else:
        plan = plan_from_args(route.toolchain, args)
        opts = route.options(args)
    if plan.run_id and not os.environ.get("SUITE_RUN_ID"):
        os.environ["SUITE_RUN_ID"] = plan.run_id  # the rows' provenance
    return execute(route, plan, plan.items_of(route.toolchain), opts)


def execute(route: Route, plan: Plan, items: list[Item], opts) -> int:
    """Run `items` (this route's part of `plan`), model by model; every item ends with rows and a record."""
    cfg = RouteConfig.from_plan(route.toolchain, plan.subset(items))
    records = ItemRecords(plan, cfg.runs_dir)
    why = route.unavailable(opts)
    for model in dict.fromkeys(it.model for it in items):
        mine = [it for it in items if it.model == model]
        if why:
            try:
                manifest = cfg.source(model).load_manifest(verify=False)
            except SuiteError:
                manifest = None
            for d in dict.fromkeys(it.device for it in mine):
                w = RowWriter(cfg, model, manifest, device=d, **route.environment(d, opts))
                for it in (i for i in mine if i.device == d):
                    records.write(it, "skipped", why, w.status_item("skipped", why, it), {"total": 0.0})
            continue
        rows = run_model(route, cfg, opts, model, mine, plan, records)
        log.info("%s/%s: %d rows (%d ok) in %s", route.toolchain, model, len(rows),
                 sum(r.status == "ok" for r in rows), cfg.runs_dir)
    return 0


def main_for(route: Route) -> Callable[[list[str] | None], int]:
    """A route module's `main`: `if __name__ == "__main__": raise SystemExit(main_for(ROUTE)())`."""
    return cli_main(lambda argv=None: run(route, argv))


def unavailable_import(*modules: str, hint: str = "") -> str | None:
    """'X is not installed (...)' for the first module that cannot be imported here, else None."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{name} cannot be imported in this environment ({failure_reason(exc, 160)})" + (f"; {hint}" if hint else "")
    return None
