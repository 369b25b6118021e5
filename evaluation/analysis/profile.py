"""Where a variant's time goes: the toolchain's own profiler over a built variant's timed call (its environment).

    .venvs/torch/bin/python -m evaluation.analysis.profile --method fx --batch 32            # -> results/local/
    .venvs/torch/bin/python -m evaluation.analysis.profile --method pt2e --batch 32 --publish  # -> results/ (docs render it)

The variant is built exactly as the bench builds it (quantization.kit.build_variant), its timed callable (what the
latency rows time) is called `--warmup` times, then `--calls` times under the profiler of a toolchain that declares
one (Toolchain.tools["profile"]: quantization/torch/profile.py, torch.profiler's CPU activities); the CSV has one
line per operator: calls per forward, self CPU milliseconds per forward, share of the total self time.
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

FIELDS = ("op", "calls_per_forward", "self_cpu_ms_per_forward", "share_pct")


@cli_main
def main(argv: list[str] | None = None) -> int:
    profilers = with_tool("profile")
    ap = ArgParser(prog="python -m evaluation.analysis.profile", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--toolchain", default=profilers[0], help=f"whose variant and profiler: {', '.join(profilers)}")
    ap.add_argument("--model", default=models_of(CLASSIFIER)[0])
    ap.add_argument("--method", default=None, help="a method of the toolchain (default: its profiler's DEFAULT_METHOD)")
    ap.add_argument("--batch", type=positive_int, default=32)
    ap.add_argument("--calls", type=positive_int, default=5, help="profiled calls")
    ap.add_argument("--warmup", type=positive_int, default=3, help="calls before profiling (compilation, caches)")
    ap.add_argument("--top", type=positive_int, default=8, help="operators kept")
    ap.add_argument("--threads", type=positive_int, default=2)
    add_output_flags(ap, "the CSV")
    args = ap.parse_args(argv)
    setup_logging()
    out = output_folder(args, LOCAL_DIR, RESULTS_DIR)
    tc = check_choice("toolchain", args.toolchain, profilers)
    profiler = tool(tc, "profile")
    method = args.method or profiler.DEFAULT_METHOD
    from quantization.kit import build_variant

    ctx, built = build_variant(tc, args.model, method, device="cpu", argv=["--threads", str(args.threads)])
    li = ctx.task.latency_input(args.batch, ctx.manifest, ctx.data)
    fn = built.timed(li.x) if built.timed is not None else (lambda: built.predict(li.x))
    for _ in range(args.warmup):
        fn()
    rows = profiler.profile_ops(fn, args.calls, args.top)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path = out / f"profile_{tc}_{method}_{args.model}_b{args.batch}.csv"
    atomic_write_text(path, buf.getvalue())
    print(buf.getvalue() + f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
