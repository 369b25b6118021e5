"""Running a validated plan (evaluation/launch/bench.py builds it): the model-preparing environment and
models.prepare while the other environments are created in the background, the device's ceilings, every route of
every pass (evaluation/launch/routes.py), the run log and the report; one run per runs folder at a time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.launch import envs
from evaluation.launch.routes import Outcome, RunLock, item_summary, run_routes, say
from utils.errors import SuiteError
from utils.paths import REPO_ROOT
from utils.plan import Estimates, Plan, new_run_id
from utils.registry import PREPARE_TOOLCHAIN, TOOLCHAINS

@dataclass
class Checked:
    """A validated run: its plan (narrowed by --resume/--budget, with estimates), its folders, what it costs."""

    plan: Plan  # every item of the run (all passes)
    out: Path
    est: Estimates
    fixed_s: float = 0.0
    fixed_lines: list[str] = field(default_factory=list)
    device_missing: str | None = None
    passes: list[Plan] = field(default_factory=list)  # --repeats: the plan of each pass, in order


RUN_LOG = "bench_runs.csv"


# seconds: from the start of the run to its last row (environments, preparation, ceilings, routes), the report after it
RUN_LOG_FIELDS = ("run_id", "weights", "models", "toolchains", "seconds", "result", "command")


BUILD_PARALLEL = 2  # environments created at once in the background (pip installs)


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
        agg = ["-m", "evaluation.report.aggregate", "--runs-dir", str(args.runs_dir), "--out", str(out)]
        if args.publish:
            agg += ["--readme", str(REPO_ROOT / "README.md")]
            for doc in sorted((REPO_ROOT / "docs").rglob("*.md")):
                agg += ["--docs", str(doc)]
        rc = envs.run_in_env("report", agg).returncode
        if rc != 0:
            failures.append(f"report step (evaluation.report.aggregate) exited {rc}: see its lines above")
    except envs.EnvError as exc:
        failures.append(f"report environment: {exc}")


def background_envs(args, plan: Plan) -> list[str]:
    """The environments this run still has to create besides the model-preparing one: every toolchain's that runs a
    route or measures ceilings, and the report's; none that exists already or runs in an existing interpreter."""
    prep_env = TOOLCHAINS[PREPARE_TOOLCHAIN].env.name
    names = [TOOLCHAINS[t].env.name for t in plan.toolchains()]
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


def measure_ceilings(args, toolchains, out: Path, ensure, failures: list[str], devices=("cpu",)) -> None:
    """The device's matmul ceilings: first in the model-preparing environment (a fresh record: the CPU's, and the
    GPU's through its declared library when `devices` has cuda), then merged with the CPU rates of every other
    selected toolchain that declares `ceilings` (e.g. an ORT kernel beats torch's BLAS). Each environment runs its own
    toolchain's declared libraries (and NumPy's). A run on cuda only measures the GPU alone. Runs only after every environment creation finished: nothing else loads the machine. A failed
    measurement is said in the closing line (the efficiency column stays empty where it has no ceiling)."""
    device_json = str(out / "device.json")
    devices = [d for d in ("cpu", "cuda") if d in devices] or ["cpu"]
    for tc_name in dict.fromkeys([PREPARE_TOOLCHAIN, *toolchains]):
        tc = TOOLCHAINS[tc_name]
        first = tc.prepares_models
        if not first and (not tc.ceilings or "cpu" not in devices):
            continue
        try:
            ensure(tc.env.name)
        except envs.EnvError as exc:
            say(f"{tc_name}: no ceiling measurement ({exc})")
            continue
        say(f"device ceilings through {tc_name}'s libraries")
        rc = envs.run_in_env(tc.env.name, ["-m", "utils.ceilings", "--threads", str(args.threads), "--out",
                                           device_json, "--devices", ",".join(devices) if first else "cpu"]
                             + (["--toolchains", tc_name] if tc.ceilings else [])
                             + ([] if first else ["--merge"])).returncode
        if rc != 0:
            failures.append(f"ceilings through {tc_name}'s libraries exited {rc}" +
                            ("" if first else f" (the {PREPARE_TOOLCHAIN} environment's ceilings are kept)"))
            say(failures[-1])


def execute(args, checked: Checked, argv: list[str], who: str = "bench") -> int:
    """Run a validated plan: preparation (environments in the background), ceilings, the routes, the report. One
    run per runs folder at a time."""
    plan, out = checked.plan, checked.out
    run_id = new_run_id()
    plan.run_id = run_id
    os.environ["SUITE_RUN_ID"] = run_id
    os.environ["SUITE_DEVICE_FILE"] = str(out / "device.json")
    if args.online:
        os.environ["SUITE_ONLINE"] = "1"
        os.environ.setdefault("HF_HUB_OFFLINE", "0")
    with RunLock(plan.runs_dir):
        t_start = time.time()
        if args.budget is not None:  # the kit starts no item that would end after this
            plan.deadline = t_start + args.budget - (0.0 if args.no_report else 20.0)
        outcome = Outcome()
        say(f"run {run_id}: {len(plan.items)} item(s) of {', '.join(plan.models()) or 'no model'} x "
            f"{', '.join(plan.toolchains()) or 'no toolchain'}; rows -> {plan.runs_dir}, tables -> {out}", who)
        for lo in plan.left_out:
            say(f"left out {lo['item']}: {lo['why']}", who)
        for name, python in envs.OVERRIDES.items():
            say(f"environment '{name}': existing interpreter {python} (no venv)", who)
        builds = envs.Builds([])
        try:
            def env_ready() -> None:
                nonlocal builds
                builds = start_env_builds(background_envs(args, plan))

            models = plan.models()
            prepared, rc = prepare_models(args, models, outcome.failures, ceilings=False, env_ready=env_ready) \
                if models else ({}, 0)
            if rc == 2:
                return 2  # bad input: the one-line error is already printed
            join_env_builds(builds)  # nothing below is timed while pip runs
            if args.ceilings and prepared and all(v == "ok" for v in prepared.values()):
                measure_ceilings(args, plan.toolchains(), out, builds.ensure, outcome.failures,
                                 devices={it.device for it in plan.items})
            for k, p in enumerate(checked.passes or [plan], 1):
                p.run_id, p.deadline = run_id, plan.deadline
                if len(checked.passes) > 1:
                    say(f"pass {k} of {len(checked.passes)}: {', '.join(p.toolchains() if p.route_order is None else p.route_order)}", who)
                run_routes(p, prepared, builds.ensure, outcome, who=who, est=checked.est)
                if outcome.bad_input:
                    return 2
            return finish(args, plan, out, outcome, builds.ensure, t_start, argv, who)
        finally:
            builds.cancel()  # only what is still under way (Ctrl-C, an early exit): no half-made env is marked ready


def finish(args, plan: Plan, out: Path, outcome: Outcome, ensure, t_start: float, argv: list[str],
           who: str = "bench") -> int:
    """The run's closing: failed items and left-out items said, the run log, the tables, one last line."""
    failed, left = item_summary(plan, plan.run_id)
    if failed:
        outcome.failures.append(f"{len(failed)} item(s) failed: {', '.join(failed[:8])}" + (" ..." if len(failed) > 8
                                                                                              else ""))
    for line in left:
        say(f"left out: {line}", who)
    record_run(out, plan.run_id, args, plan.models(), plan.toolchains(), time.time() - t_start, outcome.failures, argv)
    report(args, out, outcome.failures, ensure)
    say(f"finished in {time.time() - t_start:.0f} s" + (f"; {len(left)} item(s) left out (said above)" if left else "")
        + (f"; FAILED: {'; '.join(outcome.failures)}" if outcome.failures else "; all ok"), who)
    return 1 if outcome.failures else 0


def record_run(out: Path, run_id: str, args, models, toolchains, seconds: float, failures: list[str],
               argv: list[str]) -> None:
    """One line per bench run in <tables>/bench_runs.csv (how long a run took, from the run itself: the docs quote
    it through a generated block, never by hand). Appended atomically: the old lines are rewritten with the new.
    A log that cannot be written is a failure of the run (said in its last line)."""
    import csv
    import io

    from utils.atomic import atomic_write_text

    path = out / RUN_LOG
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not old:
            w.writerow(RUN_LOG_FIELDS)
        w.writerow([run_id, args.weights, ",".join(models), ",".join(toolchains), f"{seconds:.0f}",
                    "ok" if not failures else "failed", " ".join(["python3 -m evaluation.bench", *argv])])
        atomic_write_text(path, old + buf.getvalue())
    except OSError as exc:  # the rows are written; the run says the log is not
        failures.append(f"could not record the run in {path}: {exc.__class__.__name__}: {exc}")
        say(failures[-1])
