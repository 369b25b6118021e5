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

from quantization.kit.config import RouteConfig, RowWriter, route_parser
from quantization.kit.tasks import Task, data_hashes, file_size_mb, load_data, task_for  # noqa: F401 (public API)
from utils.errors import RouteUnavailable, SuiteError, cli_main, setup_logging
from utils.harness import measure
from utils.registry import TOOLCHAINS, resolve
from utils.specs import ModelSource

log = logging.getLogger("quantization.kit")

FAILED_REASON_CHARS = 300  # the one failed-row format: class, message on one line, head + tail kept


def failure_reason(exc: BaseException, limit: int = FAILED_REASON_CHARS) -> str:
    """`Class: message` on one line; over `limit`, the head (what failed) and the tail (why) are kept."""
    msg = f"{exc.__class__.__name__}: {' '.join(str(exc).split()) or '(no message)'}"
    if len(msg) > limit:
        msg = msg[:limit // 2 - 2] + " ... " + msg[-(limit - limit // 2 - 3):]
    return msg


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
    artifact: Path | None = None  # the file the variant runs, when it is one (ONNX, engine)


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

    def devices(self, opts) -> list[str]:
        """Devices to produce rows for."""
        return [TOOLCHAINS[self.toolchain].default_device()]

    def device_unavailable(self, device: str, opts) -> str | None:
        """Why rows on `device` cannot run here (they become skipped), or None."""
        return None

    def status_batches(self, device: str, batches: tuple[int, ...]) -> tuple[int, ...]:
        """Batches of the skipped/failed rows on `device` (the batches its ok rows would have)."""
        return batches

    def environment(self, device: str, opts) -> dict:
        """Extra fields of the rows' environment record on `device` (e.g. gpu name, runtime version)."""
        return {}

    def open(self, ctx: ModelContext) -> None:
        """Per-model set-up before the variants (threads, a model loaded once)."""

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
    args = parser_for(route).parse_args(["--model", model, "--methods", method, *(argv or [])])
    cfg = dataclasses.replace(RouteConfig.from_args(toolchain, args), **config)
    opts = route.options(args)
    why = route.unavailable(opts)
    if why:
        raise RouteUnavailable(why)
    ctx = open_model(route, cfg, model, opts)
    precision = TOOLCHAINS[toolchain].precision(model, method)
    return ctx, route.build(ctx, method, precision, device or route.devices(opts)[0])


def score_built(ctx: ModelContext, built: Built, progress: bool = False):
    """The variant's accuracy on the shared evaluation samples, through the model's task (as the bench scores it)."""
    return ctx.task.score(built.predict, ctx.data, batch=built.score_batch, pad=built.score_pad, progress=progress)


# ------------------------------------------------------------------------------ the one loop

def measure_built(built: Built, ctx: ModelContext, writer: RowWriter, method: str, precision: str) -> list:
    """Score once, time each batch through the harness, write one row per batch."""
    cfg, task = ctx.cfg, ctx.task
    t0 = time.perf_counter()
    score = score_built(ctx, built, progress=True)
    eval_s = time.perf_counter() - t0
    cal = built.calibration
    common = dict(size_mb=built.size_mb, compute_precision=built.compute_precision, notes="; ".join(built.notes),
                  calib_samples=cal.samples if cal else None, calib_seconds=cal.seconds if cal else None,
                  calib_method=cal.method if cal else None, **task.score_fields(score))
    extra = {**score.extra(), **built.extra, "eval_seconds": round(eval_s, 3)}
    batches = cfg.batches[ctx.model] if built.batches is None else built.batches
    rows = []
    if not batches:  # accuracy only (e.g. a fake-quant emulation that is not a deployment runtime)
        return [writer.write(writer.row(method, precision, 1, **common, extra=extra))]
    for b in batches:
        li = task.latency_input(b, ctx.manifest, ctx.data)
        fn = built.timed(li.x) if built.timed is not None else (lambda x=li.x: built.predict(x))
        lat = measure(fn, items_per_call=li.items, kind=built.latency_kind, min_time_s=cfg.min_time,
                      min_iters=cfg.min_iters, sync=built.sync, timer=built.timer)
        rows.append(writer.write(writer.row(
            method, precision, b, **common, **lat.row_fields(), throughput_unit=li.unit,
            extra={**extra, "latency": lat.summary(), "latency_shape": list(li.shape)})))
    return rows


def run_model(route: Route, cfg: RouteConfig, opts, model: str) -> list:
    """Every selected variant of one model on every device: built, scored, timed; failures isolated per variant."""
    from tqdm import tqdm

    variants = cfg.variants(model)
    devices = route.devices(opts)
    try:
        ctx = open_model(route, cfg, model, opts)
    except SuiteError:
        raise  # bad input or a stale/corrupt artifact: one line, exit 2
    writers = {d: RowWriter(cfg, model, ctx.manifest, device=d, hashes=ctx.hashes, **route.environment(d, opts))
               for d in devices}
    rows, live = [], []
    sb = {d: route.status_batches(d, cfg.batches[model]) for d in devices}
    for d in devices:
        why = route.device_unavailable(d, opts)
        if why:
            rows += writers[d].status("skipped", why, variants, sb[d])
        else:
            live.append(d)
    for method, precision in tqdm(variants, desc=f"{cfg.toolchain}/{model}", unit="variant", disable=not live):
        for d in live:
            built = None
            try:
                built = route.build(ctx, method, precision, d)
                rows += measure_built(built, ctx, writers[d], method, precision)
            except SkipVariant as exc:
                rows += writers[d].status("skipped", str(exc), [(method, precision)], sb[d])
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
                log.warning("%s %s on %s failed: %s", model, method, d, failure_reason(exc), exc_info=cfg_verbose())
                rows += writers[d].status("failed", failure_reason(exc), [(method, precision)], sb[d])
            finally:
                if built is not None and built.close is not None:
                    built.close()
    return rows


# ------------------------------------------------------------------------------ calibration feed

CALIB_BATCH = {"image-classification": 16, "language-model": 8}  # calibration feed batch size per task


def calibration_batches(ctx: ModelContext, batch_size: int | None = None) -> list[np.ndarray]:
    """The configured calibration samples, in order, cut into batches (every sample exactly once)."""
    arr = ctx.task.calib_array(ctx.data)
    bs = batch_size or CALIB_BATCH[ctx.task.kind]
    return [arr[i:i + bs] for i in range(0, arr.shape[0], bs)]


def cfg_verbose() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def run(route: Route, argv: list[str] | None = None) -> int:
    """Parse flags, then every model through `run_model`; a route that cannot run here writes skipped rows."""
    args = parser_for(route).parse_args(argv)
    setup_logging(args.verbose)
    cfg = RouteConfig.from_args(route.toolchain, args)
    opts = route.options(args)
    why = route.unavailable(opts)
    for model in cfg.models:
        if why:
            try:
                manifest = cfg.source(model).load_manifest(verify=False)
            except SuiteError:
                manifest = None
            for d in route.devices(opts):
                RowWriter(cfg, model, manifest, device=d, **route.environment(d, opts)).status(
                    "skipped", why, cfg.variants(model), route.status_batches(d, cfg.batches[model]))
            continue
        rows = run_model(route, cfg, opts, model)
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
