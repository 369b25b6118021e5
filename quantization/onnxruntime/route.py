"""ONNX Runtime route: the FP32 ONNX baseline and `quantize_static` INT8 (QDQ, per-channel, U8/S8) on CPU.

    python -m quantization.onnxruntime --model resnet50 --methods fp32,minmax

Rows: `fp32` (the manifest's FP32 ONNX as is) and `minmax` / `entropy` / `percentile`
(ORT's calibrators on the shared calibration subset). ResNet50 quantizes every op ORT
supports; GPT-2 quantizes the MatMul/Gemm nodes with a constant weight that its quantization
scope does not keep (utils/registry.py: the default keeps the LM head, and the activation x
activation attention MatMuls, FP32); `minmax+head` is MinMax with GPT-2's "head" scope (the LM
head quantized too).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from quantization.kit import Calibration, ModelContext, main_for, unavailable_import
from quantization.kit import onnx as onnx_kit
from quantization.kit.macs import MAC_OPS, node_layer
from utils.errors import SuiteError, failure_reason
from utils.registry import DEFAULT_SCOPE, TOOLCHAINS

log = logging.getLogger(__name__)

TOOLCHAIN = "onnxruntime"
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# ORT 1.24's quantize_static builds its Entropy calibrator with num_bins=128 and num_quantized_bins=128
# and passes neither through extra_options: the KL search then has a single candidate (the full
# range), i.e. Entropy == MinMax unless the histogram grows between batches. TensorRT's entropy
# calibration uses 2048 histogram bins and 128 quantized bins; give ORT's calibrator the same.
ENTROPY_BINS = 2048


def calib_method(method: str) -> str:
    """'minmax+head' -> 'minmax': the calibrator of a scope variant."""
    return method.split("+", 1)[0]


@dataclass(frozen=True)
class Options:
    entropy_bins: int = ENTROPY_BINS
    preprocess: bool = True

    def __post_init__(self) -> None:
        if self.entropy_bins < 0:
            raise SuiteError(f"--entropy-bins must be >= 0 (got {self.entropy_bins})")


# ------------------------------------------------------------------------------ graph helpers

def weight_matmuls(model) -> list[str]:
    """Names of MatMul/Gemm nodes whose second input is a constant (initializer or Constant node)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
            and n.input[1] in consts]


def lm_head_nodes(model, output: str = "logits") -> list[str]:
    """The MatMul/Gemm that produces the logits (walking back through reshapes/adds)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    outs = [o.name for o in model.graph.output]
    todo = [output if output in outs else outs[0]]
    seen = set()
    while todo:
        t = todo.pop()
        n = producer.get(t)
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type in ("MatMul", "Gemm"):
            return [n.name]
        todo += [i for i in n.input[:1] if i]
    return []


# ------------------------------------------------------------------------------ quantization

def preprocess(src: Path, src_sha: str, cache_root: Path) -> tuple[Path, str]:
    """quant_pre_process output (cached); on failure the source itself, with a note."""
    from onnxruntime.quantization import quant_pre_process

    out = onnx_kit.artifact_path(cache_root, "preprocessed", {"src": src_sha, "step": "quant_pre_process"})

    def make(tmp_out: Path) -> dict:
        quant_pre_process(str(src), str(tmp_out), skip_symbolic_shape=False, auto_merge=True)
        onnx_kit.check_onnx(tmp_out)
        return {"src_sha": src_sha}

    try:
        path, _, _ = onnx_kit.cached_artifact(out, make)
        return path, "quant_pre_process applied"
    except Exception as exc:  # noqa: BLE001 - symbolic shape inference can fail on unusual graphs
        log.warning("quant_pre_process failed (%s); quantizing the FP32 ONNX as exported", failure_reason(exc))
        return src, f"quant_pre_process failed ({failure_reason(exc, 120)}); quantized the export directly"


def kept_nodes(model, keep, task_kind: str) -> list[str]:
    """MAC nodes (MatMul/Gemm/Conv) of `model` whose layer the scope keeps in the higher precision (`keep(layer)`)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in MAC_OPS
            and keep(node_layer(n.name, len(n.input) > 1 and n.input[1] in consts))]


def quantize_static_onnx(src: Path, out: Path, reader, *, method: str, task_kind: str, lm_head: str = "fp32",
                         keep=None, extra_options: dict | None = None, entropy_bins: int = 0,
                         bounded: bool = False) -> dict:
    """ORT static INT8 (QDQ, per-channel, U8 activations, S8 weights). Returns what was quantized.

    keep: the quantization scope, `keep(layer) -> bool` for the layers left FP32 (their nodes are not quantized);
    without it, a language model keeps its LM head FP32 unless lm_head="int8".

    bounded: collect the calibration tensors one batch at a time and merge them (ORT's CalibStridedMinMax, which
    every calibrator honours: min/max merge exactly, histograms are merged by range extension), instead of holding
    every intermediate tensor of every batch at once."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    kw: dict = {}
    info: dict = {}
    if task_kind == "language-model":
        nodes = weight_matmuls(model)
        head = lm_head_nodes(model)
        kept = kept_nodes(model, keep, task_kind) if keep is not None else (head if lm_head == "fp32" else [])
        nodes = [n for n in nodes if n not in kept]
        kw.update(op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes)
        info.update(quantized_nodes=len(nodes), lm_head="int8" if head and head[0] in nodes else "fp32",
                    lm_head_node=head[0] if head else None, kept_nodes=len(kept))
    elif keep is not None:  # every op ORT quantizes, except the MAC nodes the scope keeps
        kept = kept_nodes(model, keep, task_kind)
        if kept:
            kw["nodes_to_exclude"] = kept
        info["kept_nodes"] = len(kept)
    opts = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if task_kind == "image-classification":
        # the classifier's logits stay float (DQ -> Gemm, no output Q): a Q/DQ on the graph output only
        # rounds the scores, and its range is set by the most extreme calibration logit
        opts["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
        info["logits"] = "float (no output Q on the classifier Gemm)"
    if bounded:
        opts["CalibStridedMinMax"] = 1
        info["calibration_memory"] = "bounded: one calibration batch collected at a time (CalibStridedMinMax=1)"
    opts.update(extra_options or {})
    cm = getattr(CalibrationMethod, CALIB_METHODS[method])
    with _entropy_bins(entropy_bins if cm == CalibrationMethod.Entropy else None):
        quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=cm, calibration_providers=[onnx_kit.CPU_EP], extra_options=opts, **kw)
    if cm == CalibrationMethod.Entropy:
        info["entropy_bins"] = entropy_bins
    return info




@contextlib.contextmanager
def _entropy_bins(num_bins: int | None, num_quantized_bins: int = 128):
    if not num_bins:
        yield
        return
    import importlib

    qmod = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function
    orig = qmod.create_calibrator

    def create_calibrator(*a, **kw):
        eo = dict(kw.get("extra_options") or {})
        eo.setdefault("num_bins", num_bins)
        eo.setdefault("num_quantized_bins", num_quantized_bins)
        kw["extra_options"] = eo
        return orig(*a, **kw)

    cmod = importlib.import_module("onnxruntime.quantization.calibrate")
    orig_threshold = cmod.HistogramCollector.get_entropy_threshold
    qmod.create_calibrator = create_calibrator
    cmod.HistogramCollector.get_entropy_threshold = entropy_threshold
    try:
        yield
    finally:
        qmod.create_calibrator = orig
        cmod.HistogramCollector.get_entropy_threshold = orig_threshold


def entropy_threshold(self, histogram, num_quantized_bins: int):
    """ORT 1.24's `HistogramCollector.get_entropy_threshold`, same result bit for bit, without its Python loops.

    ORT walks every candidate threshold (about num_bins / 2 of them) and, per candidate, sums the outlier bins
    and merges/expands the 128 quantized bins with Python-level `sum` over NumPy scalars: about 0.6 s per
    tensor at 2048 bins, 70 s of a ResNet50 calibration. Here the outlier counts come from one cumulative sum
    and the bin merge is a reshape; the integer arithmetic is unchanged (int64 counts, float64 division
    truncated into an int64 array), and each candidate's smoothing and KL use ORT's own `smooth_distribution`
    and `entropy`, so the float32 divergences, hence the chosen threshold, are identical (tested against
    ORT's method on grown, sparse and degenerate histograms)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges = histogram[0], histogram[1]
    nb = hist.size
    zero = nb // 2
    half = num_quantized_bins // 2
    dtype = edges.dtype
    csum = np.concatenate((np.zeros(1, dtype=np.int64), np.cumsum(hist, dtype=np.int64)))
    kl = np.zeros(zero - half + 1)
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, nb)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += csum[start]
        p[-1] += csum[-1] - csum[end]
        nonzero = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        k = num_quantized_bins * merged
        qbins = sliced[:k].reshape(num_quantized_bins, merged).sum(axis=1, dtype=np.int64)
        qbins[-1] += sliced[k:].sum(dtype=np.int64)
        norm = nonzero[:k].reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)
        q[:k] = np.repeat(np.where(norm != 0, qbins / np.where(norm != 0, norm, 1), 0), merged)
        p, q = smooth_distribution(p), smooth_distribution(q)
        kl[i - half] = np.inf if p is None or q is None else np.array(entropy(p, q), dtype=dtype)
    best = int(np.argmin(kl)) + half
    lo, hi = edges[zero - best], edges[min(zero + best + 1, nb)]
    if lo < histogram[2]:
        lo = histogram[2]
    if hi > histogram[3]:
        hi = histogram[3]
    return lo, hi


def make_artifact(ctx: ModelContext, method: str, precision: str, opts: Options) -> onnx_kit.Artifact:
    src, src_sha = ctx.state["src"]
    dec = Path(ctx.manifest["decoder_onnx"]) if ctx.manifest.get("decoder_onnx") else None
    if method == "fp32":
        return onnx_kit.Artifact(src, method, precision,
                                 notes=["FP32 ONNX from models.prepare, ORT graph optimisations"], decoder=dec)
    lm = ctx.task.kind == "language-model"
    calib = onnx_kit.calib_key(ctx)
    scope_name, scope = ctx.scope_for(method)
    cal = calib_method(method)
    if "pre" not in ctx.state:
        ctx.state["pre"] = preprocess(src, src_sha, ctx.cache_dir) if opts.preprocess else (src, "no quant_pre_process")
    pre, pre_note = ctx.state["pre"]
    options = {"format": "QDQ", "per_channel": True, "act": "U8", "wt": "S8", "preprocess": opts.preprocess,
               "scope": scope_name, "scope_keeps": list(scope.keep), "float_logits": not lm,
               "entropy_bins": opts.entropy_bins if cal == "entropy" else None}
    stem = f"{cal}-int8" if scope_name == DEFAULT_SCOPE else f"{cal}-{scope_name}-int8"
    out = onnx_kit.artifact_path(ctx.cache_dir, stem, {"src": src_sha, "method": cal, **calib, **options})

    def build(tmp_out: Path) -> dict:
        reader = onnx_kit.ArrayCalibrationReader(_input_name(pre, ctx.task.input_name),
                                                 onnx_kit.calibration_batches(ctx))
        return {**_quantize_copy(ctx, pre, tmp_out, reader, cal, opts, scope.keeps), "options": options, **calib,
                "src_sha": src_sha}

    path, meta, reused = onnx_kit.cached_artifact(out, build)
    notes = [pre_note, f"QDQ per-channel U8/S8 (ActivationSymmetric=False, WeightSymmetric=True; S8 activations "
                       f"measured slower on the CPU EP), {CALIB_METHODS[cal]} calibration"]
    if lm:
        notes.append(f"quantization scope '{scope_name}': {meta.get('quantized_nodes')} weight MatMul/Gemm quantized, "
                     f"attention MatMuls FP32, LM head {meta.get('lm_head')}")
    if meta.get("calibration_memory"):
        notes.append(f"calibration memory {meta['calibration_memory']}")
    if reused:
        notes.append("cached artifact reused (calib_seconds from the run that made it)")
    dec_q = None
    if lm and dec is not None and method in TOOLCHAINS[TOOLCHAIN].generating(ctx.model):
        dec_q = quantize_decoder(ctx, dec, cal, options, opts, scope.keeps)
        notes.append("decode rows: the KV-cache decoder graph quantized the same way, calibrated on the second half "
                     "of each calibration window with the FP32 keys/values of the first half as its past")
    return onnx_kit.Artifact(path, method, precision, decoder=dec_q,
                             calibration=Calibration(calib["n_calib"], round(meta["calib_seconds"], 3),
                                                     CALIB_METHODS[cal].lower()),
                             notes=notes,
                             extra={"quant_options": options, "calib_samples_fed": meta.get("calib_samples_fed")})


def _quantize_copy(ctx: ModelContext, pre: Path, tmp_out: Path, reader, method: str, opts: Options, keep=None) -> dict:
    """quantize_static on a private copy of `pre` (ORT writes augmented models next to its input); returns what was
    quantized, the calibration seconds and the samples fed per pass."""
    with tempfile.TemporaryDirectory(prefix="ortq-") as tmp:
        work = onnx_kit.copy_for_tool(pre, Path(tmp), "model.onnx")
        t0 = time.perf_counter()
        info = quantize_static_onnx(work, tmp_out, reader, method=method, task_kind=ctx.task.kind, keep=keep,
                                    entropy_bins=opts.entropy_bins, bounded=onnx_kit.large_model(pre))
        secs = time.perf_counter() - t0
    onnx_kit.check_onnx(tmp_out)
    return {"calib_seconds": secs, "calib_samples_fed": reader.passes, **info}


def quantize_decoder(ctx: ModelContext, dec: Path, method: str, options: dict, opts: Options, keep=None) -> Path:
    """The KV-cache decoder quantized with the same method and options as the full-sequence graph (cached)."""
    from utils.atomic import sha256_file

    rec = (ctx.manifest.get("files") or {}).get("decoder_onnx") or {}
    dec_sha = rec.get("sha256") or sha256_file(dec)
    calib = onnx_kit.calib_key(ctx)
    out = onnx_kit.artifact_path(ctx.cache_dir, f"{method}-int8-decoder",
                                 {"src": dec_sha, "method": method, **calib, **options})

    def build(tmp_out: Path) -> dict:
        pre, _ = preprocess(dec, dec_sha, ctx.cache_dir) if opts.preprocess else (dec, "")
        feeds = onnx_kit.decoder_calibration_feeds(ctx.manifest, dec, onnx_kit.calibration_batches(ctx),
                                                   ctx.cfg.threads)
        reader = onnx_kit.FeedCalibrationReader(feeds)
        return {**_quantize_copy(ctx, pre, tmp_out, reader, method, opts, keep), "options": options, **calib,
                "src_sha": dec_sha}

    path, _, _ = onnx_kit.cached_artifact(out, build)
    return path


def _input_name(path: Path, preferred: str) -> str:
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return preferred if preferred in names else names[0]


class OrtRoute(onnx_kit.OnnxRoute):
    toolchain = TOOLCHAIN
    description = ("ONNX Runtime: FP32 ONNX baseline and static INT8 (QDQ, per-channel, U8 act / S8 wt) with "
                   "MinMax/Entropy/Percentile calibration, on the CPU execution provider.")
    Options = Options

    def add_options(self, ap: argparse.ArgumentParser) -> None:
        super().add_options(ap)
        g = ap.add_argument_group("ONNX Runtime")
        g.add_argument("--entropy-bins", type=int, default=ENTROPY_BINS,
                       help="histogram bins of the Entropy calibrator (ORT's own default, 128, makes Entropy equal "
                            "MinMax; 0 keeps ORT's default)")
        g.add_argument("--preprocess", default=True, action=argparse.BooleanOptionalAction,
                       help="run onnxruntime.quantization.quant_pre_process (shape inference + graph optimisation) first")

    def unavailable(self, opts) -> str | None:
        return unavailable_import("onnx", "onnxruntime", "onnxruntime.quantization",
                                  hint="create the environment with `python3 -m evaluation.launch.envs onnxruntime`")

    def make_artifact(self, ctx: ModelContext, method: str, precision: str) -> onnx_kit.Artifact:
        return make_artifact(ctx, method, precision, ctx.opts)

    def slow_reason(self, rec: onnx_kit.ProviderRecord) -> str | None:
        if rec.int_kernels == 0 and rec.dq_kernels:
            return "Q/DQ not fused into integer kernels on this EP: runs as FP32 compute plus (de)quantize overhead"
        return None


ROUTE = OrtRoute()
main = main_for(ROUTE)

if __name__ == "__main__":
    raise SystemExit(main())
