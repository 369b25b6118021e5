"""`python -m quantization.tensorrt_route`: FP32 / FP16 / implicit INT8 (entropy calibrator) /
explicit Q/DQ INT8 TensorRT engines for ResNet50 and GPT-2, scored and timed on the GPU.

Where TensorRT or a CUDA device is missing every selected row is written as `skipped` with
the reason, and the command exits 0.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.metrics import classification_score, strided_perplexity
from quantization.common import RowWriter, RouteConfig, TextData, data_hashes, file_size_mb, load_data, route_parser
from utils.atomic import sha256_file
from utils.data import latency_input
from utils.errors import SuiteError, cli_main, setup_logging
from utils.text import lm_latency_input

from .cache import CalibKey, CalibrationCache, DeviceInfo, EngineCache
from .calib import PARTIAL_POLICIES, CalibrationStream
from .plan import (WORKSPACE_BYTES, BuildPlan, build_plan, calibration_profile, engine_key, image_profile, pad_right,
                   text_profile, trt_unavailable)
from .qdq import QDQ_METHODS, find_qdq

log = logging.getLogger("quantization.tensorrt_route")
TOOLCHAIN = "tensorrt"
DEFAULT_CALIB_BATCH = {"resnet50": 32, "gpt2": 8}


@dataclass(frozen=True)
class TrtOptions:
    qdq_method: str = "max"
    calib_batch: int | None = None  # default per model (DEFAULT_CALIB_BATCH)
    calib_partial: str = "pad"
    eval_batch: int = 32
    rebuild: bool = False
    workspace: int = WORKSPACE_BYTES
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.calib_batch is not None and self.calib_batch < 1:
            raise SuiteError("--calib-batch must be >= 1")
        if self.eval_batch < 1:
            raise SuiteError("--eval-batch must be >= 1")
        if self.workspace < 1 << 20:
            raise SuiteError("--workspace-gb must be at least 0.001")

    def calib_batch_for(self, model: str) -> int:
        return self.calib_batch or DEFAULT_CALIB_BATCH[model]


def build_parser():
    ap = route_parser(TOOLCHAIN, "Raw TensorRT: FP32, FP16, implicit INT8 with IInt8EntropyCalibrator2 (10.x) and "
                                 "explicit INT8 from ModelOpt's Q/DQ ONNX (10.x and 11.x), on a CUDA GPU.")
    g = ap.add_argument_group("TensorRT")
    g.add_argument("--qdq-method", default="max", choices=QDQ_METHODS,
                   help="which ModelOpt-ONNX calibration's Q/DQ model int8-qdq builds from")
    g.add_argument("--calib-batch", type=int, default=None,
                   help=f"fixed calibration batch for the entropy calibrator (default: {DEFAULT_CALIB_BATCH})")
    g.add_argument("--calib-partial", default="pad", choices=PARTIAL_POLICIES,
                   help="last partial calibration batch: pad (wrap around to the first samples) or drop")
    g.add_argument("--eval-batch", type=int, default=32, help="batch size for the ResNet50 accuracy pass")
    g.add_argument("--workspace-gb", type=float, default=WORKSPACE_BYTES / (1 << 30),
                   help="builder workspace memory pool limit (GiB)")
    g.add_argument("--rebuild", action="store_true",
                   help="ignore cached engines and calibration caches (needed after a TensorRT or GPU change)")
    return ap


def _manifest_or_none(source) -> dict | None:
    try:
        return source.load_manifest()
    except SuiteError:
        return None


def tensorrt_state():
    """(trt module or None, version or None, reason nothing can run or None)."""
    from .gpu import cuda_problem
    from .trt_backend import import_tensorrt

    trt = import_tensorrt()
    version = getattr(trt, "__version__", None) if trt is not None else None
    cuda_err = cuda_problem() if trt is not None else None
    return trt, version, trt_unavailable(version, cuda_err)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = RouteConfig.from_args(TOOLCHAIN, args)
    opts = TrtOptions(qdq_method=args.qdq_method, calib_batch=args.calib_batch, calib_partial=args.calib_partial,
                      eval_batch=args.eval_batch, rebuild=args.rebuild, workspace=int(args.workspace_gb * (1 << 30)),
                      verbose=args.verbose)
    trt, version, reason = tensorrt_state()
    for model in cfg.models:
        if reason:
            source = cfg.source(model)
            writer = RowWriter(cfg, model, _manifest_or_none(source), device="cuda", tensorrt=version)
            writer.status("skipped", reason, cfg.variants(model))
            continue
        run_model(trt, version, cfg, opts, model)
    return 0


# ------------------------------------------------------------------------------ one model

@dataclass
class ModelContext:
    model: str
    manifest: dict
    data: object
    device: DeviceInfo
    trt_version: str
    trt_dir: Path
    writer: RowWriter
    calib_sha: str


def run_model(trt, version: str, cfg: RouteConfig, opts: TrtOptions, model: str) -> None:
    from .gpu import device_info

    source = cfg.source(model)
    manifest = source.load_manifest()
    data = load_data(source, manifest, cfg.calib_samples[model], cfg.eval_limit)
    device = device_info(0)
    writer = RowWriter(cfg, model, manifest, device="cuda", data=data, gpu=device.name, tensorrt=version,
                       gpu_compute_capability=device.compute_capability)
    mc = ModelContext(model, manifest, data, device, version, source.cache_dir / "tensorrt", writer,
                      data_hashes(data)["calib_sha"])
    logger = None
    for method, precision in cfg.variants(model):
        plan = build_plan(method, version)
        if not plan.available:
            writer.status("skipped", plan.reason, [(method, precision)])
            continue
        try:
            if logger is None:
                from .trt_backend import make_logger

                logger = make_logger(trt, opts.verbose)
            run_variant(trt, logger, cfg, opts, mc, plan)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one variant failing must not stop the others
            log.exception("%s %s failed", model, method)
            msg = " ".join(str(exc).split()) or exc.__class__.__name__
            writer.status("failed", f"{exc.__class__.__name__}: {msg}"[:500], [(method, precision)])


def _profile(mc: ModelContext, cfg: RouteConfig, opts: TrtOptions, calib_batch: int):
    batches = cfg.batches[mc.model]
    if isinstance(mc.data, TextData):
        return text_profile(batches, seq_len=mc.data.seq_len, calib_batch=calib_batch)
    return image_profile(batches, eval_resolution=mc.data.resolution,
                         latency_resolution=int(mc.manifest.get("latency_resolution", 224)),
                         eval_batch=opts.eval_batch, calib_batch=calib_batch)


def _calib_samples(data) -> np.ndarray:
    return data.calib if isinstance(data, TextData) else data.calib.x


def run_variant(trt, logger, cfg: RouteConfig, opts: TrtOptions, mc: ModelContext, plan: BuildPlan) -> None:
    from .gpu import Stream, timed_loop
    from .trt_backend import EngineRunner, build_serialized, make_entropy_calibrator

    notes, extra = [], {"trt_plan": plan.key_fields()}
    calib_samples = calib_method = None
    if plan.onnx == "qdq":
        entry, why = find_qdq(mc.trt_dir.parent, mc.model, opts.qdq_method)
        if entry is None:
            mc.writer.status("skipped", why, [(plan.method, plan.precision)])
            return
        onnx_path, onnx_sha = entry.path, sha256_file(entry.path)
        calib_samples, calib_method = entry.calib_samples, f"modelopt-{entry.method}"
        extra.update(qdq_onnx=str(entry.path), qdq_calib_sha=entry.calib_sha,
                     qdq_high_precision_dtype=entry.meta.get("high_precision_dtype"))
        src = entry.meta.get("src_onnx_sha")
        if src and mc.manifest.get("onnx_sha") and src != mc.manifest["onnx_sha"]:
            notes.append("the Q/DQ model was made from another FP32 ONNX than the current manifest's "
                         "(rerun the modelopt-onnx route)")
        if entry.calib_sha and entry.calib_sha != mc.calib_sha:
            notes.append("the Q/DQ model was calibrated on another calibration set than this run's "
                         f"({entry.calib_sha} vs {mc.calib_sha})")
    else:
        onnx_path = Path(mc.manifest["onnx"])
        onnx_sha = mc.manifest.get("onnx_sha") or sha256_file(onnx_path)

    stream = calib_key = None
    if plan.needs_calibrator:
        stream = CalibrationStream(_calib_samples(mc.data), opts.calib_batch_for(mc.model), opts.calib_partial)
        calib_key = CalibKey(onnx_sha=onnx_sha, calib_sha=mc.calib_sha, batch_size=stream.batch_size,
                             trt_version=mc.trt_version, n_samples=stream.n, partial=stream.partial)
        calib_samples, calib_method = stream.n, "entropy2"
        extra.update(stream.describe())
    profile = _profile(mc, cfg, opts, stream.batch_size if stream else 1)
    key = engine_key(onnx_sha=onnx_sha, plan=plan, profile=profile,
                     calib=calib_key.inputs() if calib_key else None, workspace=opts.workspace)
    ec = EngineCache(mc.trt_dir, plan.method, key)

    if not opts.rebuild and ec.check(mc.trt_version, mc.device):
        engine_bytes, meta = ec.load(mc.trt_version, mc.device), ec.meta()
        log.info("%s %s: cached engine %s", mc.model, plan.method, ec.path)
    else:
        cuda_stream = Stream() if stream else None
        calibrator = calib_cache = None
        if stream:
            calib_cache = CalibrationCache(mc.trt_dir, calib_key, rebuild=opts.rebuild)
            calib_cache.state()  # raises before a long build when the cache is from another TensorRT
            calibrator = make_entropy_calibrator(trt, stream, calib_cache, cuda_stream)
        t0 = time.perf_counter()
        try:
            engine_bytes = build_serialized(
                trt, logger, onnx_path, plan, profile, calibrator=calibrator, workspace=opts.workspace,
                calib_profile=calibration_profile(stream.batch_shape, next(iter(profile.shapes))) if stream else None)
        finally:
            if calibrator is not None:
                calibrator.release()
            if cuda_stream is not None:
                cuda_stream.destroy()
        build_s = time.perf_counter() - t0
        meta = {"build_seconds": build_s, "method": plan.method, "onnx_sha": onnx_sha, "profile": profile.to_dict()}
        if calibrator is not None:
            meta.update(calibration_cache_hit=bool(calib_cache.hit), calibration_batches_fed=calibrator.fed)
        ec.save(engine_bytes, mc.trt_version, mc.device, **meta)
        log.info("%s %s: built %s in %.1f s", mc.model, plan.method, ec.path, build_s)
    extra.update(engine=str(ec.path), engine_key=key, build_seconds=meta.get("build_seconds"),
                 calibration_cache_hit=meta.get("calibration_cache_hit"))
    calib_seconds = None
    if plan.needs_calibrator and meta.get("calibration_cache_hit") is False:
        calib_seconds = meta.get("build_seconds")
        notes.append("calib_seconds is the INT8 build time including entropy calibration")

    runner = EngineRunner(trt, logger, engine_bytes)
    try:
        acc_fields, acc_extra = score(runner, mc, opts)
        extra.update(acc_extra)
        for b in cfg.batches[mc.model]:
            if isinstance(mc.data, TextData):
                x, items, unit = lm_latency_input(b, mc.data.seq_len, mc.data.vocab_size), b * mc.data.seq_len, "tokens/s"
            else:
                x, items, unit = latency_input(b, int(mc.manifest.get("latency_resolution", 224))), b, "images/s"
            runner.set_input(x)
            lat = timed_loop(runner.time_once, items_per_call=items, min_time_s=cfg.min_time, min_iters=cfg.min_iters)
            row = mc.writer.row(plan.method, plan.precision, b, **acc_fields, **lat.row_fields(), throughput_unit=unit,
                                compute_precision=plan.compute_precision, size_mb=file_size_mb(ec.path),
                                calib_samples=calib_samples, calib_seconds=calib_seconds, calib_method=calib_method,
                                notes="; ".join(notes), extra={**extra, "latency": lat.summary()})
            mc.writer.write(row)
    finally:
        runner.close()


def score(runner, mc: ModelContext, opts: TrtOptions) -> tuple[dict, dict]:
    """Accuracy on the shared evaluation subset, through the engine."""
    if isinstance(mc.data, TextData):
        L = mc.data.seq_len

        def logits(ids: np.ndarray) -> np.ndarray:
            return runner.infer(pad_right(ids, L))[:, :ids.shape[1]]

        p = strided_perplexity(logits, mc.data.val_ids, max_length=L, stride=mc.data.stride)
        return {"value": p.ppl}, p.extra()
    s = classification_score((runner.infer(x), y) for x, y in mc.data.test.batches(opts.eval_batch))
    return {"value": s.top1, "top5": s.top5}, s.extra()
