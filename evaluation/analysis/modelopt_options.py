"""What a quantizer's options do to the model its runtime runs: one build per option set (the toolchain's env).

    .venvs/modelopt-onnx/bin/python -m evaluation.analysis.modelopt_options              # -> results/local/
    .venvs/modelopt-onnx/bin/python -m evaluation.analysis.modelopt_options --publish    # -> results/ (docs/routes/onnx.md)

A toolchain that declares an `options` tool (Toolchain.tools; quantization/modelopt_onnx/options.py: ModelOpt's
quantize() options and the Q/DQ placement ONNX Runtime's CPU EP runs) names its option sets, the variant they
change and what a row records; each option set is one build of that variant (quantization.kit.build_variant with
the option set's route flags), exactly as the bench builds it. Structural facts, not timings.
"""
from __future__ import annotations

import argparse
import csv
import io

from utils.atomic import atomic_write_text
from utils.cli import ArgParser, add_output_flags, output_folder, positive_int
from utils.errors import cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.registry import CLASSIFIER, check_choice, models_of, tool, with_tool


@cli_main
def main(argv: list[str] | None = None) -> int:
    declaring = with_tool("options")
    ap = ArgParser(prog="python -m evaluation.analysis.modelopt_options", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--toolchain", default=declaring[0], help=f"whose option sets: {', '.join(declaring)}")
    ap.add_argument("--model", default=models_of(CLASSIFIER)[0])
    ap.add_argument("--calib-samples", type=positive_int, default=32)
    add_output_flags(ap, "the CSV")
    args = ap.parse_args(argv)
    setup_logging()
    out = output_folder(args, LOCAL_DIR, RESULTS_DIR)
    tc = check_choice("toolchain", args.toolchain, declaring)
    options = tool(tc, "options")
    from quantization.kit import build_variant

    rows = []
    for label, opts in options.OPTION_SETS:
        argv_ = ["--calib-samples", str(args.calib_samples)] + options.route_flags(opts)
        _, built = build_variant(tc, args.model, options.METHOD, device="cpu", argv=argv_)
        rows.append(options.row(label, built))
        if built.close is not None:
            built.close()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=options.FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path = out / f"{options.CSV_PREFIX}_{args.model}.csv"
    atomic_write_text(path, buf.getvalue())
    print(buf.getvalue() + f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
