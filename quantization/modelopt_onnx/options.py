"""The modelopt-onnx toolchain's option table (Toolchain.tools["options"]; evaluation/analysis/modelopt_options.py
builds it): what ModelOpt's quantize() options do to its Q/DQ placement on ONNX Runtime's CPU EP.

Each option set is one build of the route's `max` INT8 variant with `--mo-option KEY=VALUE`; a row is what ONNX
Runtime ran (the variant's profiled provider record): integer QLinearConv/QLinearMatMul kernels, standalone
DequantizeLinear kernels, float convolutions, and the file size. Structural facts, not timings.
"""
from __future__ import annotations

METHOD = "max"
CSV_PREFIX = "modelopt_options"  # -> <out>/modelopt_options_<model>.csv (docs/routes/onnx.md renders it)
OPTION_SETS = (
    ("default", ()),
    ("dq_only=true", ("dq_only=true",)),
    ("op_types_needing_output_quant=Conv,Gemm", ("op_types_needing_output_quant=Conv,Gemm",)),
    ("op_types_needing_output_quant=Conv,Gemm,Add,MaxPool,GlobalAveragePool,Relu,Flatten",
     ("op_types_needing_output_quant=Conv,Gemm,Add,MaxPool,GlobalAveragePool,Relu,Flatten",)),
)
FIELDS = ("option", "qlinear_kernels", "standalone_dequantize", "float_conv_kernels", "compute_precision", "size_mb")


def route_flags(options: tuple[str, ...]) -> list[str]:
    """The route flags of one option set."""
    return [a for o in options for a in ("--mo-option", o)]


def row(label: str, built) -> dict:
    """One CSV row: the kernels ONNX Runtime ran for the variant built with option set `label`."""
    ops = (built.extra.get("providers") or {}).get("ops") or {}
    return {"option": label, "qlinear_kernels": ops.get("QLinearConv", 0) + ops.get("QLinearMatMul", 0),
            "standalone_dequantize": ops.get("DequantizeLinear", 0),
            "float_conv_kernels": ops.get("Conv", 0) + ops.get("FusedConv", 0),
            "compute_precision": built.compute_precision, "size_mb": round(built.size_mb or 0.0, 1)}
