"""ONNX Runtime route: the FP32 ONNX baseline and `quantize_static` INT8 (QDQ, per-channel, U8/S8) on CPU.

    python -m quantization.onnxruntime_route --model resnet50 --methods fp32,minmax

Rows: `fp32` (the manifest's FP32 ONNX as is) and `minmax` / `entropy` / `percentile`
(ORT's calibrators on the shared calibration subset). ResNet50 quantizes every op ORT
supports; GPT-2 quantizes the MatMul/Gemm nodes with a constant weight (activation x
activation attention MatMuls stay FP32; the LM head stays FP32 unless `--lm-head int8`).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path

from quantization import onnx_common as oc
from quantization.common import RouteConfig, load_data, route_parser
from utils.errors import SuiteError, cli_main, setup_logging

log = logging.getLogger(__name__)

TOOLCHAIN = "onnxruntime"
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# ORT 1.24's quantize_static builds its Entropy calibrator with num_bins=128 and num_quantized_bins=128
# and passes neither through extra_options: the KL search then has a single candidate (the full
# range), i.e. Entropy == MinMax unless the histogram grows between batches. TensorRT's entropy
# calibration uses 2048 histogram bins and 128 quantized bins; give ORT's calibrator the same.
ENTROPY_BINS = 2048


def parser() -> argparse.ArgumentParser:
    ap = route_parser(TOOLCHAIN, "ONNX Runtime: FP32 ONNX baseline and static INT8 (QDQ, per-channel, U8 act / S8 wt) "
                                 "with MinMax/Entropy/Percentile calibration, on the CPU execution provider.")
    ap.add_argument("--devices", default="auto",
                    help="comma list of cpu,cuda; auto: cpu plus cuda when this ORT build has the CUDA/TensorRT EP")
    ap.add_argument("--lm-head", default="fp32", choices=("fp32", "int8"),
                    help="GPT-2: keep the final vocabulary projection in FP32 or quantize it too")
    ap.add_argument("--entropy-bins", type=int, default=ENTROPY_BINS,
                    help="histogram bins of the Entropy calibrator (ORT's own default, 128, makes Entropy equal MinMax; "
                         "0 keeps ORT's default)")
    ap.add_argument("--preprocess", default=True, action=argparse.BooleanOptionalAction,
                    help="run onnxruntime.quantization.quant_pre_process (shape inference + graph optimisation) first")
    return ap


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

    out = oc.artifact_path(cache_root, "preprocessed", {"src": src_sha, "step": "quant_pre_process"})

    def make(tmp_out: Path) -> dict:
        quant_pre_process(str(src), str(tmp_out), skip_symbolic_shape=False, auto_merge=True)
        oc.check_onnx(tmp_out)
        return {"src_sha": src_sha}

    try:
        path, _, _ = oc.cached_artifact(out, make)
        return path, "quant_pre_process applied"
    except Exception as exc:  # noqa: BLE001 - symbolic shape inference can fail on unusual graphs
        log.warning("quant_pre_process failed (%s); quantizing the FP32 ONNX as exported", oc.one_line(exc))
        return src, f"quant_pre_process failed ({oc.one_line(exc, 120)}); quantized the export directly"


def quantize_static_onnx(src: Path, out: Path, reader, *, method: str, model_kind: str, lm_head: str = "fp32",
                         extra_options: dict | None = None, entropy_bins: int = 0) -> dict:
    """ORT static INT8 (QDQ, per-channel, U8 activations, S8 weights). Returns what was quantized."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    kw: dict = {}
    info: dict = {}
    if model_kind == "gpt2":
        nodes = weight_matmuls(model)
        head = lm_head_nodes(model)
        if lm_head == "fp32":
            nodes = [n for n in nodes if n not in head]
        kw.update(op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes)
        info.update(quantized_nodes=len(nodes), lm_head=lm_head, lm_head_node=head[0] if head else None)
    opts = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if model_kind == "resnet50":
        # the classifier's logits stay float (DQ -> Gemm, no output Q): a Q/DQ on the graph output only
        # rounds the scores, and its range is set by the most extreme calibration logit
        opts["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
        info["logits"] = "float (no output Q on the classifier Gemm)"
    opts.update(extra_options or {})
    cm = getattr(CalibrationMethod, CALIB_METHODS[method])
    with _entropy_bins(entropy_bins if cm == CalibrationMethod.Entropy else None):
        quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=cm, calibration_providers=[oc.CPU_EP], extra_options=opts, **kw)
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

    qmod.create_calibrator = create_calibrator
    try:
        yield
    finally:
        qmod.create_calibrator = orig


def make_artifact_fn(cfg: RouteConfig, model: str, manifest: dict, data, args):
    src, src_sha = oc.source_onnx(manifest, model)
    cache_root = cfg.source(model).cache_dir / TOOLCHAIN
    calib = oc.calib_key(data)
    state: dict = {}

    def make(method: str, precision: str) -> oc.Artifact:
        if method == "fp32":
            return oc.Artifact(src, method, precision, notes=["FP32 ONNX from models.prepare, ORT graph optimisations"])
        if "pre" not in state:
            state["pre"] = preprocess(src, src_sha, cache_root) if args.preprocess else (src, "no quant_pre_process")
        pre, pre_note = state["pre"]
        options = {"format": "QDQ", "per_channel": True, "act": "U8", "wt": "S8", "preprocess": args.preprocess,
                   "lm_head": args.lm_head if model == "gpt2" else None,
                   "float_logits": model == "resnet50",
                   "entropy_bins": args.entropy_bins if method == "entropy" else None}
        out = oc.artifact_path(cache_root, f"{method}-int8", {"src": src_sha, "method": method, **calib, **options})

        def build(tmp_out: Path) -> dict:
            with tempfile.TemporaryDirectory(prefix="ortq-") as tmp:  # ORT writes augmented models next to it
                reader = oc.ArrayCalibrationReader(_input_name(pre, model), oc.calibration_batches(data))
                t0 = time.perf_counter()
                work = Path(tmp) / "model.onnx"
                oc.copy_for_tool(pre, Path(tmp), work.name)
                info = quantize_static_onnx(work, tmp_out, reader, method=method, model_kind=model,
                                            lm_head=args.lm_head, entropy_bins=args.entropy_bins)
                secs = time.perf_counter() - t0
            oc.check_onnx(tmp_out)
            return {"calib_seconds": secs, "calib_samples_fed": reader.passes, "options": options, **info, **calib,
                    "src_sha": src_sha}

        path, meta, reused = oc.cached_artifact(out, build)
        notes = [pre_note, f"QDQ per-channel U8/S8, {CALIB_METHODS[method]} calibration"]
        if model == "gpt2":
            notes.append(f"{meta.get('quantized_nodes')} weight MatMul/Gemm quantized, attention MatMuls FP32, "
                         f"LM head {meta.get('lm_head')}")
        if reused:
            notes.append("cached artifact reused (calib_seconds from the run that made it)")
        return oc.Artifact(path, method, precision, calib_method=CALIB_METHODS[method].lower(),
                           calib_samples=calib["n_calib"], calib_seconds=round(meta["calib_seconds"], 3), notes=notes,
                           extra={"quant_options": options, "calib_samples_fed": meta.get("calib_samples_fed")})

    return make


def _input_name(path: Path, model: str) -> str:
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    want = "input" if model == "resnet50" else "input_ids"
    return want if want in names else names[0]


def slow_reason(rec: oc.ProviderRecord) -> str | None:
    if rec.int_kernels == 0 and rec.dq_kernels:
        return "Q/DQ not fused into integer kernels on this EP: runs as FP32 compute plus (de)quantize overhead"
    return None


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = RouteConfig.from_args(TOOLCHAIN, args)
    try:
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as exc:
        raise SuiteError(f"{exc.name} is not installed in this Python; run the route in its environment: "
                         ".venvs/onnxruntime/bin/python -m quantization.onnxruntime_route "
                         "(python3 -m evaluation.envs onnxruntime creates it)") from None
    devices = oc.devices_to_run(args.devices)
    for model in cfg.models:
        source = cfg.source(model)
        manifest = source.load_manifest()
        oc.source_onnx(manifest, model)  # corrupt/missing FP32 ONNX -> one-line error before any row
        data = load_data(source, manifest, cfg.calib_samples[model], cfg.eval_limit)
        make = make_artifact_fn(cfg, model, manifest, data, args)
        rows = oc.run_variants(cfg, model, manifest, data, make_artifact=make, devices=devices,
                               slow_reason=slow_reason)
        ok = sum(r.status == "ok" for r in rows)
        log.info("%s: %d rows (%d ok) in %s", model, len(rows), ok, cfg.runs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
