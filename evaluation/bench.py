"""The main job: every toolchain, each in its own environment, one side-by-side table.

    python3 -m evaluation.bench                      # offline embedded default, all toolchains
    python3 -m evaluation.bench --models resnet50 --toolchains torch,onnxruntime
    python3 -m evaluation.bench --weights pretrained --models resnet50 --data /data/imagenette2 --online

Stdlib only: it runs under the system Python, creates/reuses the virtualenvs (evaluation/envs.py),
runs `models.prepare` in the torch env, each route in its own env, and the aggregation in the
report env. A toolchain whose environment cannot be created, or whose library or hardware is
missing, yields `skipped` rows with the reason and the run goes on. Rows are written one file
at a time, atomically; the tables are rewritten atomically at the end, so an interrupted run
leaves earlier rows and tables intact.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from evaluation import envs
from utils.errors import SuiteError, cli_main
from utils.paths import REPO_ROOT, RUNS_DIR
from utils.registry import DEFAULT_BATCHES, METRIC, MODELS, ORDER, TOOLCHAINS, parse_list
from utils.rows import status_rows, write_row

DATASET = {("resnet50", "embedded"): "sklearn-digits-16px", ("gpt2", "embedded"): "pydoc-topics"}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m evaluation.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="all", help=f"comma list or 'all': {', '.join(MODELS)}")
    ap.add_argument("--toolchains", default="all", help=f"comma list or 'all': {', '.join(ORDER)}")
    ap.add_argument("--weights", default="embedded", choices=("embedded", "pretrained"))
    ap.add_argument("--weights-path", default=None, help="pretrained: ResNet50 state-dict file or GPT-2 hub id/dir")
    ap.add_argument("--data", default=None, help="pretrained: ImageNet-layout folder (resnet50); wikitext-2 or a text file (gpt2)")
    ap.add_argument("--calib-samples", type=int, default=None, help="calibration samples (default per model)")
    ap.add_argument("--eval-limit", type=int, default=None, help="cap on evaluation samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="minimum timed seconds per latency row")
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    ap.add_argument("--online", action="store_true", help="allow downloads (pretrained weights, datasets)")
    ap.add_argument("--no-report", action="store_true", help="skip the aggregation step")
    return ap


def route_args(args, model: str) -> list[str]:
    out = ["--model", model, "--weights", args.weights, "--threads", str(args.threads), "--min-time",
           str(args.min_time), "--min-iters", str(args.min_iters), "--runs-dir", str(args.runs_dir)]
    for flag, val in (("--weights-path", args.weights_path), ("--data", args.data),
                      ("--calib-samples", args.calib_samples), ("--eval-limit", args.eval_limit)):
        if val is not None:
            out += [flag, str(val)]
    return out


def skip_all(args, toolchain: str, model: str, status: str, reason: str) -> None:
    tc = TOOLCHAINS[toolchain]
    dataset = DATASET.get((model, args.weights), str(args.data))
    device = "cuda" if toolchain in ("tensorrt",) else "cpu"
    for row in status_rows(status=status, reason=reason, model=model, weights=args.weights, dataset=dataset,
                           toolchain=toolchain, variants=tc.variants[model], device=device,
                           batches=DEFAULT_BATCHES[model], metric=METRIC[model]):
        write_row(row, args.runs_dir)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models = parse_list("model", args.models, MODELS)
    toolchains = parse_list("toolchain", args.toolchains, ORDER)
    if args.calib_samples is not None and args.calib_samples < 1:
        raise SuiteError(f"calibration size must be >= 1 (got {args.calib_samples})")
    if args.online:
        os.environ["SUITE_ONLINE"] = "1"
        os.environ.setdefault("HF_HUB_OFFLINE", "0")
    t_start = time.time()
    failures: list[str] = []

    # 1. prepare every model in the torch env (train/load, tokenise, export ONNX, count ops, ceilings)
    prepared: dict[str, str] = {}
    try:
        envs.ensure_env("torch")
        prep = ["-m", "models.prepare", "--model", ",".join(models), "--weights", args.weights, "--ceilings",
                "--threads", str(args.threads)]
        for flag, val in (("--weights-path", args.weights_path), ("--data", args.data)):
            if val is not None:
                prep += [flag, val]
        say(f"preparing {', '.join(models)} ({args.weights}) in the torch environment")
        rc = envs.run_in_env("torch", prep).returncode
        if rc == 2:
            return 2  # bad input: the one-line error is already printed
        if rc != 0:
            raise SuiteError(f"models.prepare exited {rc}")
        prepared = {m: "ok" for m in models}
    except (envs.EnvError, SuiteError) as exc:
        reason = f"model preparation failed: {exc}"
        say(reason)
        prepared = {m: reason for m in models}

    # 2. each toolchain in its own env
    for tc_name in toolchains:
        tc = TOOLCHAINS[tc_name]
        todo = [m for m in models if m in tc.variants]
        if not todo:
            continue
        try:
            envs.ensure_env(tc.env)
        except envs.EnvError as exc:
            say(f"{tc_name}: environment unavailable: {exc}")
            for m in todo:
                skip_all(args, tc_name, m, "skipped", f"environment could not be created: {exc}")
            continue
        for m in todo:
            if prepared[m] != "ok":
                skip_all(args, tc_name, m, "skipped", prepared[m])
                continue
            say(f"{tc_name}: {m}")
            t0 = time.time()
            proc = envs.run_in_env(tc.env, ["-m", tc.module, *route_args(args, m)])
            if proc.returncode == 2:
                return 2  # bad input (already reported in one line)
            if proc.returncode != 0:
                failures.append(f"{tc_name}/{m} exited {proc.returncode}")
                say(f"{tc_name}: {m} exited {proc.returncode} (rows it wrote are kept)")
            else:
                say(f"{tc_name}: {m} done in {time.time() - t0:.0f} s")

    # 3. tables and plots
    if not args.no_report:
        try:
            envs.ensure_env("report")
            agg = ["-m", "evaluation.aggregate", "--runs-dir", str(args.runs_dir)]
            if Path(args.runs_dir).resolve() == RUNS_DIR.resolve():
                agg += ["--readme", str(REPO_ROOT / "README.md")]
            rc = envs.run_in_env("report", agg).returncode
            if rc != 0:
                failures.append(f"aggregate exited {rc}")
        except envs.EnvError as exc:
            failures.append(f"report environment: {exc}")
    say(f"finished in {time.time() - t_start:.0f} s" + (f"; problems: {'; '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
