"""One GPU check: every GPU path this machine offers, through the bench with a short budget, and a summary.

    python3 -m evaluation.gpucheck               # run (rows -> results/gpu/runs, tables -> results/gpu/)
    python3 -m evaluation.gpucheck --dry-run     # the plan and the reasons known without running anything

Stdlib only. The GPU paths are the declared toolchains whose `devices` include "cuda" (utils/registry.py):
the torch route's cuda rows, the ONNX routes' CUDA/TensorRT execution providers (`--devices cuda`), the
TensorRT route and the Tripy route. Each runs through the bench (hence the kit) with a small --eval-limit,
--min-time and --batches. Where no NVIDIA driver can be loaded nothing is run: every planned row is written
`skipped` with that reason. The summary says what ran, what was skipped and why (from the rows), and what
failed; the exit code is non-zero only for failures (or bad input: 2), never for skips.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from evaluation import bench, envs
from utils.cli import ArgParser
from utils.errors import SuiteError, cli_main
from utils.paths import RESULTS_DIR
from utils.registry import MODELS, ORDER, TOOLCHAINS

GPU_DIR = RESULTS_DIR / "gpu"


def gpu_toolchains() -> list[str]:
    """Declared toolchains with a cuda device, in run order."""
    return [t for t in ORDER if "cuda" in TOOLCHAINS[t].devices]


def driver_missing() -> str | None:
    """Why no CUDA work can run here (no NVIDIA driver library), or None."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded): no CUDA GPU to run on"
    return None


def known_reasons(toolchain: str) -> list[str]:
    """What the environment's stamp already says (an optional GPU part that did not install), without running."""
    name = TOOLCHAINS[toolchain].env.name
    if name in envs.OVERRIDES:
        return [f"runs in {envs.OVERRIDES[name]}"]
    stamp = envs.read_stamp(name)
    if not stamp:
        return ["environment not created yet (made on the first run)"]
    out = [f"optional part {f} did not install: {why}" for f, why in (stamp.get("optional_failed") or {}).items()]
    if not envs.is_ready(name):
        out.append("environment out of date (remade on the next run)")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python3 -m evaluation.gpucheck", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="all", help=f"comma list or 'all': {', '.join(MODELS)}")
    ap.add_argument("--toolchains", default="all", help=f"comma list of GPU toolchains: {', '.join(gpu_toolchains())}")
    ap.add_argument("--eval-limit", default="64", help="evaluation samples per variant")
    ap.add_argument("--min-time", default="0.2", help="timed seconds per latency row")
    ap.add_argument("--batches", default="1", help="latency batches")
    ap.add_argument("--runs-dir", type=Path, default=GPU_DIR / "runs")
    ap.add_argument("--out", type=Path, default=None, help="tables (default: the folder holding --runs-dir)")
    ap.add_argument("--no-report", action="store_true", help="skip the tables")
    ap.add_argument("--python", action="append", default=[], metavar="ENV=PATH", help="as for the bench")
    ap.add_argument("--use-current-python", action="store_true", help="as for the bench")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the known reasons; run nothing")
    return ap


def bench_argv(args) -> list[str]:
    tcs = gpu_toolchains() if args.toolchains == "all" else [t for t in args.toolchains.split(",") if t]
    bad = [t for t in tcs if t not in gpu_toolchains()]
    if bad:
        raise SuiteError(f"not a GPU toolchain: {', '.join(bad)}; valid: {', '.join(gpu_toolchains())}")
    out = ["--models", args.models, "--toolchains", ",".join(tcs), "--devices", "cuda", "--eval-limit",
           str(args.eval_limit), "--min-time", str(args.min_time), "--min-iters", "3", "--batches", str(args.batches),
           "--runs-dir", str(args.runs_dir), "--no-ceilings"]
    if args.out is not None:
        out += ["--out", str(args.out)]
    if args.no_report:
        out.append("--no-report")
    for p in args.python:
        out += ["--python", p]
    if args.use_current_python:
        out.append("--use-current-python")
    return out


def plan(bargs, toolchains) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(toolchain, model, variants) the check would run on cuda."""
    from utils.registry import parse_list

    models = parse_list("model", bargs.models, MODELS)
    return [(t, m, list(bench._variants(bargs, t, m))) for t in toolchains for m in models
            if m in TOOLCHAINS[t].variants]


def summarize(rows) -> tuple[list[str], int]:
    """Lines saying what ran, what was skipped (grouped by reason) and what failed; and the failure count."""
    ran, skipped, failed = [], defaultdict(list), []
    seen = set()
    for r in sorted(rows, key=lambda r: (ORDER.index(r.toolchain), r.model, r.method, r.device, r.batch)):
        ident = (r.toolchain, r.model, r.method, r.device)
        if ident in seen:
            continue
        seen.add(ident)
        name = f"{r.toolchain}/{r.model}/{r.method} ({r.device})"
        if r.status == "ok":
            ran.append(f"  ran      {name}: {r.metric} {r.value:.4g}, p50 {r.latency_p50_ms:.3g} ms at b{r.batch} "
                       f"({r.latency_kind})" if r.latency_p50_ms is not None else f"  ran      {name}: {r.metric} {r.value:.4g}")
        elif r.status == "skipped":
            skipped[r.reason or "?"].append(name)
        else:
            failed.append(f"  FAILED   {name}: {r.reason}")
    lines = [f"{len(ran)} ran, {sum(map(len, skipped.values()))} skipped, {len(failed)} failed"] + ran
    for reason, names in skipped.items():
        lines.append(f"  skipped  {len(names)}: {reason}")
        lines.append(f"           {', '.join(names)}")
    return lines + failed, len(failed)


def write_skipped(bargs, toolchains, reason: str, run_id: str) -> None:
    for t, m, _ in plan(bargs, toolchains):
        bench.status_all(bargs, t, m, "skipped", reason, run_id)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bargv = bench_argv(args)
    bargs = bench.build_parser().parse_args(bargv)
    checked = bench.validate(bargs)  # every flag and path (exit 2, one line), interpreters included
    toolchains = list(checked["toolchains"])
    no_driver = driver_missing()
    steps = plan(bargs, toolchains)
    print(f"GPU check: {len(steps)} toolchain/model pairs on cuda; rows -> {bargs.runs_dir}")
    for t, m, vs in steps:
        print(f"  {t}/{m}: {', '.join(v for v, _ in vs)}")
    known = {t: known_reasons(t) for t in toolchains}
    for t, why in known.items():
        for w in why:
            print(f"  note {t}: {w}")
    if no_driver:
        print(f"  every row: {no_driver}")
    if args.dry_run:
        print("dry run: nothing was run")
        return 0
    if no_driver:
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
        write_skipped(bargs, toolchains, no_driver, run_id)
        rc = 0
        if not bargs.no_report:
            envs.ensure_env("report")
            rc = envs.run_in_env("report", ["-m", "evaluation.aggregate", "--runs-dir", str(bargs.runs_dir),
                                            "--out", str(checked["out"])]).returncode
    else:
        rc = bench.main(bargv)
        if rc == 2:
            return 2
        run_id = os.environ.get("SUITE_RUN_ID", "")
    from utils.rows import read_attempts, read_rows

    rows = [r for r in read_rows(bargs.runs_dir) + list(read_attempts(bargs.runs_dir).values())
            if r.environment.get("run_id") == run_id and r.toolchain in toolchains]
    lines, n_failed = summarize(rows)
    print("\nGPU check summary: " + "\n".join(lines))
    if rc != 0 and not n_failed:
        print(f"GPU check: the bench/report step exited {rc}")
    return 1 if (n_failed or rc != 0) else 0


if __name__ == "__main__":
    raise SystemExit(main())
