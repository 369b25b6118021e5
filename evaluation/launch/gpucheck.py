"""One GPU check: every GPU path this machine offers, through the bench's plan with a time budget, and a summary.

    python3 -m evaluation.launch.gpucheck                     # run (rows -> results/local/gpu/runs, tables beside them)
    python3 -m evaluation.launch.gpucheck --dry-run --budget 240   # the plan, what fits, what is left out and why
    python3 -m evaluation.launch.gpucheck --publish           # the committed GPU reference: results/gpu/

Stdlib only. The GPU paths are the declared toolchains whose `devices` include "cuda" (utils/registry.py): the
torch route's cuda rows, the ONNX routes' CUDA/TensorRT execution providers, the TensorRT route and the Tripy
route. The check is one run plan (the bench's): `--weights random` (the real ResNet50 and GPT-2 shapes, no
training: preparation is an ONNX export) on `--devices cuda`, each toolchain's FP32 baseline first, within
`--budget` seconds, preparation included (default 240: a 5-minute lease with time to start and copy back).
Rows are written as they are produced, so a lease that ends early keeps what was scored and timed. Where embedded
models are already prepared, the time left scores their accuracy on cuda too. Where no NVIDIA driver can be loaded
nothing is run: every planned row is written `skipped` with that reason. The summary says what ran, what was
skipped and why, what failed, and what the budget left out; the exit code is non-zero only for failures (or bad
input: 2), never for skips.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from evaluation.launch import bench, envs, run
from evaluation.launch.routes import driver_missing, item_summary, status_items
from utils.cli import ArgParser, positive_float
from utils.errors import SuiteError, cli_main
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.plan import new_run_id
from utils.registry import MODELS, ORDER, TOOLCHAINS

GPU_DIR = RESULTS_DIR / "gpu"  # the published GPU reference (--publish)
LOCAL_GPU_DIR = LOCAL_DIR / "gpu"
DEFAULT_BUDGET_S = 240.0


def gpu_toolchains() -> list[str]:
    """Declared toolchains with a cuda device, in run order."""
    return [t for t in ORDER if "cuda" in TOOLCHAINS[t].devices]


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
    ap = ArgParser(prog="python3 -m evaluation.launch.gpucheck", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="all", help=f"comma list or 'all': {', '.join(MODELS)}")
    ap.add_argument("--toolchains", default="all", help=f"comma list of GPU toolchains: {', '.join(gpu_toolchains())}")
    ap.add_argument("--methods", default=None, help="comma list (default: each toolchain's cuda methods)")
    ap.add_argument("--budget", type=positive_float, default=DEFAULT_BUDGET_S,
                    help="seconds for the whole check, preparation included (each toolchain's FP32 baseline first)")
    ap.add_argument("--eval-limit", default="64", help="evaluation samples per variant")
    ap.add_argument("--min-time", default="0.2", help="timed seconds per latency row")
    ap.add_argument("--min-iters", default="10", help="minimum timed trials per latency row")
    ap.add_argument("--batches", default="resnet50=1,32;gpt2=1,8", help="latency batches (as the bench's --batches)")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help=f"rows (default {(LOCAL_GPU_DIR / 'runs').relative_to(LOCAL_DIR.parent.parent)}; "
                         "--publish: results/gpu/runs)")
    ap.add_argument("--out", type=Path, default=None, help="tables (default: the folder holding --runs-dir)")
    ap.add_argument("--publish", action="store_true", help="write the committed GPU reference under results/gpu/")
    ap.add_argument("--no-report", action="store_true", help="skip the tables")
    ap.add_argument("--no-accuracy", action="store_true",
                    help="leave out the accuracy rows of already-prepared embedded models")
    ap.add_argument("--python", action="append", default=[], metavar="ENV=PATH", help="as for the bench")
    ap.add_argument("--use-current-python", action="store_true", help="as for the bench")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, what fits and the known reasons; run nothing")
    return ap


def _toolchains(args) -> list[str]:
    tcs = gpu_toolchains() if args.toolchains == "all" else [t.strip() for t in args.toolchains.split(",") if t.strip()]
    bad = [t for t in tcs if t not in gpu_toolchains()]
    if bad:
        raise SuiteError(f"not a GPU toolchain: {', '.join(bad)}; valid: {', '.join(gpu_toolchains())}")
    return tcs


def bench_argv(args, weights: str, budget: float, runs_dir: Path, models: str | None = None) -> list[str]:
    """The bench flags of one phase of the check (the bench builds the plan from them)."""
    batches = args.batches
    out = ["--models", models or args.models, "--toolchains", ",".join(_toolchains(args)), "--devices", "cuda",
           "--weights", weights, "--eval-limit", str(args.eval_limit), "--min-time", str(args.min_time),
           "--min-iters", str(args.min_iters), "--batches", batches, "--runs-dir", str(runs_dir),
           "--budget", f"{budget:.0f}"]  # ceilings: the GPU's alone (a cuda-only plan), for the efficiency column
    if args.methods:
        out += ["--methods", args.methods]
    if args.out is not None:
        out += ["--out", str(args.out)]
    if args.no_report:
        out.append("--no-report")
    for p in args.python:
        out += ["--python", p]
    if args.use_current_python:
        out.append("--use-current-python")
    return out


def prepared_embedded(models: str) -> str | None:
    """The comma list of selected models whose embedded weights are already prepared (no training here), or None."""
    from utils.registry import parse_list
    from utils.specs import ModelSource

    ready = [m for m in parse_list("model", models, MODELS) if ModelSource(m, "embedded").manifest_path.is_file()]
    return ",".join(ready) or None


def phases(args, runs_dir: Path) -> list[tuple[str, list[str]]]:
    """(what, bench argv) of each phase: latency on random weights, then accuracy of prepared embedded models."""
    out = [("latency (random weights)", bench_argv(args, "random", args.budget, runs_dir))]
    ready = None if args.no_accuracy else prepared_embedded(args.models)
    if ready:
        out.append(("accuracy (embedded models already prepared)",
                    bench_argv(args, "embedded", args.budget, runs_dir, models=ready)))
    return out


def _with_budget(bargv: list[str], seconds: float) -> list[str]:
    i = bargv.index("--budget")
    return bargv[:i] + ["--budget", f"{seconds:.0f}"] + bargv[i + 2:]


def summarize(rows, left_out: list[str]) -> tuple[list[str], int]:
    """Lines saying what ran, what was skipped (grouped by reason), what failed and what the budget left out; and
    the failure count."""
    ran, skipped, failed = [], defaultdict(list), []
    seen = set()
    for r in sorted(rows, key=lambda r: (ORDER.index(r.toolchain), r.model, r.weights, r.method, r.device, r.batch)):
        ident = (r.toolchain, r.model, r.weights, r.method, r.device)
        if ident in seen:
            continue
        seen.add(ident)
        name = f"{r.toolchain}/{r.model}/{r.method} ({r.device}, {r.weights})"
        if r.status == "ok":
            what = f"{r.metric} {r.value:.4g}" if r.value is not None else "latency"
            lat = (f", p50 {r.latency_p50_ms:.3g} ms at b{r.batch} ({r.latency_kind})" if r.latency_p50_ms is not None
                   else ", not timed" if r.pending else "")
            ran.append(f"  ran      {name}: {what}{lat}")
        elif r.status == "skipped":
            skipped[r.reason or "?"].append(name)
        else:
            failed.append(f"  FAILED   {name}: {r.reason}")
    lines = [f"{len(ran)} ran, {sum(map(len, skipped.values()))} skipped, {len(failed)} failed, "
             f"{len(left_out)} left out by the budget"] + ran
    for reason, names in skipped.items():
        lines.append(f"  skipped  {len(names)}: {reason}")
        lines.append(f"           {', '.join(names)}")
    for lo in left_out:
        lines.append(f"  left out {lo}")
    return lines + failed, len(failed)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.publish and (args.runs_dir is not None or args.out is not None):
        raise SuiteError("--publish writes results/gpu/; drop --runs-dir/--out")
    runs_dir = args.runs_dir or ((GPU_DIR if args.publish else LOCAL_GPU_DIR) / "runs")
    if args.publish:
        changed = bench.code_changes()
        if changed and not args.dry_run:
            raise SuiteError(f"--publish needs committed code; uncommitted changes: {', '.join(changed[:5])}")
    no_driver = driver_missing()
    steps, left = [], args.budget
    for what, bargv in phases(args, runs_dir):
        bargv = _with_budget(bargv, left)
        bargs = bench.build_parser().parse_args(bargv)
        # every flag and path (exit 2, one line); planned as on a GPU machine, so a dry run here shows what would fit
        checked = bench.validate(bargs, device_missing=None)
        steps.append((what, bargs, bargv, checked))
        left = max(1.0, left - bench.estimated_seconds(checked))  # a later phase plans with what this one leaves
    print(f"GPU check: budget {args.budget:.0f} s, preparation included; rows -> {runs_dir}")
    for what, bargs, _, checked in steps:
        print(f"\n== {what}")
        bench.print_plan(bargs, checked)
    for t in _toolchains(args):
        for w in known_reasons(t):
            print(f"  note {t}: {w}")
    if no_driver:
        print(f"  every row: {no_driver}")
    if args.dry_run:
        print("dry run: nothing was run")
        return 0
    t0 = time.time()
    rc, run_ids, plans = 0, [], []
    for i, (what, bargs, bargv, checked) in enumerate(steps):
        if no_driver:
            run_id = new_run_id()
            checked.plan.run_id = run_id
            status_items(checked.plan, checked.plan.items, "skipped", no_driver, run_id=run_id)
            run_ids.append(run_id)
            plans.append(checked.plan)
            continue
        left = args.budget - (time.time() - t0)
        if i > 0:  # the accuracy phase gets what the latency phase left
            if left < 30:
                print(f"GPU check: {what} left out: {left:.0f} s of the budget left")
                break
            bargv = _with_budget(bargv, left)
            bargs = bench.build_parser().parse_args(bargv)
            checked = bench.validate(bargs, device_missing=None)
        print(f"\nGPU check: {what}")
        prc = run.execute(bargs, checked, bargv, who="gpucheck")
        if prc == 2:
            return 2
        rc = rc or prc
        run_ids.append(checked.plan.run_id)
        plans.append(checked.plan)
    if no_driver and not args.no_report:
        envs.ensure_env("report")
        out = bench.report_dir(runs_dir, args.out)
        rc = envs.run_in_env("report", ["-m", "evaluation.report.aggregate", "--runs-dir", str(runs_dir),
                                        "--out", str(out)]).returncode
    from utils.rows import read_attempts, read_rows

    rows = [r for r in read_rows(runs_dir) + list(read_attempts(runs_dir).values())
            if r.environment.get("run_id") in run_ids and r.toolchain in _toolchains(args)]
    left_out = [x for p, rid in zip(plans, run_ids) for x in item_summary(p, rid)[1]]
    lines, n_failed = summarize(rows, left_out)
    print("\nGPU check summary: " + "\n".join(lines))
    if rc != 0 and not n_failed:
        print(f"GPU check: the bench/report step exited {rc}")
    return 1 if (n_failed or rc != 0) else 0


if __name__ == "__main__":
    raise SystemExit(main())
