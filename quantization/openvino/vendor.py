"""The openvino toolchain's vendor recipe (Toolchain.tools["vendor"]; evaluation/analysis/vendor.py times it beside
the route's variant in the same interleaved trials).

OpenVINO's documented minimal path: core.read_model(onnx), nncf.quantize(model, nncf.Dataset(...)) (language models:
model_type TRANSFORMER), the scope's kept ops in an IgnoredScope; core.compile_model(model, "CPU") with the thread
count and INFERENCE_PRECISION_HINT f32 (the CPU's bf16 default would change the kept layers' precision). Nothing of
the suite's own tuning.

Module-level names are plain data (the stdlib launcher reads them); the libraries are imported by `recipe` only.
"""
from __future__ import annotations

from models.catalog import CAUSAL_LM, CLASSIFIER

# task -> the route's methods compared with the recipe
PAIRS = {CLASSIFIER: ("int8",), CAUSAL_LM: ("int8",)}
RECIPE = {"int8": "NNCF quantize + compile_model(CPU) (threads, f32 hint)"}
# what the route's deployment does beyond the recipe (said in every row; the reason when a ratio is outside 10 %)
DIFFERENCES = {
    "int8": "route: PERFORMANCE_HINT LATENCY, NUM_STREAMS 1, no CPU pinning, IR saved without FP16 "
            "compression, preset performance and fast bias correction spelled out",
}


def recipe(ctx, method: str, threads: int):
    """The recipe applied to the variant's FP32 ONNX, calibration samples and scope."""
    import nncf
    import openvino as ov

    from quantization.kit import calibration_batches
    from quantization.kit.analysis import Recipe, scope_kept
    from quantization.kit.macs import node_of

    core = ov.Core()
    model = core.read_model(ctx.manifest["onnx"])
    scope, _ = scope_kept(ctx, method)
    ignored = []
    if scope.keep:
        table = ctx.macs
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution"):
                node = node_of(table, op.get_friendly_name())
                if node is not None and scope.keeps(table["nodes"][node]["layer"]):
                    ignored.append(op.get_friendly_name())
    kw = {"ignored_scope": nncf.IgnoredScope(names=ignored)} if ignored else {}
    if ctx.task.kind == CAUSAL_LM:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    batches = calibration_batches(ctx)
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), **kw)
    compiled = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer(ctx.task.latency_input(1, ctx.manifest, ctx.data).x)
    reduced = _ov_reduced(compiled)

    def timed(x):
        return lambda: request.infer(x)

    return Recipe(timed, reduced_nodes=reduced, notes=[f"{len(ignored)} ops in NNCF's ignored scope"])


def _ov_reduced(compiled) -> list[str]:
    """originalLayersNames of the runtime layers holding MatMuls/convolutions whose kernel runs an integer or half type
    (read the same way as the route's runtime-precision record)."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()

        def get(k):
            return str(rt[k].astype(str)) if k in rt else ""

        if get("layerType") not in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Gemm",
                                    "FullyConnectedCompressed", "Subgraph", "ScaledDotProductAttention"):
            continue
        kernel = get("primitiveType")
        prec = kernel.rsplit("_", 1)[-1].lower() if "_" in kernel else get("runtimePrecision").lower()
        if prec in ("u8", "i8", "u4", "i4", "bf16", "f16"):
            out += [n for n in get("originalLayersNames").split(",") if n]
    return out

