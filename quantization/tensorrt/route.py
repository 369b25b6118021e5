"""`python -m quantization.tensorrt`: FP32 / FP16 / implicit INT8 (entropy calibrator) /
explicit Q/DQ INT8 TensorRT engines for ResNet50 and GPT-2, scored and timed on the GPU through the kit.

Where TensorRT or a CUDA device is missing every selected row is written as `skipped` with
the reason, and the command exits 0. Timing: the kit's one harness loop with CUDA events as its
clock (latency kind `cuda-events`).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantization.kit import Built, Calibration, ModelContext, Route, SkipVariant, main_for
from quantization.kit.tasks import file_size_mb
from utils.atomic import sha256_file
from utils.errors import SuiteError

from .cache import CalibKey, CalibrationCache, EngineCache
from .calib import PARTIAL_POLICIES, CalibrationStream
from .plan import (WORKSPACE_BYTES, BuildPlan, build_plan, calibration_profile, engine_key, image_profiles, pad_right,
                   text_profiles, trt_unavailable)
from .gpu import E2E_KIND, GPU_COMPUTE_KIND
from .qdq import QDQ_METHODS, find_qdq

log = logging.getLogger("quantization.tensorrt")
TOOLCHAIN = "tensorrt"
DEFAULT_CALIB_BATCH = {"image-classification": 32, "language-model": 8}


@dataclass(frozen=True)
class TrtOptions:
    qdq_method: str = "max"
    calib_batch: int | None = None  # default per task (DEFAULT_CALIB_BATCH)
    calib_partial: str = "pad"
    eval_batch: int = 32
    rebuild: bool = False
    workspace: int = WORKSPACE_BYTES
    verbose: bool = False
    timing: str = "gpu"  # gpu: CUDA events around back-to-back enqueues; e2e: host time incl. H2D/D2H copies
    repeat: int = 8  # enqueues between one event pair (gpu timing)

    def __post_init__(self) -> None:
        if self.timing not in ("gpu", "e2e"):
            raise SuiteError(f"--timing must be gpu or e2e, got {self.timing!r}")
        if self.repeat < 1:
            raise SuiteError("--enqueues-per-sample must be >= 1")
        if self.calib_batch is not None and self.calib_batch < 1:
            raise SuiteError("--calib-batch must be >= 1")
        if self.eval_batch < 1:
            raise SuiteError("--eval-batch must be >= 1")
        if self.workspace < 1 << 20:
            raise SuiteError("--workspace-gb must be at least 0.001")

    def calib_batch_for(self, task_kind: str) -> int:
        return self.calib_batch or DEFAULT_CALIB_BATCH[task_kind]


def tensorrt_state():
    """(trt module or None, version or None, reason nothing can run or None)."""
    from .gpu import cuda_problem
    from .trt_backend import import_tensorrt

    trt = import_tensorrt()
    version = getattr(trt, "__version__", None) if trt is not None else None
    cuda_err = cuda_problem() if trt is not None else None
    return trt, version, trt_unavailable(version, cuda_err)


class TensorRTRoute(Route):
    toolchain = TOOLCHAIN
    description = ("Raw TensorRT: FP32, FP16, implicit INT8 with IInt8EntropyCalibrator2 (10.x) and explicit INT8 "
                   "from ModelOpt's Q/DQ ONNX (10.x and 11.x), on a CUDA GPU.")

    def __init__(self):
        self._state = None

    def add_options(self, ap: argparse.ArgumentParser) -> None:
        g = ap.add_argument_group("TensorRT")
        g.add_argument("--qdq-method", default="max", choices=QDQ_METHODS,
                       help="which ModelOpt-ONNX calibration's Q/DQ model int8-qdq builds from")
        g.add_argument("--calib-batch", type=int, default=None,
                       help="fixed calibration batch for the entropy calibrator (default: 32 images / 8 windows)")
        g.add_argument("--calib-partial", default="pad", choices=PARTIAL_POLICIES,
                       help="last partial calibration batch: pad (wrap around to the first samples) or drop")
        g.add_argument("--eval-batch", type=int, default=32, help="batch size for the ResNet50 accuracy pass")
        g.add_argument("--workspace-gb", type=float, default=WORKSPACE_BYTES / (1 << 30),
                       help="builder workspace memory pool limit (GiB)")
        g.add_argument("--rebuild", action="store_true",
                       help="ignore cached engines and calibration caches (needed after a TensorRT or GPU change)")
        g.add_argument("--timing", default="gpu", choices=("gpu", "e2e"),
                       help="gpu: GPU compute time, CUDA events around back-to-back enqueues (latency kind cuda-events); "
                            "e2e: host time including the host<->device copies (kind cuda-e2e). The two kinds are "
                            "labelled in the rows and never compared with each other")
        g.add_argument("--enqueues-per-sample", type=int, default=8,
                       help="gpu timing: enqueues between one CUDA event pair (host enqueue cost stays outside)")

    def options(self, args) -> TrtOptions:
        return TrtOptions(qdq_method=args.qdq_method, calib_batch=args.calib_batch, calib_partial=args.calib_partial,
                          eval_batch=args.eval_batch, rebuild=args.rebuild,
                          workspace=int(args.workspace_gb * (1 << 30)), verbose=args.verbose, timing=args.timing,
                          repeat=args.enqueues_per_sample)

    def state(self):
        if self._state is None:
            self._state = tensorrt_state()
        return self._state

    def unavailable(self, opts) -> str | None:
        self._state = tensorrt_state()  # looked up afresh per run
        return self._state[2]

    def environment(self, device: str, opts) -> dict:
        from .gpu import device_info

        env = {"tensorrt": self.state()[1]}
        if self.state()[2] is None:
            dev = device_info(0)
            env.update(gpu=dev.name, gpu_compute_capability=dev.compute_capability)
        return env

    def open(self, ctx: ModelContext) -> None:
        from .gpu import device_info
        from .trt_backend import make_logger

        trt, version, _ = self.state()
        ctx.state.update(trt=trt, version=version, device=device_info(0), logger=make_logger(trt, ctx.opts.verbose))

    def build(self, ctx: ModelContext, method: str, precision: str, device: str) -> Built:
        plan = build_plan(method, ctx.state["version"])
        if not plan.available:
            raise SkipVariant(plan.reason)
        return build_engine(ctx, plan)


def _profiles(ctx: ModelContext, calib_batch: int | None):
    """One profile per timed batch (its optimum at that batch) plus one for the accuracy/calibration shapes."""
    batches = ctx.cfg.batches[ctx.model]
    if ctx.task.kind == "language-model":
        return text_profiles(batches, seq_len=ctx.data.seq_len, calib_batch=calib_batch, name=ctx.task.input_name)
    return image_profiles(batches, eval_resolution=ctx.data.resolution,
                          latency_resolution=int(ctx.manifest.get("latency_resolution", 224)),
                          eval_batch=ctx.opts.eval_batch, calib_batch=calib_batch, name=ctx.task.input_name)


def build_engine(ctx: ModelContext, plan: BuildPlan) -> Built:
    """Build (or reuse) the engine of one plan and wrap it for the kit."""
    from .gpu import Stream
    from .trt_backend import EngineRunner, build_serialized, make_entropy_calibrator

    trt, version, dev, logger = ctx.state["trt"], ctx.state["version"], ctx.state["device"], ctx.state["logger"]
    opts: TrtOptions = ctx.opts
    trt_dir = ctx.cache_dir
    calib_sha = ctx.hashes["calib_sha"]
    notes, extra = [], {"trt_plan": plan.key_fields()}
    calib_samples = calib_method = None
    if plan.onnx == "qdq":
        entry, why = find_qdq(ctx.artifacts_of("modelopt-onnx"), ctx.model, opts.qdq_method,
                              calib_sha=calib_sha, src_sha=(ctx.manifest.get("files") or {}).get("onnx", {}).get("sha256"))
        if entry is None:
            raise SkipVariant(why)
        onnx_path, onnx_sha = entry.path, sha256_file(entry.path)
        calib_samples, calib_method = entry.calib_samples, f"modelopt-{entry.method}"
        extra.update(qdq_onnx=entry.path.name, qdq_calib_sha=entry.calib_sha,
                     qdq_high_precision_dtype=entry.meta.get("high_precision_dtype"))
        notes += entry.notes
    else:
        onnx_path = Path(ctx.manifest["onnx"])
        onnx_sha = ctx.manifest.get("onnx_sha") or sha256_file(onnx_path)

    stream = calib_key = None
    if plan.needs_calibrator:
        stream = CalibrationStream(ctx.task.calib_array(ctx.data), opts.calib_batch_for(ctx.task.kind), opts.calib_partial)
        calib_key = CalibKey(onnx_sha=onnx_sha, calib_sha=calib_sha, batch_size=stream.batch_size,
                             trt_version=version, n_samples=stream.n, partial=stream.partial)
        calib_samples, calib_method = stream.n, "entropy2"
        extra.update(stream.describe())
    profiles = _profiles(ctx, stream.batch_size if stream else None)
    key = engine_key(onnx_sha=onnx_sha, plan=plan, profile=profiles,
                     calib=calib_key.inputs() if calib_key else None, workspace=opts.workspace)
    ec = EngineCache(trt_dir, plan.method, key)

    if not opts.rebuild and ec.check(version, dev):
        engine_bytes, meta = ec.load(version, dev), ec.meta()
        log.info("%s %s: cached engine %s", ctx.model, plan.method, ec.path)
    else:
        cuda_stream = Stream() if stream else None
        calibrator = calib_cache = None
        if stream:
            calib_cache = CalibrationCache(trt_dir, calib_key, rebuild=opts.rebuild)
            calib_cache.state()  # raises before a long build when the cache is from another TensorRT
            calibrator = make_entropy_calibrator(trt, stream, calib_cache, cuda_stream)
        t0 = time.perf_counter()
        try:
            engine_bytes = build_serialized(  # checks the calibrator was fed every batch (CalibrationError)
                trt, logger, onnx_path, plan, profiles, calibrator=calibrator, workspace=opts.workspace,
                calib_profile=calibration_profile(stream.batch_shape, ctx.task.input_name) if stream else None)
        finally:
            if calibrator is not None:
                calibrator.release()
            if cuda_stream is not None:
                cuda_stream.destroy()
        build_s = time.perf_counter() - t0
        meta = {"build_seconds": build_s, "method": plan.method, "onnx_sha": onnx_sha,
                "profiles": [p.to_dict() for p in profiles]}
        if calibrator is not None:
            meta.update(calibration_cache_hit=bool(calib_cache.hit), calibration_batches_fed=calibrator.fed)
        ec.save(engine_bytes, version, dev, **meta)
        log.info("%s %s: built %s in %.1f s", ctx.model, plan.method, ec.path, build_s)
    extra.update(engine=ec.path.name, engine_key=key, build_seconds=meta.get("build_seconds"),
                 calibration_cache_hit=meta.get("calibration_cache_hit"))
    calib_seconds = None
    if plan.needs_calibrator and meta.get("calibration_cache_hit") is False:
        calib_seconds = meta.get("build_seconds")
        notes.append("calib_seconds is the INT8 build time including entropy calibration")

    runner = EngineRunner(trt, logger, engine_bytes)
    if ctx.task.kind == "language-model":
        L = ctx.data.seq_len

        def predict(ids: np.ndarray) -> np.ndarray:
            return runner.infer(pad_right(ids, L))[:, :ids.shape[1]]
    else:
        predict = runner.infer

    def timed(x: np.ndarray):
        runner.set_input(x)  # selects the batch's own profile and copies the input once, outside the timed region
        return runner.enqueue if opts.timing == "gpu" else runner.e2e_call

    if opts.timing == "gpu":
        timer, kind = runner.gpu_timer(repeat=opts.repeat, lead=1), GPU_COMPUTE_KIND
        notes.append(f"GPU compute time: CUDA events around {opts.repeat} back-to-back enqueues per sample")
    else:
        timer, kind = runner.e2e_timer(), E2E_KIND
        notes.append("end-to-end time: host clock, H2D copy + execute + D2H copies until the stream is idle")
    extra["profiles"] = len(profiles)
    return Built(predict, size_mb=file_size_mb(ec.path), compute_precision=plan.compute_precision,
                 calibration=Calibration(calib_samples, calib_seconds, calib_method) if calib_method else None,
                 notes=notes, extra=extra, timed=timed, timer=timer, latency_kind=kind,
                 score_batch=opts.eval_batch, close=runner.close, reduced_nodes=runner.reduced_layer_names(),
                 coverage_source="TensorRT's engine inspector (each layer's input format)")


ROUTE = TensorRTRoute()
main = main_for(ROUTE)

if __name__ == "__main__":
    raise SystemExit(main())
