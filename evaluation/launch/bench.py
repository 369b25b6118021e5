"""The main job: every toolchain, each in its own environment, one side-by-side table.

    python3 -m evaluation.bench                      # offline embedded default, all toolchains -> results/local/
    python3 -m evaluation.bench --dry-run            # the plan: items, where each runs, estimated time; runs nothing
    python3 -m evaluation.bench --models resnet50 --toolchains torch --methods eager,fx --eval-limit 50
    python3 -m evaluation.bench --budget 600 --resume   # what fits in 10 minutes, skipping what is already done
    python3 -m evaluation.bench --weights pretrained --models resnet50 --data /data/imagenette2 --online
    python3 -m evaluation.bench --cluster local --models resnet50 --toolchains torch --methods eager,fx
    python3 -m evaluation.bench --publish            # the committed reference: results/runs, results/, README, docs

Stdlib only: it runs under the system Python. Every flag and path is checked, and the run plan built from the
declaration (utils/registry.py) and the flags, before anything is prepared or written (a bad one exits 2 with one
line). Then it creates/reuses the model-preparing toolchain's virtualenv and runs `models.prepare` there while the
other environments the run needs are created in the background (at most 2 pip installs at once); once every
creation has finished (nothing is timed while pip runs) it measures the device's ceilings, runs each route of the
plan in its own environment (`python -m quantization.kit <toolchain> --plan FILE`, the route's items only), in the
order the declarations' `needs` give, and the aggregation in the report environment. A toolchain whose
environment, library or hardware is missing yields `skipped` rows with the reason and the run goes on.

A user's run writes to results/local/ (git-ignored): rows in runs/, tables beside them. The published reference
(results/runs, results/*.csv|md|png, the README's results block and the generated blocks in docs/) changes only
with --publish, which refuses a tree with uncommitted code changes.

Nothing is lost: each variant's accuracy and fidelity are written as soon as it is scored, its latency columns
when its batch is timed; rows are written one file at a time, atomically; a failed, skipped or not-yet-timed row
never replaces an earlier finished ok row (it is kept beside it as the latest attempt). A route process that dies
gets `failed` rows for the planned items it did not finish, and only those. The exit code is non-zero when
preparation, a route, a variant or the report failed, and the last line says what.

With `--cluster ADDRESS` (`ray://host:port`, `auto` for RAY_ADDRESS, `local` for a throw-away local cluster) the
same plan goes through Ray: the bench checks the flags, then re-launches itself as `evaluation.launch.cluster` inside the
`ray` environment, where every (toolchain, model) route becomes a Ray task on a node offering a benchmark slot
(docs/scale-out.md).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from evaluation.launch import envs
from evaluation.launch.run import RUN_LOG, Checked, execute
from evaluation.launch.routes import driver_missing, estimates, fixed_seconds, narrow
from utils.cli import ArgParser, positive_float, positive_int
from utils.errors import SuiteError, cli_main
from utils.paths import PUBLISHED_RUNS_DIR, REPO_ROOT, RESULTS_DIR, RUNS_DIR, report_dir_for
from utils.plan import Settings, build_plan, describe, passes, routes_seconds
from utils.registry import (MODELS, ORDER, PREPARE_TOOLCHAIN, SOURCE_HELP, TOOLCHAINS, WEIGHTS, batches_example,
                             batches_text)

CLUSTER_ENV = "ray"  # the support environment (utils/registry.py SUPPORT_ENVS) the --cluster driver runs in


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python3 -m evaluation.bench", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="all",
                    help=f"comma list or 'all' (every declared model that has the --weights): {', '.join(MODELS)}")
    ap.add_argument("--models-file", default=None, metavar="FILE",
                    help="a Python file declaring your own models (MODELS = [ModelDecl(...)]: a torchvision classifier "
                         "or a Hugging Face causal LM with its data; docs/architecture.md, Adding a model); they join "
                         "the declared ones for this run and every process it starts")
    ap.add_argument("--toolchains", default="all", help=f"comma list or 'all': {', '.join(ORDER)}")
    opt_in = "; ".join(f"{t} on {tc.opt_in_text()}" for t, tc in TOOLCHAINS.items() if tc.opt_in_text())
    ap.add_argument("--methods", default=None,
                    help="comma list of methods (each toolchain runs those it has); the default runs every method "
                         "except the opt-in ones, which run only when named here" + (f" ({opt_in})" if opt_in else "") +
                         "; a method that differs from another only by calibration (utils/registry.py latency_twins, "
                         "e.g. ORT entropy/percentile) is timed at the smallest batch only unless named here")
    ap.add_argument("--batches", type=batches_arg, default=None,
                    help=f"comma list of latency batch sizes, or per model '{batches_example()}' (default per model: "
                         f"{batches_text()}; --weights random: {batches_text('random')})")
    ap.add_argument("--weights", default="embedded", choices=WEIGHTS,
                    help="embedded: offline default; pretrained: real weights (--weights-path/--data); random: the "
                         "real architectures randomly initialised (latency, size, memory; accuracy empty); methods "
                         "that differ from another only by calibration (utils/registry.py latency_twins, e.g. ORT "
                         "entropy/percentile) run only when --methods names them")
    ap.add_argument("--weights-path", default=None, help=SOURCE_HELP["weights_path"])
    ap.add_argument("--data", default=None, help=SOURCE_HELP["data"])
    ap.add_argument("--calib-samples", type=positive_int, default=None, help="calibration samples (default per model)")
    ap.add_argument("--eval-limit", type=positive_int, default=None,
                    help="cap on evaluation samples (rows are marked as subset rows); a cap above the data's size "
                         "scores all of it (said in the run's output)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--min-time", type=positive_float, default=1.0, help="minimum timed seconds per latency row")
    ap.add_argument("--min-iters", type=positive_int, default=20,
                    help="minimum timed trials per latency row (variant and baseline interleaved in each trial)")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help=f"where the rows (one JSON each) go (default: {RUNS_DIR.relative_to(REPO_ROOT)}, git-ignored; "
                         f"--publish: {PUBLISHED_RUNS_DIR.relative_to(REPO_ROOT)})")
    ap.add_argument("--out", type=Path, default=None,
                    help="where tables, plots and device.json go (default: the folder holding --runs-dir when it is "
                         "named 'runs', e.g. results/local/; else <runs-dir>-report)")
    ap.add_argument("--publish", "--update-readme", dest="publish", action="store_true",
                    help="write the committed reference: rows to results/runs, tables to results/, and rewrite the "
                         "README's results block and the generated blocks in docs/ (refused with uncommitted code "
                         "changes)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (items, where each runs, estimated seconds) and what --budget/--resume leave "
                         "out; create, prepare and write nothing")
    ap.add_argument("--repeats", type=positive_int, default=1,
                    help="run the plan N times, each pass its own route processes with the toolchains' order rotated; "
                         "every row is kept per pass (key suffix __r<pass>) and the table combines them: the median "
                         "p50, the between-run spread beside the within-run interval, and a speedup interval over both "
                         "(later passes reuse the first pass's scores and time again)")
    ap.add_argument("--resume", action="store_true",
                    help="skip the items that already have finished ok rows in --runs-dir for the same configuration "
                         "and code commit")
    ap.add_argument("--budget", type=positive_float, default=None, metavar="SECONDS",
                    help="run what fits in SECONDS, preparation included: each toolchain's FP32 baseline first, then "
                         "the declaration's order; no item starts that would not fit (estimates from earlier runs, "
                         "else conservative defaults); what is left out is said, not written as failed rows")
    ap.add_argument("--online", action="store_true", help="allow downloads (pretrained weights, datasets)")
    ap.add_argument("--no-report", action="store_true", help="skip the aggregation step")
    ap.add_argument("--ceilings", default=True, action=argparse.BooleanOptionalAction,
                    help="measure the device's matmul ceilings for the efficiency column (a few seconds)")
    ap.add_argument("--devices", default=None,
                    help="comma list of cpu,cuda: each toolchain runs the ones it declares; toolchains declaring none "
                         "of them are left out (default: every declared device; rows on a device missing here are "
                         "skipped with the reason)")
    ap.add_argument("--python", action="append", default=[], metavar="ENV=PATH",
                    help="run environment ENV (a toolchain's, or report) with an existing interpreter that already "
                         "holds its packages, e.g. torch=/usr/bin/python3: no venv is created; its declared modules "
                         "are checked first (repeatable)")
    ap.add_argument("--use-current-python", action="store_true",
                    help="every selected toolchain runs in the interpreter running the bench (no venvs); "
                         "--python ENV=PATH still wins for ENV")
    ap.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="run the routes as Ray tasks: ray://host:port, 'auto' (RAY_ADDRESS / the local node's "
                         "cluster) or 'local' (start a throw-away local cluster); see docs/scale-out.md")
    ap.add_argument("--retries", type=int, default=1,
                    help="--cluster: attempts after the first for a route whose node died or whose process crashed")
    return ap


def batches_arg(text: str) -> str:
    """--batches checked at parse time (a bad list is one line, exit 2), kept as text for the plan."""
    from utils.plan import parse_batches

    try:
        parse_batches(text)
    except SuiteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def check_cluster_address(addr: str) -> str:
    if addr in ("local", "auto") or (addr.startswith("ray://") and len(addr) > len("ray://")):
        return addr
    if ":" in addr and not addr.startswith(("http://", "https://", "/")):  # host:port of a running head (GCS)
        return addr
    raise SuiteError(f"--cluster {addr!r}: pass ray://HOST:PORT, HOST:PORT, 'auto' or 'local'")


def report_dir(runs_dir: Path, out: Path | None) -> Path:
    return report_dir_for(runs_dir, out)


def _writable(path: Path, what: str) -> None:
    """`path` (or the nearest existing parent it would be created in) must be a writable folder."""
    p = path
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise SuiteError(f"{what} {path}: {p} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise SuiteError(f"{what} {path} is not writable (no write permission on {p}); pass another folder")


REPORT_FILES = ("device.json", RUN_LOG, "summary.csv", "summary.md", "accuracy_vs_latency.png")


def _outputs_are_files(out: Path) -> None:
    """A file the run will write that exists as something else (a folder) fails now, not after the work."""
    for name in REPORT_FILES:
        p = out / name
        if p.exists() and not p.is_file():
            raise SuiteError(f"{p} exists and is not a file (the run writes it): move it away or pass another --out")


def code_changes() -> list[str]:
    """Tracked files with uncommitted changes outside what a publish writes (results/, README.md, docs/)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results",
                              ":!README.md", ":!docs"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln[3:] for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else []


def settings_of(args) -> Settings:
    return Settings(weights=args.weights, weights_path=args.weights_path, data=args.data, eval_limit=args.eval_limit,
                    threads=args.threads, min_time=args.min_time, min_iters=args.min_iters)


PROBE = "probe"


def validate(args, device_missing: str | None = PROBE) -> Checked:
    """Every flag and path checked, and the plan built, before anything is created, prepared or written;
    SuiteError -> exit 2. `device_missing`: why cuda items cannot run here, for the estimates ("probe": look for an
    NVIDIA driver; None: plan as on a machine with a GPU)."""
    from utils.specs import ModelSource

    if args.publish:
        if args.runs_dir is not None or args.out is not None:
            raise SuiteError("--publish writes the committed reference (results/runs, results/); drop --runs-dir/--out")
        if args.eval_limit is not None:
            raise SuiteError("--publish takes no --eval-limit: the reference is scored on every evaluation sample")
        changed = code_changes()
        if changed and not args.dry_run:
            raise SuiteError(f"--publish needs committed code (the rows record the commit they measured); uncommitted "
                             f"changes: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}")
        args.runs_dir, args.out = PUBLISHED_RUNS_DIR, RESULTS_DIR
    elif args.runs_dir is None:
        args.runs_dir = RUNS_DIR
    if args.models_file:
        if args.publish:
            raise SuiteError("--publish covers the suite's declared models: drop --models-file")
        from models.catalog import use_models_file

        use_models_file(args.models_file)
    plan = build_plan(models=args.models, toolchains=args.toolchains, methods=args.methods, devices=args.devices,
                      batches=args.batches, calib_samples=args.calib_samples, settings=settings_of(args),
                      runs_dir=args.runs_dir)
    if not plan.items:
        raise SuiteError("the flags select no variant: nothing to run")
    from utils.inputs import check_calibration

    for m in plan.models():
        src = ModelSource(m, args.weights, args.weights_path, args.data)  # weights/data combination
        check_calibration(m, args.weights, plan.calib_samples()[m], src.cache_dir)
    if args.weights_path and (os.sep in args.weights_path or Path(args.weights_path).exists()):
        p = Path(args.weights_path)
        if not p.exists():
            raise SuiteError(f"--weights-path {p} does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise SuiteError(f"--weights-path {p} is an empty file (0 bytes): pass a saved state dict")
        if p.is_dir() and not (p / "config.json").is_file():
            raise SuiteError(f"--weights-path {p} is a folder without config.json (save the model with "
                             "save_pretrained, or pass a state-dict file for a classifier)")
    if args.data and args.data != "wikitext-2":
        from utils.inputs import check_data

        for m in plan.models():
            check_data(m, Path(args.data), plan.calib_samples()[m], args.weights_path)
    if args.cluster is not None:
        check_cluster_address(args.cluster)
    if args.retries < 0 or args.retries > 10:
        raise SuiteError(f"--retries {args.retries}: pass 0 to 10")
    out = report_dir(args.runs_dir, args.out)
    _writable(args.runs_dir, "--runs-dir")
    _writable(out, "report folder")
    _outputs_are_files(out)
    check_interpreters(args, plan.toolchains())
    est = estimates(args.runs_dir)
    missing = (driver_missing() if device_missing == PROBE else device_missing) \
        if any(it.device == "cuda" for it in plan.items) else None
    fixed, lines = fixed_seconds(plan, needed_envs(args, plan.toolchains()), ceilings=args.ceilings,
                                 report=not args.no_report)
    if args.repeats > 1 and args.budget is not None:
        raise SuiteError("--budget plans one pass; run --repeats without it (or several budgeted runs with --resume)")
    runs = [narrow(p, resume=args.resume, budget=args.budget, fixed_s=fixed, device_missing=missing, est=est)
            for p in passes(plan, args.repeats)]
    whole = plan.subset([it for p in runs for it in p.items])
    whole.left_out = [lo for p in runs for lo in p.left_out]
    return Checked(plan=whole, out=out, est=est, fixed_s=fixed, fixed_lines=lines, device_missing=missing,
                   passes=runs)


def needed_envs(args, toolchains) -> list[str]:
    """The environments this run uses: the model-preparing one, each toolchain's, the report's."""
    names = [TOOLCHAINS[PREPARE_TOOLCHAIN].env.name, *(TOOLCHAINS[t].env.name for t in toolchains)]
    return list(dict.fromkeys(names + ([] if args.no_report else ["report"])))


def check_interpreters(args, toolchains, extra: tuple[str, ...] = ()) -> dict:
    """--python / --use-current-python: set the interpreters, and check each needed one holds its declared modules
    (one line, exit 2, before anything runs)."""
    needed = needed_envs(args, toolchains)
    tc_envs = [n for n in needed if n != "report"]
    try:
        overrides = envs.parse_python_flags(args.python, args.use_current_python, tc_envs)
    except envs.EnvError as exc:
        raise SuiteError(str(exc)) from None
    for name in needed:
        if name in overrides:
            why = envs.missing_imports(name, extra)
            if why:
                raise SuiteError(why + ("; or select fewer --toolchains" if args.use_current_python else ""))
    return overrides


def where(args) -> dict[str, str]:
    """toolchain -> where its route process runs (for the printed plan)."""
    out = {}
    for t, tc in TOOLCHAINS.items():
        name = tc.env.name
        if args.cluster is not None:
            out[t] = f"Ray task on a node with a bench slot{' and a GPU' if set(tc.devices) == {'cuda'} else ''}"
        elif name in envs.OVERRIDES:
            out[t] = f"existing interpreter {envs.OVERRIDES[name]}"
        else:
            out[t] = f"{envs.env_python(name)}" + ("" if envs.is_ready(name) else " (created first)")
    return out


def estimated_seconds(checked: Checked) -> float:
    """The whole run's estimate: its routes and its fixed costs."""
    return routes_seconds(checked.plan, checked.est, checked.device_missing) + checked.fixed_s


def print_plan(args, checked: Checked) -> None:
    lines = describe(checked.plan, checked.est, where(args), checked.device_missing)
    print("\n".join(lines[:len(lines) - len(checked.plan.left_out)]))
    print("\n".join(checked.fixed_lines))
    total = estimated_seconds(checked)
    print(f"total: ~{total:.0f} s ({total / 60:.1f} min)" + (f" of a {args.budget:.0f} s budget" if args.budget else ""))
    if checked.plan.left_out:
        print(f"left out: {len(checked.plan.left_out)} item(s)")
        for lo in checked.plan.left_out:
            print(f"  {lo['item']}: {lo['why']}")
    if checked.device_missing:
        print(f"cuda items: {checked.device_missing} (their rows are skipped with the reason)")


def relaunch_in_cluster_env(argv: list[str]) -> int:
    """--cluster: the Ray driver runs in its own environment (Ray is no system-Python dependency of the bench)."""
    try:
        envs.ensure_env(CLUSTER_ENV)
    except envs.EnvError as exc:
        raise SuiteError(f"--cluster needs the {CLUSTER_ENV} environment: {exc}") from None
    proc = envs.popen_in_env(CLUSTER_ENV, ["-m", "evaluation.launch.cluster", *argv])
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the driver cancels its tasks and writes nothing more; give it time to do so
        try:  # a terminal's Ctrl-C reached it too; a signal sent to this process alone is passed on
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    checked = validate(args)
    if args.dry_run:
        print_plan(args, checked)
        print("dry run: nothing was created, prepared or written")
        return 0
    if args.cluster is not None:
        return relaunch_in_cluster_env(argv)
    return execute(args, checked, argv)


if __name__ == "__main__":
    raise SystemExit(main())
