"""The test command: every environment's tests, each inside its own virtualenv.

    python3 -m evaluation.test                 # all environments
    python3 -m evaluation.test torch report    # some of them

Stdlib only. Creates/reuses each environment (evaluation/launch/envs.py), runs
`<env python> -m pytest tests/<folder>` and prints one closing line with the totals. Exits
non-zero if an environment cannot be created or any test fails. Once the first environment
exists, the others are created one at a time in the background, at low CPU priority, while
the tests of the earlier ones run (each folder waits for its own environment).
"""
from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET

from evaluation.launch import envs
from utils.paths import REPO_ROOT, RESULTS_DIR
from utils.registry import PREPARE_TOOLCHAIN, TOOLCHAINS, all_envs, test_order

# environment -> test folder, in run order, from the one declaration (utils/registry.py): the model-preparing
# toolchain's tests first (they train and export the embedded models that later folders' tests use)
TEST_DIRS = {name: all_envs()[name].tests for name in test_order()}
# set for the folders after the model-preparing one when its tests ran in full (no -k): a test there that finds an
# embedded model missing fails instead of skipping (tests/prepared.py)
PREPARED_ENV_VAR = "SUITE_TESTS_MODELS_PREPARED"


def counts(junit: str) -> dict:
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in tot:
            tot[k] += int(s.get(k, 0))
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    return tot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m evaluation.test", description=__doc__.split("\n\n")[0])
    ap.add_argument("envs", nargs="*", default=list(TEST_DIRS), help=f"environments: {', '.join(TEST_DIRS)}")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("-x", action="store_true", help="stop each env at its first failure")
    ap.add_argument("--python", action="append", default=[], metavar="ENV=PATH",
                    help="run ENV's tests with an existing interpreter that holds its packages (no venv; repeatable)")
    ap.add_argument("--use-current-python", action="store_true",
                    help="run every selected environment's tests in this interpreter (no venvs)")
    args = ap.parse_args(argv)
    bad = [e for e in args.envs if e not in TEST_DIRS]
    if bad:
        print(f"error: unknown environment {bad[0]!r}; valid: {', '.join(TEST_DIRS)}", file=sys.stderr)
        return 2
    try:
        overrides = envs.parse_python_flags(args.python, args.use_current_python, args.envs)
    except envs.EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in args.envs:
        why = envs.missing_imports(name, ("pytest",)) if name in overrides else None
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    total = {"passed": 0, "failures": 0, "errors": 0, "skipped": 0}
    problems = []
    t_all = time.time()
    builds = None
    prepared = False
    try:
        for name in args.envs:
            builds, ran = _run_folder(name, args, builds, total, problems,
                                      {PREPARED_ENV_VAR: "1"} if prepared else None)
            prepared = prepared or (ran and name == TOOLCHAINS[PREPARE_TOOLCHAIN].env.name and not args.k)
    except KeyboardInterrupt:
        if builds is not None:
            builds.cancel()  # no half-made environment is left marked ready
        print("\n[test] interrupted", file=sys.stderr)
        return 130
    print(f"\n[test] all environments in {time.time() - t_all:.0f} s" + (f"; problems: {'; '.join(problems)}" if problems else ""))
    print(f"{total['passed']} passed, {total['failures'] + total['errors']} failed, {total['skipped']} skipped")
    return 1 if problems else 0


def _background(args, first: str) -> "envs.Builds":
    """Every later environment the run needs, created one at a time at low CPU priority (envs.BACKGROUND_NICE) while the
    tests run: a pip install gets the cycles a test leaves idle instead of a wait of its own between folders."""
    rest = [n for n in args.envs[args.envs.index(first) + 1:]
            if n not in envs.OVERRIDES and (REPO_ROOT / TEST_DIRS[n]).is_dir() and not envs.is_ready(n)]
    return envs.Builds(rest, 1, nice=envs.BACKGROUND_NICE)


def _run_folder(name: str, args, builds, total: dict, problems: list, extra_env: dict | None = None):
    """One environment's tests (its environment created, or waited for when the background creates it); returns the
    background creations, started once the first environment exists, and whether its tests ran."""
    folder = REPO_ROOT / TEST_DIRS[name]
    if not folder.is_dir():
        problems.append(f"{name}: {TEST_DIRS[name]} is missing")
        return builds, False
    t0 = time.time()
    try:
        if builds is None:  # the first environment, in the foreground; then the others start in the background
            try:
                envs.ensure_env(name)
            finally:
                builds = _background(args, name)
        else:
            builds.ensure(name)
    except envs.EnvError as exc:
        problems.append(f"{name}: {exc}")
        print(f"[test] {name}: environment could not be created: {exc}", file=sys.stderr)
        return builds, False
    junit = RESULTS_DIR / "junit" / f"{name}.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["-m", "pytest", TEST_DIRS[name], "-q", f"--junitxml={junit}"]
    if args.k:
        cmd += ["-k", args.k]
    if args.x:
        cmd.append("-x")
    print(f"\n[test] ===== {name}: {TEST_DIRS[name]} =====", flush=True)
    rc = envs.run_in_env(name, cmd, extra_env=extra_env).returncode
    try:
        c = counts(str(junit))
    except (OSError, ET.ParseError):
        c = {"passed": 0, "failures": 0, "errors": 1, "skipped": 0}
    for k in total:
        total[k] += c[k]
    if rc not in (0, 5) or c["failures"] or c["errors"]:
        problems.append(f"{name}: pytest exited {rc}")
    print(f"[test] {name}: {c['passed']} passed, {c['failures'] + c['errors']} failed, {c['skipped']} skipped "
          f"({time.time() - t0:.0f} s)", flush=True)
    return builds, True


if __name__ == "__main__":
    raise SystemExit(main())
