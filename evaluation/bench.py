"""The main job: every toolchain, each in its own environment, one side-by-side table.

    python3 -m evaluation.bench                      # offline embedded default, all toolchains
    python3 -m evaluation.bench --models resnet50 --toolchains torch --methods eager,fx --eval-limit 50
    python3 -m evaluation.bench --weights pretrained --models resnet50 --data /data/imagenette2 --online
    python3 -m evaluation.bench --cluster local --models resnet50 --toolchains torch --methods eager,fx

Stdlib only: it runs under the system Python. Every flag and path is checked before anything is
prepared or written (a bad one exits 2 with one line). Then it creates/reuses the model-preparing
toolchain's virtualenv and runs `models.prepare` there while the other environments the run needs are
created in the background (at most 2 pip installs at once); once every creation has finished (nothing
is timed while pip runs) it measures the device's ceilings, runs each route through the kit
(`python -m quantization.kit <toolchain>`) in its own environment, in the order the declarations'
`needs` give, and the aggregation in the report environment. A toolchain whose environment,
library or hardware is missing yields `skipped` rows with the reason and the run goes on.

No result is lost: rows are written one file at a time, atomically; a failed or skipped row never
replaces an earlier ok row; a route process that dies (a signal, the out-of-memory killer) gets
`failed` rows for every variant it did not finish. The exit code is non-zero when preparation,
a route or a variant failed, and the last line says what. The tables go next to the rows
(`results/` for the default `results/runs`); the README's results block is rewritten only with
`--update-readme`.

With `--cluster ADDRESS` (`ray://host:port`, `auto` for RAY_ADDRESS, `local` for a throw-away local cluster) the
same run goes through Ray: the bench checks the flags, then re-launches itself as `evaluation.cluster` inside the
`ray` environment, where every (toolchain, model) route becomes a Ray task on a node offering a benchmark slot
(docs/scale-out.md).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from evaluation import envs
from utils.cli import ArgParser, int_list_text, positive_float, positive_int
from utils.errors import SuiteError, cli_main
from utils.paths import REPO_ROOT, RESULTS_DIR, RUNS_DIR
from utils.registry import DEFAULT_BATCHES, default_batches, METRIC, MODELS, ORDER, PREPARE_TOOLCHAIN, TOOLCHAINS, WEIGHTS, parse_list
from utils.rows import ResultRow, read_attempts, read_rows, status_rows, write_row


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python3 -m evaluation.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="all", help=f"comma list or 'all': {', '.join(MODELS)}")
    ap.add_argument("--toolchains", default="all", help=f"comma list or 'all': {', '.join(ORDER)}")
    opt_in = "; ".join(f"{t} on {tc.opt_in_text()}" for t, tc in TOOLCHAINS.items() if tc.opt_in_text())
    ap.add_argument("--methods", default=None,
                    help="comma list of methods (each toolchain runs those it has); the default runs every method "
                         "except the opt-in ones, which run only when named here" + (f" ({opt_in})" if opt_in else "") +
                         "; a method that differs from another only by calibration (utils/registry.py latency_twins, "
                         "e.g. ORT entropy/percentile) is timed at the smallest batch only unless named here")
    ap.add_argument("--batches", type=int_list_text, default=None,
                    help="comma list of latency batch sizes (default per model: " +
                         "; ".join(f"{m} {','.join(map(str, b))}" for m, b in DEFAULT_BATCHES.items()) +
                         "; --weights random: " + "; ".join(f"{m} {','.join(map(str, default_batches(m, 'random')))}"
                                                           for m in DEFAULT_BATCHES) + ")")
    ap.add_argument("--weights", default="embedded", choices=WEIGHTS,
                    help="embedded: offline default; pretrained: real weights (--weights-path/--data); random: the "
                         "real architectures randomly initialised (latency, size, memory; accuracy empty); methods that differ from another only "
                         "by calibration (utils/registry.py latency_twins, e.g. ORT entropy/percentile) run only when "
                         "--methods names them")
    ap.add_argument("--weights-path", default=None, help="pretrained: ResNet50 state-dict file or GPT-2 hub id/dir")
    ap.add_argument("--data", default=None, help="pretrained: ImageNet-layout folder (resnet50); wikitext-2 or a text file (gpt2)")
    ap.add_argument("--calib-samples", type=positive_int, default=None,
                    help="calibration samples (default per model)")
    ap.add_argument("--eval-limit", type=positive_int, default=None,
                    help="cap on evaluation samples (rows are marked as subset rows)")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--min-time", type=positive_float, default=1.0, help="minimum timed seconds per latency row")
    ap.add_argument("--min-iters", type=positive_int, default=20,
                    help="minimum timed trials per latency row (variant and baseline interleaved in each trial)")
    ap.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where the rows (one JSON each) go")
    ap.add_argument("--out", type=Path, default=None,
                    help="where tables, plots and device.json go (default: the folder holding --runs-dir when it is "
                         "named 'runs', e.g. results/; else <runs-dir>-report)")
    ap.add_argument("--online", action="store_true", help="allow downloads (pretrained weights, datasets)")
    ap.add_argument("--no-report", action="store_true", help="skip the aggregation step")
    ap.add_argument("--ceilings", default=True, action=argparse.BooleanOptionalAction,
                    help="measure the device's matmul ceilings for the efficiency column (a few seconds)")
    ap.add_argument("--devices", default=None,
                    help="comma list of cpu,cuda: routes that take --devices get the ones they declare; toolchains "
                         "declaring none of them are left out (default: each route's own default, e.g. auto)")
    ap.add_argument("--python", action="append", default=[], metavar="ENV=PATH",
                    help="run environment ENV (a toolchain's, or report) with an existing interpreter that already "
                         "holds its packages, e.g. torch=/usr/bin/python3: no venv is created; its declared modules "
                         "are checked first (repeatable)")
    ap.add_argument("--use-current-python", action="store_true",
                    help="every selected toolchain runs in the interpreter running the bench (no venvs); "
                         "--python ENV=PATH still wins for ENV")
    ap.add_argument("--update-readme", action="store_true",
                    help="also rewrite the README's results block and the generated blocks in docs/ from this "
                         "run's table (use when committing results/)")
    ap.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="run the routes as Ray tasks: ray://host:port, 'auto' (RAY_ADDRESS / the local node's "
                         "cluster) or 'local' (start a throw-away local cluster); see docs/scale-out.md")
    ap.add_argument("--retries", type=int, default=1,
                    help="--cluster: attempts after the first for a route whose node died or whose process crashed")
    return ap


CLUSTER_ENV = "ray"  # the support environment (utils/registry.py SUPPORT_ENVS) the --cluster driver runs in


def check_cluster_address(addr: str) -> str:
    if addr in ("local", "auto") or (addr.startswith("ray://") and len(addr) > len("ray://")):
        return addr
    if ":" in addr and not addr.startswith(("http://", "https://", "/")):  # host:port of a running head (GCS)
        return addr
    raise SuiteError(f"--cluster {addr!r}: pass ray://HOST:PORT, HOST:PORT, 'auto' or 'local'")


def report_dir(runs_dir: Path, out: Path | None) -> Path:
    if out is not None:
        return out
    return runs_dir.parent if runs_dir.name == "runs" else runs_dir.with_name(runs_dir.name + "-report")


def _writable(path: Path, what: str) -> None:
    """`path` (or the nearest existing parent it would be created in) must be a writable folder."""
    p = path
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise SuiteError(f"{what} {path}: {p} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise SuiteError(f"{what} {path} is not writable (no write permission on {p}); pass another folder")


def validate(args) -> dict:
    """Every flag and path checked before anything is created, prepared or written; SuiteError -> exit 2."""
    from utils.specs import ModelSource

    models = parse_list("model", args.models, MODELS)
    toolchains = parse_list("toolchain", args.toolchains, ORDER)
    toolchains = tuple(t for t in ORDER if t in toolchains)  # run order from the declarations' `needs`
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {m for t in toolchains for mdl in models for m in TOOLCHAINS[t].methods(mdl)}
        bad = [m for m in wanted if m not in known]
        if bad or not wanted:
            raise SuiteError(f"unknown method {', '.join(bad) or args.methods!r} for {', '.join(toolchains)} on "
                             f"{', '.join(models)}; valid: {', '.join(sorted(known))}")
    for m in models:
        ModelSource(m, args.weights, args.weights_path, args.data)  # weights/data combination
    if args.weights_path and (os.sep in args.weights_path or Path(args.weights_path).exists()):
        p = Path(args.weights_path)
        if not p.exists():
            raise SuiteError(f"--weights-path {p} does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise SuiteError(f"--weights-path {p} is an empty file (0 bytes): pass a saved state dict")
        if p.is_dir() and not (p / "config.json").is_file():
            raise SuiteError(f"--weights-path {p} is a folder without config.json (save the model with "
                             "save_pretrained, or pass a state-dict file for resnet50)")
    if args.data and args.data != "wikitext-2":
        p = Path(args.data)
        if not p.exists():
            raise SuiteError(f"--data {p} does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise SuiteError(f"--data {p} is an empty file")
    if args.cluster is not None:
        check_cluster_address(args.cluster)
    if args.retries < 0 or args.retries > 10:
        raise SuiteError(f"--retries {args.retries}: pass 0 to 10")
    if args.devices:
        devs = parse_list("device", args.devices, ("cpu", "cuda"))
        toolchains = tuple(t for t in toolchains if set(devs) & set(TOOLCHAINS[t].devices))
        if not toolchains:
            raise SuiteError(f"no selected toolchain declares a device in --devices {args.devices}")
    out = report_dir(args.runs_dir, args.out)
    _writable(args.runs_dir, "--runs-dir")
    _writable(out, "report folder")
    check_interpreters(args, toolchains)
    return {"models": models, "toolchains": toolchains, "out": out}


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


def _devices_of(args, toolchain: str) -> list[str]:
    declared = TOOLCHAINS[toolchain].devices
    if not args.devices:
        return [TOOLCHAINS[toolchain].default_device()]
    return [d for d in args.devices.split(",") if d in declared]


def route_args(args, model: str, toolchain: str) -> list[str] | None:
    out = ["--model", model, "--weights", args.weights, "--threads", str(args.threads), "--min-time",
           str(args.min_time), "--min-iters", str(args.min_iters), "--runs-dir", str(args.runs_dir)]
    for flag, val in (("--weights-path", args.weights_path), ("--data", args.data), ("--batches", args.batches),
                      ("--calib-samples", args.calib_samples), ("--eval-limit", args.eval_limit)):
        if val is not None:
            out += [flag, str(val)]
    if args.devices and TOOLCHAINS[toolchain].device_flag:
        out += ["--devices", ",".join(_devices_of(args, toolchain))]
    if args.methods:
        mine = [m for m in args.methods.split(",") if m in TOOLCHAINS[toolchain].methods(model)]
        if not mine:
            return None
        out += ["--methods", ",".join(mine)]
    return out


def _batches_of(args, model: str) -> tuple[int, ...]:
    return tuple(int(b) for b in args.batches.split(",")) if args.batches else default_batches(model, args.weights)


def _variants(args, toolchain: str, model: str, device: str | None = None):
    """The variants this run selects of (toolchain, model): those --methods names, else every one but the device's
    opt-in ones (utils/registry.py `opt_in`); device None: those of any device the route may run on."""
    tc = TOOLCHAINS[toolchain]
    vs = tc.variants[model]
    if args.methods:
        return tuple(v for v in vs if v[0] in args.methods.split(","))
    devices = [device] if device else (_devices_of(args, toolchain) if getattr(args, "devices", None)
                                       else list(tc.devices))
    default = {m for d in devices for m in tc.default_methods(model, d, args.weights)}
    return tuple(v for v in vs if v[0] in default)


def status_all(args, toolchain: str, model: str, status: str, reason: str, run_id: str, variants=None,
               launcher: str = "local", env_extra: dict | None = None) -> None:
    import platform

    from utils.specs import DATASET_NAME

    tc = TOOLCHAINS[toolchain]
    env = {"run_id": run_id, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "launcher": launcher,
           "host": platform.node(), **(env_extra or {})}
    for device in _devices_of(args, toolchain) if getattr(args, "devices", None) else [tc.default_device()]:
        mine = _variants(args, toolchain, model, device)
        for row in status_rows(status=status, reason=reason, model=model, weights=args.weights,
                               dataset=DATASET_NAME.get((model, args.weights), str(args.data)), toolchain=toolchain,
                               variants=mine if variants is None else [v for v in variants if v in mine],
                               device=device, batches=_batches_of(args, model), metric=METRIC[model],
                               eval_limit=args.eval_limit, environment=env):
            write_row(row, args.runs_dir)


def _this_run(rows: list[ResultRow], run_id: str) -> list[ResultRow]:
    return [r for r in rows if r.environment.get("run_id") == run_id]


def unfinished(args, toolchain: str, model: str, run_id: str) -> list[tuple[str, str]]:
    """Variants of this route without a row from this run at every batch (the route died before writing them)."""
    rows = _this_run(read_rows(args.runs_dir) + list(read_attempts(args.runs_dir).values()), run_id)
    # only the devices whose rows status_all writes: a route that wrote its skipped cuda rows first and then died
    # on the cpu has not finished its cpu variants
    devices = set(_devices_of(args, toolchain) if getattr(args, "devices", None)
                  else [TOOLCHAINS[toolchain].default_device()])
    got: dict = {}
    for r in rows:
        if r.toolchain == toolchain and r.model == model and r.device in devices:
            got.setdefault((r.method, r.precision), set()).add(int(r.batch))
    want = set(_batches_of(args, model))
    return [v for v in _variants(args, toolchain, model) if not want <= got.get(v, set())]


class PeakRss:
    """Resident-memory high-water mark of a child process (Linux /proc VmHWM), sampled while it runs."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb = pid, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._stop.is_set():
            try:
                for line in open(path):
                    if line.startswith("VmHWM:"):
                        self.peak_mb = int(line.split()[1]) / 1024
            except (OSError, ValueError, IndexError):
                pass
            self._stop.wait(0.5)

    def stop(self) -> float | None:
        self._stop.set()
        self._t.join(timeout=2)
        return self.peak_mb


def run_route(env: str, argv: list[str]) -> tuple[int, float | None]:
    """Run a route process; (return code, its peak resident memory in MB where known)."""
    proc = envs.popen_in_env(env, argv)
    mon = PeakRss(proc.pid)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        envs.interrupt(proc)
        raise
    finally:
        peak = mon.stop()
    return rc, peak


def died_reason(rc: int, peak_mb: float | None) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"route process killed by {name}"
        if -rc == signal.SIGKILL:
            why += " (the out-of-memory killer, or a kill -9)"
    else:
        why = f"route process exited {rc} before finishing this variant"
    return why + (f"; peak resident memory {peak_mb:.0f} MB" if peak_mb else "")


def note_failed_rows(args, run_id: str, failures: list[str]) -> None:
    """One closing failure line naming the variants that got failed rows in this run."""
    failed_rows = [r for r in _this_run(read_rows(args.runs_dir) + list(read_attempts(args.runs_dir).values()), run_id)
                   if r.status == "failed"]
    if failed_rows:
        names = sorted({f"{r.toolchain}/{r.model}/{r.method}" for r in failed_rows})
        failures.append(f"{len(names)} variant(s) failed: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else ""))


def prepare_models(args, models, failures: list[str], ceilings: bool,
                   env_ready=None) -> tuple[dict[str, str], int]:
    """models.prepare in the model-preparing toolchain's environment: (model -> "ok" or the reason, exit code).
    `env_ready()`, when given, is called once that environment exists (or could not be created), before the
    models are prepared: the bench starts creating the other environments then."""
    prep_env = TOOLCHAINS[PREPARE_TOOLCHAIN].env.name
    try:
        try:
            envs.ensure_env(prep_env)
        except envs.EnvError:
            if env_ready is not None:
                env_ready()  # the other environments are created all the same (their toolchains' rows say why)
            raise
        if env_ready is not None:
            env_ready()
        prep = ["-m", "models.prepare", "--model", ",".join(models), "--weights", args.weights,
                "--threads", str(args.threads)] + (["--ceilings"] if ceilings else [])
        for flag, val in (("--weights-path", args.weights_path), ("--data", args.data)):
            if val is not None:
                prep += [flag, val]
        say(f"preparing {', '.join(models)} ({args.weights}) in the {prep_env} environment")
        rc = envs.run_in_env(prep_env, prep).returncode
        if rc == 2:
            return {}, 2
        if rc != 0:
            raise SuiteError(f"models.prepare exited {rc}")
        return {m: "ok" for m in models}, 0
    except (envs.EnvError, SuiteError) as exc:
        reason = f"model preparation failed: {exc}"
        say(reason)
        failures.append(reason)
        return {m: reason for m in models}, 1


def report(args, out: Path, failures: list[str], ensure=envs.ensure_env) -> None:
    """Tables and plots beside the rows, in the report environment (unless --no-report)."""
    if args.no_report:
        return
    try:
        ensure("report")
        agg = ["-m", "evaluation.aggregate", "--runs-dir", str(args.runs_dir), "--out", str(out)]
        if args.update_readme:
            agg += ["--readme", str(REPO_ROOT / "README.md")]
            for doc in sorted((REPO_ROOT / "docs").rglob("*.md")):
                agg += ["--docs", str(doc)]
        rc = envs.run_in_env("report", agg).returncode
        if rc != 0:
            failures.append(f"aggregate exited {rc}")
    except envs.EnvError as exc:
        failures.append(f"report environment: {exc}")


BUILD_PARALLEL = 2  # environments created at once in the background (pip installs)


def _has_work(args, models, toolchain: str) -> list[str]:
    """The models a toolchain runs in this run (a route per model)."""
    tc = TOOLCHAINS[toolchain]
    return [m for m in models if m in tc.variants and _variants(args, toolchain, m)]


def background_envs(args, models, toolchains) -> list[str]:
    """The environments this run still has to create besides the model-preparing one: every toolchain's that runs a
    route or measures ceilings, and the report's; none that exists already or runs in an existing interpreter."""
    prep_env = TOOLCHAINS[PREPARE_TOOLCHAIN].env.name
    names = [TOOLCHAINS[t].env.name for t in toolchains
             if _has_work(args, models, t) or (args.ceilings and TOOLCHAINS[t].measures_ceilings)]
    names += [] if args.no_report else ["report"]
    return [n for n in dict.fromkeys(names) if n != prep_env and n not in envs.OVERRIDES and not envs.is_ready(n)]


def start_env_builds(names: list[str]) -> envs.Builds:
    if names:
        say(f"creating {len(names)} environment(s) in the background while the models are prepared "
            f"(at most {BUILD_PARALLEL} at once, at low CPU priority): {', '.join(names)}")
    return envs.Builds(names, BUILD_PARALLEL, nice=envs.BACKGROUND_NICE)


def join_env_builds(builds: envs.Builds) -> None:
    """Wait for every background creation: nothing is timed while pip runs."""
    if not builds.names:
        return
    t0 = time.time()
    errors = builds.join()
    ok = [n for n in builds.names if n not in errors]
    say(f"environments created: {', '.join(ok) or 'none'}" + (f"; could not be created: {', '.join(errors)}"
                                                               if errors else "")
        + f" (waited {time.time() - t0:.0f} s after preparation)")


def measure_ceilings(args, toolchains, out: Path, ensure) -> None:
    """The device's matmul ceilings: first in the model-preparing environment (a fresh record), then merged with
    the rates of every other selected toolchain that declares `measures_ceilings` (e.g. an ORT kernel beats torch's
    BLAS). Runs only after every environment creation finished: nothing else loads the machine."""
    device_json = str(out / "device.json")
    for tc_name in dict.fromkeys([PREPARE_TOOLCHAIN, *toolchains]):
        tc = TOOLCHAINS[tc_name]
        first = tc.prepares_models
        if not first and not tc.measures_ceilings:
            continue
        try:
            ensure(tc.env.name)
        except envs.EnvError as exc:
            say(f"{tc_name}: no ceiling measurement ({exc})")
            continue
        say(f"device ceilings through {tc_name}'s libraries")
        rc = envs.run_in_env(tc.env.name, ["-m", "utils.ceilings", "--threads", str(args.threads), "--out",
                                           device_json] + ([] if first else ["--merge"])).returncode
        if rc != 0:
            say(f"{tc_name}: ceiling measurement exited {rc}" +
                ("" if first else f" (the {PREPARE_TOOLCHAIN} environment's ceilings are kept)"))


def relaunch_in_cluster_env(argv: list[str]) -> int:
    """--cluster: the Ray driver runs in its own environment (Ray is no system-Python dependency of the bench)."""
    try:
        envs.ensure_env(CLUSTER_ENV)
    except envs.EnvError as exc:
        raise SuiteError(f"--cluster needs the {CLUSTER_ENV} environment: {exc}") from None
    proc = envs.popen_in_env(CLUSTER_ENV, ["-m", "evaluation.cluster", *argv])
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
    plan = validate(args)
    if args.cluster is not None:
        return relaunch_in_cluster_env(argv)
    models, toolchains, out = plan["models"], plan["toolchains"], plan["out"]
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    os.environ["SUITE_RUN_ID"] = run_id
    os.environ["SUITE_DEVICE_FILE"] = str(out / "device.json")
    if args.online:
        os.environ["SUITE_ONLINE"] = "1"
        os.environ.setdefault("HF_HUB_OFFLINE", "0")
    t_start = time.time()
    failures: list[str] = []
    say(f"run {run_id}: {', '.join(models)} x {', '.join(toolchains)}; rows -> {args.runs_dir}, tables -> {out}")
    for name, python in envs.OVERRIDES.items():
        say(f"environment '{name}': existing interpreter {python} (no venv)")

    builds = envs.Builds([])
    try:
        # 1. prepare every model (train/load, tokenise, export ONNX, count ops); once its environment exists, the
        # other environments this run needs are created in the background meanwhile
        def env_ready() -> None:
            nonlocal builds
            builds = start_env_builds(background_envs(args, models, toolchains))

        prepared, rc = prepare_models(args, models, failures, ceilings=False, env_ready=env_ready)
        if rc == 2:
            return 2  # bad input: the one-line error is already printed
        join_env_builds(builds)  # nothing below is timed while pip runs

        # 1b. the device's ceilings (efficiency column), through every library that declares them
        if args.ceilings and prepared and all(v == "ok" for v in prepared.values()):
            measure_ceilings(args, toolchains, out, builds.ensure)

        return _routes_and_report(args, models, toolchains, out, prepared, run_id, failures, builds.ensure, t_start,
                                  argv)
    finally:
        builds.cancel()  # only what is still under way (Ctrl-C, an early exit): no half-made env is marked ready


def _routes_and_report(args, models, toolchains, out: Path, prepared: dict, run_id: str, failures: list[str],
                       ensure, t_start: float, argv: list[str]) -> int:
    # 2. each toolchain in its own env, in dependency order
    for tc_name in toolchains:
        tc = TOOLCHAINS[tc_name]
        todo = _has_work(args, models, tc_name)
        if not todo:
            continue
        try:
            ensure(tc.env.name)
        except envs.EnvError as exc:
            say(f"{tc_name}: environment unavailable: {exc}")
            for m in todo:
                status_all(args, tc_name, m, "skipped", f"environment could not be created: {exc}", run_id)
            continue
        for m in todo:
            if prepared[m] != "ok":
                status_all(args, tc_name, m, "failed", prepared[m], run_id)
                continue
            rargs = route_args(args, m, tc_name)
            if rargs is None:
                continue
            say(f"{tc_name}: {m}")
            t0 = time.time()
            rc, peak = run_route(tc.env.name, ["-m", "quantization.kit", tc_name, *rargs])
            if rc == 2:
                return 2  # bad input (already reported in one line)
            if rc != 0:
                left = unfinished(args, tc_name, m, run_id)
                why = died_reason(rc, peak)
                if left:
                    status_all(args, tc_name, m, "failed", why, run_id, variants=left)
                failures.append(f"{tc_name}/{m}: {why} ({len(left)} variant(s) without rows -> failed rows)")
                say(failures[-1])
            else:
                say(f"{tc_name}: {m} done in {time.time() - t0:.0f} s")

    note_failed_rows(args, run_id, failures)

    # 3. tables and plots, beside the rows (the run log first, so the tables and generated blocks include this run)
    record_run(out, run_id, args, models, toolchains, time.time() - t_start, failures, argv)
    report(args, out, failures, ensure)
    say(f"finished in {time.time() - t_start:.0f} s" + (f"; FAILED: {'; '.join(failures)}" if failures else "; all ok"))
    return 1 if failures else 0


RUN_LOG = "bench_runs.csv"
# seconds: from the start of the run to its last row (environments, preparation, ceilings, routes), the report after it
RUN_LOG_FIELDS = ("run_id", "weights", "models", "toolchains", "seconds", "result", "command")


def record_run(out: Path, run_id: str, args, models, toolchains, seconds: float, failures: list[str],
               argv: list[str]) -> None:
    """One line per bench run in <tables>/bench_runs.csv (how long a run took, from the run itself: the docs quote
    it through a generated block, never by hand). Appended atomically: the old lines are rewritten with the new."""
    import csv
    import io

    from utils.atomic import atomic_write_text

    path = out / RUN_LOG
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if not old:
        w.writerow(RUN_LOG_FIELDS)
    w.writerow([run_id, args.weights, ",".join(models), ",".join(toolchains), f"{seconds:.0f}",
                "ok" if not failures else "failed", " ".join(["python3 -m evaluation.bench", *argv])])
    try:
        atomic_write_text(path, old + buf.getvalue())
    except OSError as exc:  # the rows and tables are written; a missing log line is not worth a failed run
        say(f"could not record the run in {path}: {exc}")


if __name__ == "__main__":
    raise SystemExit(main())
