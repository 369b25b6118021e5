"""Calibration-size and batch-size sweeps: each point is an ordinary route run, so rows are written as usual.

    python3 -m evaluation.launch.sweep calib --toolchain onnxruntime --model resnet50 \\
        --sizes 16,32,64,128,256,512,1024 --methods minmax,entropy,percentile
    python3 -m evaluation.launch.sweep calib --toolchain torch --model resnet50 --methods fx
    python3 -m evaluation.launch.sweep batch --model resnet50 --toolchains torch,onnxruntime --batches 1,2,4,8,16,32,64

Stdlib only (like evaluation.bench): runs under the system Python, creates/reuses the virtualenvs
(evaluation/launch/envs.py) and runs `python -m quantization.<route>` in the toolchain's environment once per
calibration size (rows in results/sweeps/calib-<toolchain>-<model>/n<N>/, plus the FP32 baseline once in
.../baseline/) or once per toolchain with every batch (rows in results/sweeps/batch-<model>/). The plots
and CSVs are made in the report environment by `python -m evaluation.report.sweeps plot-calib` / `plot-batch` (not this
module (pandas, matplotlib, scipy imported there only). `train-size` is a helper the calib sweep runs in
the toolchain's environment to check every size against the train split before anything runs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from utils.cli import ArgParser, positive_float, positive_int
from utils.errors import SuiteError, cli_main
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.plan import Settings, build_plan, parse_methods
from utils.registry import MODELS, ORDER, TOOLCHAINS, check_choice, model_decl, parse_list, task_of

SWEEPS_DIR = LOCAL_DIR / "sweeps"  # a user's sweeps; --publish: results/sweeps and the plots in results/
# a calibration sweep runs every calibrating non-FP32 method of the toolchain by default, less the ones its declaration
# leaves out (Toolchain.calib_sweep_exclude, .uncalibrated); a batch sweep its declared batch_sweep_methods
DEFAULT_CALIB_SIZES = (16, 32, 64, 128, 256, 512, 1024)
# batch sweep: each model declares its default batches (models/catalog.py sweep_batches, bounded for a 2-core CPU)


def default_sweep_toolchains(sweep: str) -> tuple[str, ...]:
    """The toolchains a sweep ("calib", "batch") takes when no --toolchain(s) names one (Toolchain.default_sweeps)."""
    return tuple(t for t in ORDER if sweep in TOOLCHAINS[t].default_sweeps)


def _batch_defaults_text() -> str:
    return "; ".join(f"{t}: " + ", ".join(f"{task} {','.join(ms)}" for task, ms in TOOLCHAINS[t].batch_sweep_methods.items())
                     for t in default_sweep_toolchains("batch"))


def default_batch_methods(toolchain: str, model: str) -> tuple[str, ...]:
    """The methods a batch sweep runs by default: the declaration's for the model's task, else all of them."""
    tc = TOOLCHAINS[toolchain]
    return tc.batch_sweep_methods.get(task_of(model), tc.methods(model))


def say(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def int_list(kind: str, text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SuiteError(f"--{kind} must be a comma list of integers, got {text!r}") from None
    if not vals:
        raise SuiteError(f"--{kind} is empty")
    if any(v < 1 for v in vals):
        raise SuiteError(f"{kind} must be >= 1 (got {', '.join(str(v) for v in vals if v < 1)})")
    return tuple(sorted(set(vals)))


def calib_dir(toolchain: str, model: str, root: Path = SWEEPS_DIR) -> Path:
    return Path(root) / f"calib-{toolchain}-{model}"


def batch_dir(model: str, root: Path = SWEEPS_DIR) -> Path:
    return Path(root) / f"batch-{model}"


def default_calib_methods(toolchain: str, model: str) -> tuple[str, ...]:
    tc = TOOLCHAINS[toolchain]
    return tuple(m for m, p in tc.model_variants(model)
                 if p != "fp32" and m not in tc.calib_sweep_exclude and m not in tc.uncalibrated)


def source_flags(args) -> list[str]:
    out = ["--weights", args.weights]
    for flag, val in (("--weights-path", args.weights_path), ("--data", args.data)):
        if val is not None:
            out += [flag, str(val)]
    return out


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python3 -m evaluation.launch.sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, min_time: float, min_iters: int):
        p.add_argument("--model", default=MODELS[0], help=f"one of {', '.join(MODELS)}")
        p.add_argument("--models-file", default=None, metavar="FILE",
                       help="a Python file declaring more models (as the bench's --models-file)")
        p.add_argument("--weights", default="embedded", choices=("embedded", "pretrained"))
        p.add_argument("--weights-path", default=None)
        p.add_argument("--data", default=None)
        p.add_argument("--threads", type=positive_int, default=2)
        p.add_argument("--min-time", type=positive_float, default=min_time, help="minimum timed seconds per latency row")
        p.add_argument("--min-iters", type=positive_int, default=min_iters, help="minimum timed calls per latency row")
        p.add_argument("--devices", default="cpu", help="comma list of cpu,cuda")
        p.add_argument("--sweeps-dir", type=Path, default=None,
                       help="root of the sweep runs dirs (default results/local/sweeps; --publish: results/sweeps)")
        p.add_argument("--out", type=Path, default=None,
                       help="where the PNG and CSV go (default results/local/; --publish: results/)")
        p.add_argument("--publish", action="store_true",
                       help="the committed sweep: rows under results/sweeps, the PNG and CSV in results/")
        p.add_argument("--no-plot", action="store_true", help="only run the routes")
        p.add_argument("--plot-only", action="store_true", help="only (re)draw from existing rows")

    c = sub.add_parser("calib", help="accuracy vs calibration size, per method",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--toolchain", default=(default_sweep_toolchains("calib") or ORDER)[0], help=f"one of {', '.join(ORDER)}")
    c.add_argument("--sizes", default=",".join(map(str, DEFAULT_CALIB_SIZES)), help="calibration sizes (train split)")
    c.add_argument("--methods", default=None,
                   help="comma list (default: the toolchain's calibrating methods, less the ones it declares too slow "
                        "to repeat per size: " + "; ".join(f"{t}: {','.join(tc.calib_sweep_exclude)}" for t, tc in
                                                            TOOLCHAINS.items() if tc.calib_sweep_exclude) + ")")
    c.add_argument("--batches", default="1", help="latency batches per point (accuracy does not depend on it)")
    c.add_argument("--no-baseline", action="store_true", help="do not run the FP32 baseline once")
    common(c, 0.2, 2)

    b = sub.add_parser("batch", help="latency/throughput vs batch, per toolchain and method",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--toolchains", default=",".join(default_sweep_toolchains("batch")), help="comma list")
    b.add_argument("--batches", default=None, help="comma list (default: the model declaration's sweep batches: " +
                   "; ".join(f"{m} {','.join(map(str, model_decl(m).sweep_batches))}" for m in MODELS) + ")")
    b.add_argument("--methods", default=None,
                   help="comma list; each toolchain runs the ones it has (default: its declared batch-sweep methods "
                        f"for the model's task; {_batch_defaults_text()})")
    b.add_argument("--calib-samples", type=positive_int, default=None)
    common(b, 0.2, 2)

    ts = sub.add_parser("train-size", help="(toolchain env) print how many calibration samples the train split has")
    ts.add_argument("--model", required=True)
    ts.add_argument("--weights", default="embedded")
    ts.add_argument("--weights-path", default=None)
    ts.add_argument("--data", default=None)
    return ap


# ----------------------------------------------------------------------------- running routes

def _run(args, *, toolchains, methods, runs_dir: Path, batches, calib_samples=None) -> int:
    """One sweep point: a plan (the bench's builder) run route by route; 2 on bad input, 1 when something failed."""
    from evaluation.launch.routes import run_plan

    plan = build_plan(models=(args.model,), toolchains=toolchains, methods=methods, devices=args.devices,
                      batches=batches, calib_samples=calib_samples, settings=settings_of(args), runs_dir=runs_dir)
    if not plan.items:
        raise SuiteError(f"{', '.join(toolchains)}/{args.model}: the flags select no variant")
    out = run_plan(plan, who="sweep")
    if out.bad_input:
        return 2
    for f in out.failures:
        say(f)
    return 1 if out.failures else 0


def settings_of(args) -> Settings:
    return Settings(weights=args.weights, weights_path=args.weights_path, data=args.data, threads=args.threads,
                    min_time=args.min_time, min_iters=args.min_iters)


def _ensure(names) -> None:
    from evaluation.launch import envs

    for n in dict.fromkeys(names):
        try:
            envs.ensure_env(n)
        except envs.EnvError as exc:
            raise SuiteError(f"environment '{n}' unavailable: {exc}") from None


def probe_train_size(args, env: str) -> int:
    """Run `train-size` in a toolchain env (it has NumPy and the data code); SuiteError on failure."""
    import subprocess

    from evaluation.launch import envs

    cmd = ["-m", "evaluation.launch.sweep", "train-size", "--model", args.model, *source_flags(args)]
    proc = envs.run_in_env(env, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SuiteError(f"cannot size the train split of {args.model}: {last.removeprefix('error: ')}")
    return int(proc.stdout.strip().splitlines()[-1])


def run_calib(args) -> int:
    toolchain = check_choice("toolchain", args.toolchain, ORDER)
    model = check_choice("model", args.model, MODELS)
    tc = TOOLCHAINS[toolchain]
    if not tc.methods(model):
        raise SuiteError(f"toolchain {toolchain} has no {model} variants")
    valid = tc.methods(model)
    methods = parse_list("method", args.methods, valid) if args.methods else default_calib_methods(toolchain, model)
    fp32 = [m for m in methods if dict(tc.model_variants(model))[m] == "fp32"]
    if fp32:
        raise SuiteError(f"{', '.join(fp32)} is FP32 and does not calibrate; the baseline runs once by itself")
    uncal = [m for m in (methods or valid) if m in tc.uncalibrated]
    if uncal and (not methods or any(m in uncal for m in methods)):
        raise SuiteError(f"{toolchain}/{model}: {', '.join(uncal)} use(s) no calibration data; nothing to sweep"
                         + ("" if methods else " (the toolchain has no calibrating method for this model)"))
    if not methods:
        raise SuiteError(f"{toolchain}/{model} has no calibrating method to sweep")
    sizes = int_list("sizes", args.sizes)
    int_list("batches", args.batches)
    out_dir = calib_dir(toolchain, model, args.sweeps_dir)
    png = Path(args.out) / f"calib_sweep_{toolchain}_{model}.png"
    csv = Path(args.out) / f"calib_sweep_{toolchain}_{model}.csv"
    if not args.plot_only:
        base = tc.baseline if tc.baseline and not args.no_baseline else None
        _ensure([tc.env.name] + ([TOOLCHAINS[base[0]].env.name] if base else []))
        n_train = probe_train_size(args, tc.env.name)
        too_big = [s for s in sizes if s > n_train]
        if too_big:
            raise SuiteError(f"calibration size {', '.join(map(str, too_big))} is larger than the train split of "
                             f"{model} ({args.weights}): {n_train} calibration samples available; nothing was run")
        say(f"{toolchain}/{model}: methods {','.join(methods)}; sizes {','.join(map(str, sizes))} "
            f"(train split {n_train}); rows under {out_dir}")
        problems = []
        if base:
            btc, bmethod = base
            say(f"baseline {btc}/{bmethod} (once)")
            rc = _run(args, toolchains=(btc,), methods=(bmethod,), batches=args.batches,
                      runs_dir=out_dir / "baseline")
            if rc == 2:
                return 2
            if rc:
                problems.append(f"baseline exited {rc}")
        for n in sizes:
            say(f"{toolchain}/{model}: calibration size {n}")
            if _point(args, f"n{n}", problems, toolchains=(toolchain,), methods=tuple(methods), batches=args.batches,
                      calib_samples=n, runs_dir=out_dir / f"n{n}") == 2:
                return 2
        if problems:
            say("problems: " + "; ".join(problems))
    if not _plotting(args):
        return 0
    from evaluation.launch import envs

    rc = envs.run_in_env("report", ["-m", "evaluation.report.sweeps", "plot-calib", "--toolchain", toolchain, "--model", model,
                                    "--dir", str(out_dir), "--png", str(png), "--csv", str(csv)]).returncode
    return rc


def _point(args, label: str, problems: list[str], **run) -> int:
    """One sweep point (a route run, _run's keywords): its exit code, a problem line when it failed (the rows it wrote
    are kept), its time."""
    t0 = time.time()
    rc = _run(args, **run)
    if rc and rc != 2:
        problems.append(f"{label} exited {rc}")
    say(f"{label} done in {time.time() - t0:.0f} s" + (f" (exit {rc}; rows it wrote are kept)" if rc else ""))
    return rc


def _plotting(args) -> bool:
    """Whether the sweep draws its plot (then the report environment is ready)."""
    if args.no_plot:
        return False
    _ensure(["report"])
    return True


def run_batch(args) -> int:
    model = check_choice("model", args.model, MODELS)
    toolchains = parse_list("toolchain", args.toolchains, ORDER)
    batches = int_list("batches", args.batches) if args.batches else model_decl(model).sweep_batches
    if args.calib_samples is not None and args.calib_samples < 1:
        raise SuiteError(f"calibration size must be >= 1 (got {args.calib_samples})")
    wanted = parse_methods(args.methods)
    plan: dict[str, tuple[str, ...]] = {}
    for t in toolchains:
        tc = TOOLCHAINS[t]
        if not tc.methods(model):
            raise SuiteError(f"toolchain {t} has no {model} variants")
        have = tc.methods(model)
        plan[t] = tuple(m for m in have if m in (wanted or default_batch_methods(t, model)))
    if wanted:
        unknown = [m for m in wanted if not any(m in ms for ms in plan.values())]
        if unknown:
            raise SuiteError(f"method {', '.join(unknown)} is not a {model} method of {', '.join(toolchains)}; valid: "
                             + "; ".join(f"{t}: {','.join(TOOLCHAINS[t].methods(model))}" for t in toolchains))
    out_dir = batch_dir(model, args.sweeps_dir)
    png = Path(args.out) / f"batch_sweep_{model}.png"
    csv = Path(args.out) / f"batch_sweep_{model}.csv"
    if not args.plot_only:
        from evaluation.launch import envs

        problems = []
        for t, methods in plan.items():
            if not methods:
                say(f"{t}: no selected method")
                continue
            try:
                envs.ensure_env(TOOLCHAINS[t].env.name)
            except envs.EnvError as exc:
                problems.append(f"{t}: environment unavailable ({exc})")
                say(problems[-1])
                continue
            say(f"{t}/{model}: {','.join(methods)} at batches {','.join(map(str, batches))} -> {out_dir}")
            if _point(args, t, problems, toolchains=(t,), methods=tuple(methods), batches=batches,
                      calib_samples=args.calib_samples, runs_dir=out_dir) == 2:
                return 2
        if problems:
            say("problems: " + "; ".join(problems))
    if not _plotting(args):
        return 0
    from evaluation.launch import envs

    return envs.run_in_env("report", ["-m", "evaluation.report.sweeps", "plot-batch", "--model", model, "--dir", str(out_dir),
                                      "--png", str(png), "--csv", str(csv)]).returncode


# ----------------------------------------------------------------------------- helpers run in other envs

def train_size(args) -> int:
    """Calibration samples available to `load_data` for this model/weights (toolchain env: NumPy)."""
    from utils.specs import ModelSource

    source = ModelSource(args.model, args.weights, args.weights_path, args.data)
    if task_of(args.model) == "image-classification":
        if args.weights == "embedded":
            from utils.data import digits_splits

            return len(digits_splits()["train"])
        from utils.data import list_image_folder

        root = Path(args.data)
        if (root / "train").is_dir() and (root / "val").is_dir():
            return len(list_image_folder(root / "train")[0])
        return len(list_image_folder(root)[0]) - 1
    import numpy as np

    manifest = source.load_manifest()
    return int(np.load(Path(manifest["train_ids"]), mmap_mode="r").size // int(manifest["seq_len"]))


def _folders(args) -> None:
    """--publish: the committed folders; else the user's (git-ignored) ones."""
    if getattr(args, "publish", False):
        if args.sweeps_dir is not None or args.out is not None:
            raise SuiteError("--publish writes results/sweeps and results/; drop --sweeps-dir/--out")
        args.sweeps_dir, args.out = RESULTS_DIR / "sweeps", RESULTS_DIR
    else:
        args.sweeps_dir = args.sweeps_dir or SWEEPS_DIR
        args.out = args.out or LOCAL_DIR


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "models_file", None):
        if getattr(args, "publish", False):
            raise SuiteError("--publish covers the suite's declared models: drop --models-file")
        from models.catalog import use_models_file

        use_models_file(args.models_file)
    if args.cmd in ("calib", "batch"):
        _folders(args)
    if args.cmd == "calib":
        return run_calib(args)
    if args.cmd == "batch":
        return run_batch(args)
    if args.cmd == "train-size":
        print(train_size(args))
        return 0
    raise SuiteError(f"unknown command {args.cmd}")


if __name__ == "__main__":
    raise SystemExit(main())
