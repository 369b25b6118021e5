"""The route contract: what a route is (Route), what it builds (Built, Calibration), what it sees of a model
(ModelContext, open_model), and the helpers routes share (calibration_batches, unavailable_import, SkipVariant).

A route (a `Route` subclass, declared once in utils/registry.py) only *builds*: for each variant it quantizes or
loads the cached artifact and returns a `Built` — a predict function for scoring, a timed callable per batch,
size, calibration facts, compute precision, notes. Everything that must be identical across toolchains (the item
loop, scoring, timing, rows) is the kit's: quantization/kit/runner.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quantization.kit.config import RouteConfig
from quantization.kit.tasks import Task, task_for
from utils.errors import SuiteError, failure_reason
from utils.registry import TOOLCHAINS, resolve
from utils.specs import ModelSource


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


CALIB_BATCH = {"image-classification": 16, "language-model": 8}  # calibration feed batch size per task


def calibration_batches(ctx: ModelContext, batch_size: int | None = None) -> list[np.ndarray]:
    """The configured calibration samples, in order, cut into batches (every sample exactly once)."""
    arr = ctx.task.calib_array(ctx.data)
    bs = batch_size or CALIB_BATCH[ctx.task.kind]
    return [arr[i:i + bs] for i in range(0, arr.shape[0], bs)]


def unavailable_import(*modules: str, hint: str = "") -> str | None:
    """'X is not installed (...)' for the first module that cannot be imported here, else None."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{name} cannot be imported in this environment ({failure_reason(exc, 160)})" + (f"; {hint}" if hint else "")
    return None
