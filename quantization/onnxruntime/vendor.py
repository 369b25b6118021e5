"""The onnxruntime toolchain's vendor recipe (Toolchain.tools["vendor"]; evaluation/analysis/vendor.py times it beside
the route's variant in the same interleaved trials).

ONNX Runtime's documented minimal path: quant_pre_process, quantize_static(QDQ, per_channel=True, U8 activations /
S8 weights (ORT's advice for x86-64: its default S8 activations leave MatMuls and convolutions unfused on this CPU
EP); language models: op_types_to_quantize MatMul/Gemm), the scope's kept nodes in nodes_to_exclude; an
InferenceSession with only intra_op_num_threads set. Nothing of the suite's own tuning.

Module-level names are plain data (the stdlib launcher reads them); the libraries are imported by `recipe` only.
"""
from __future__ import annotations

from models.catalog import CAUSAL_LM, CLASSIFIER

import tempfile
from pathlib import Path

# task -> the route's methods compared with the recipe
PAIRS = {CLASSIFIER: ("minmax",), CAUSAL_LM: ("minmax",)}
RECIPE = {"minmax": "ORT quant_pre_process + quantize_static (QDQ, per-channel, U8S8, MinMax), default session"}
# what the route's deployment does beyond the recipe (said in every row; the reason when a ratio is outside 10 %)
DIFFERENCES = {
    "minmax": "route: U8/S8 with ActivationSymmetric=False spelled out, strided calibration for large "
              "models, session ORT_ENABLE_ALL + ORT_SEQUENTIAL + allow_spinning=0 (the suite times "
              "several sessions in one process, where spinning sessions slow each other); the "
              "recipe keeps ORT's default intra-op spinning, faster for a lone session on an idle "
              "machine at small batches, and in these interleaved trials its idle threads spin on "
              "after each call and take the cores from the route's next one (docs/routes/onnx.md)",
}


def recipe(ctx, method: str, threads: int):
    """The recipe applied to the variant's FP32 ONNX, calibration samples and scope (artifact cached beside the
    route's)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    from quantization.kit import cache, calibration_batches
    from quantization.kit.analysis import Recipe, scope_kept
    from quantization.kit.onnx import provider_record, source_onnx

    src, sha = source_onnx(ctx.manifest)
    _, kept = scope_kept(ctx, method)
    lm = ctx.task.kind == CAUSAL_LM
    name = ctx.task.input_name
    key = {"src": sha, "recipe": RECIPE[method], "kept": kept, "calib_sha": ctx.hashes["calib_sha"],
           "n_calib": ctx.hashes["n_calib"], "ort": ort.__version__}
    out = cache.artifact_path(ctx.source.cache_dir / "vendor", "ort-quantize_static", key)

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b}

    def make(tmp_out: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="vendor-ort-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre))
            kw = {"op_types_to_quantize": ["MatMul", "Gemm"]} if lm else {}
            quantize_static(str(pre), str(tmp_out), Reader(calibration_batches(ctx)), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=kept, **kw)
        return {"kept": kept}

    path, _, reused = cache.cached_artifact(out, make)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    probe = ctx.task.latency_input(1, ctx.manifest, ctx.data).x
    rec = provider_record(path, threads, ["CPUExecutionProvider"], {name: probe})

    def timed(x):
        feed = {name: x}
        return lambda: sess.run(None, feed)

    return Recipe(timed, reduced_nodes=rec.reduced_nodes(),
                  notes=[f"{rec.int_kernels} integer kernels" + (", artifact reused" if reused else "")])
