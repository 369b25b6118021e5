"""What ModelOpt's quantize() options do to its Q/DQ placement on ONNX Runtime's CPU EP (modelopt-onnx environment).

    .venvs/modelopt-onnx/bin/python -m evaluation.analysis.modelopt_options              # -> results/local/
    .venvs/modelopt-onnx/bin/python -m evaluation.analysis.modelopt_options --publish    # -> results/ (docs/routes/onnx.md)

Each option set is one build of the route's `max` INT8 variant (quantization.kit.build_variant with
`--mo-option KEY=VALUE`), exactly as the bench builds it; the CSV has, per option set, the kernels ONNX Runtime
ran (from the variant's profiled provider record): integer QLinearConv/QLinearMatMul kernels, standalone
DequantizeLinear kernels, float convolutions, and the file size. Structural facts, not timings.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from utils.atomic import atomic_write_text
from utils.cli import ArgParser, positive_int
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR

OPTION_SETS = (
    ("default", ()),
    ("dq_only=true", ("dq_only=true",)),
    ("op_types_needing_output_quant=Conv,Gemm", ("op_types_needing_output_quant=Conv,Gemm",)),
    ("op_types_needing_output_quant=Conv,Gemm,Add,MaxPool,GlobalAveragePool,Relu,Flatten",
     ("op_types_needing_output_quant=Conv,Gemm,Add,MaxPool,GlobalAveragePool,Relu,Flatten",)),
)
FIELDS = ("option", "qlinear_kernels", "standalone_dequantize", "float_conv_kernels", "compute_precision", "size_mb")


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m evaluation.analysis.modelopt_options", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--calib-samples", type=positive_int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="folder of the CSV (default results/local/)")
    ap.add_argument("--publish", action="store_true", help="write the committed CSV in results/")
    args = ap.parse_args(argv)
    setup_logging()
    if args.publish and args.out is not None:
        raise SuiteError("--publish writes results/; drop --out")
    out = RESULTS_DIR if args.publish else (args.out or LOCAL_DIR)
    from quantization.kit import build_variant

    rows = []
    for label, opts in OPTION_SETS:
        argv_ = ["--calib-samples", str(args.calib_samples)] + [a for o in opts for a in ("--mo-option", o)]
        _, built = build_variant("modelopt-onnx", args.model, "max", device="cpu", argv=argv_)
        ops = (built.extra.get("providers") or {}).get("ops") or {}
        rows.append({"option": label, "qlinear_kernels": ops.get("QLinearConv", 0) + ops.get("QLinearMatMul", 0),
                     "standalone_dequantize": ops.get("DequantizeLinear", 0),
                     "float_conv_kernels": ops.get("Conv", 0) + ops.get("FusedConv", 0),
                     "compute_precision": built.compute_precision, "size_mb": round(built.size_mb or 0.0, 1)})
        if built.close is not None:
            built.close()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path = out / f"modelopt_options_{args.model}.csv"
    atomic_write_text(path, buf.getvalue())
    print(buf.getvalue() + f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
