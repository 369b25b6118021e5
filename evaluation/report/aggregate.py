"""Rows -> results/summary.csv, results/summary.md and plots (report env: pandas, matplotlib, scipy).

    python -m evaluation.report.aggregate [--runs-dir results/runs] [--out results]
    python -m evaluation.report.aggregate --runs-dir from-gpu-box/runs --runs-dir results/cluster/runs --out merged

Several --runs-dir (run folders copied from other machines) merge into one table: rows of the same key (model,
weights, toolchain, method, precision, device, batch, subset) keep the newest ok row by its timestamp, never a
failed or skipped row over an ok one; a newer failed/skipped row beside the kept ok row is noted as its latest
attempt. Rows of different devices and hosts stand side by side (`host`, `launcher` columns).

Every number comes from the JSON rows; nothing is parsed from printed output. Deltas and
`speedup` compare with the FP32 row the registry names as the toolchain's baseline (same model,
weights, device, batch, latency kind); `speedup_vs_best_fp32` with the fastest FP32 row of the
same model, weights, device and batch whatever the toolchain; `efficiency` is the row's useful
operations per second over the device ceiling (matmul microbenchmark of the same run) for the
precision its matmuls run in; `roofline_pct` is the row's rate over the lower of two bounds, the compute ceiling and
the memory bandwidth over its estimated bytes per call (`bytes_per_call`, utils/traffic.py), `bound` which one applies.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from utils.atomic import atomic_write_text
from utils.cli import ArgParser
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import PUBLISHED_RUNS_DIR, REPO_ROOT, RESULTS_DIR, RUNS_DIR, report_dir_for
from utils.rows import read_attempts, read_rows
from evaluation.report.docs import doc_source, update_docs
from evaluation.report.markdown import render_markdown, update_readme
from evaluation.report.merge import merge_runs
from evaluation.report.plots import plot_accuracy_latency
from evaluation.report.table import build_table
from evaluation.report.verdict import Criterion


log = logging.getLogger("evaluation.report.aggregate")


def aggregate(runs_dir, out_dir: Path, readme: Path | None = None, crit: Criterion = Criterion(),
              docs: list[Path] | None = None, damaged: list | None = None) -> pd.DataFrame:
    """The tables of one or several runs folders. A row file that cannot be read is moved aside (`damaged/` of its
    folder), named in `damaged`, and left out; the others make the tables."""
    dirs = [Path(d) for d in (runs_dir if isinstance(runs_dir, (list, tuple)) else [runs_dir])]
    if len(dirs) == 1:
        rows, attempts = read_rows(dirs[0], damaged), read_attempts(dirs[0])
    else:
        rows, attempts = merge_runs(dirs, damaged)
    if not rows:
        raise SuiteError(f"no result rows in {', '.join(map(str, dirs))}: run `python3 -m evaluation.bench` first")
    df = build_table(rows, attempts)
    atomic_write_text(out_dir / "summary.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", render_markdown(df, rows, crit))
    plot_accuracy_latency(df, out_dir / "accuracy_vs_latency.png")
    if readme is not None and update_readme(readme, df, rows, crit):
        log.info("results table updated in %s", readme)
    if readme is not None:  # the README's own generated blocks (e.g. the run log), like the docs'
        docs = [readme, *(docs or [])]
    if docs:
        for p in update_docs(docs, df, doc_source(out_dir)):
            log.info("generated blocks rewritten in %s", p)
    log.info("%d rows -> %s, %s, %s", len(df), out_dir / "summary.csv", out_dir / "summary.md",
             out_dir / "accuracy_vs_latency.png")
    return df


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m evaluation.report.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", type=Path, action="append", default=None,
                    help="a folder of result rows; repeat to merge folders copied from other machines (default: "
                         "results/local/runs, a user's runs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the tables go (default: the folder holding the first --runs-dir when it is named "
                         "'runs', else <runs-dir>-report)")
    ap.add_argument("--publish", action="store_true",
                    help="the committed reference: results/runs -> results/, the README's results block and every "
                         "generated block in docs/")
    ap.add_argument("--readme", type=Path, default=None, help="also refresh the results block of this README")
    ap.add_argument("--docs", type=Path, action="append", default=None,
                    help="also rewrite the generated blocks (<!-- generated:rows ... -->) of this doc (repeatable)")
    ap.add_argument("--max-top1-drop", type=float, default=1.0, help="verdict: top-1 points an accepted row may lose")
    ap.add_argument("--max-ppl-increase-pct", type=float, default=1.0, help="verdict: perplexity increase, percent")
    ap.add_argument("--min-agreement", type=float, default=99.0, help="verdict: minimum agreement with FP32, percent")
    ap.add_argument("--min-sqnr-db", type=float, default=30.0,
                    help="verdict: classifiers' minimum logit SQNR against FP32, dB")
    args = ap.parse_args(argv)
    setup_logging()
    if args.publish:
        if args.runs_dir or args.out or args.readme or args.docs:
            raise SuiteError("--publish reads results/runs and writes results/, README.md and docs/; drop the others")
        args.runs_dir, args.out = [PUBLISHED_RUNS_DIR], RESULTS_DIR
        args.readme, args.docs = REPO_ROOT / "README.md", sorted((REPO_ROOT / "docs").rglob("*.md"))
    runs = args.runs_dir or [RUNS_DIR]
    crit = Criterion(args.max_top1_drop, args.max_ppl_increase_pct, args.min_agreement, args.min_sqnr_db)
    damaged: list = []
    try:
        aggregate(runs, report_dir_for(runs[0], args.out), args.readme, crit, args.docs, damaged)
    finally:  # also when no readable row is left (that error follows these lines)
        for path, why in damaged:
            where = "could not be read" if Path(path).exists() else f"moved to {Path(path).parent / 'damaged'}"
            print(f"error: damaged row file {path} ({why}): {where}, left out of the tables", file=sys.stderr)
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
