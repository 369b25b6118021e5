"""Environments created in the background while the models are prepared (evaluation/launch/envs.py Builds, the bench's
first step): at most 2 at once, nothing timed until all finished, a failed one gives its toolchain the same
skipped rows as before, and an interrupted one is never left marked ready."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from evaluation.launch import bench, envs
from evaluation.launch import routes as launch
from utils.plan import Plan, write_item_record
from utils.registry import Part
from utils.rows import read_rows


class Log:
    def __init__(self):
        self.events, self.lock, self.now, self.most = [], threading.Lock(), 0, 0

    def add(self, *ev):
        with self.lock:
            self.events.append(ev)

    def index(self, *ev):
        return self.events.index(ev)


def _fake_ensure(log: Log, fail=(), seconds=0.3):
    def ensure_env(name, *, quiet=False, nice=0):
        log.add("env-start", name)
        log.add("nice", name, nice)
        with log.lock:
            log.now += 1
            log.most = max(log.most, log.now)
        time.sleep(seconds)
        with log.lock:
            log.now -= 1
        if name in fail:
            log.add("env-failed", name)
            raise envs.EnvError(f"environment '{name}' could not be created ({name}.txt): ERROR: No matching "
                                f"distribution found for {name}-lib==9.9")
        log.add("env-done", name)
        return {"hash": "x", "optional_failed": {}}
    return ensure_env


def test_builds_run_at_most_two_at_once_and_hand_back_each_outcome(monkeypatch):
    log = Log()
    monkeypatch.setattr(envs, "ensure_env", _fake_ensure(log, fail=("openvino",)))
    builds = envs.Builds(["onnxruntime", "openvino", "modelopt-onnx", "report"], parallel=2)
    errors = builds.join()
    assert log.most == 2 and len([e for e in log.events if e[0] == "env-start"]) == 4
    assert set(errors) == {"openvino"}
    assert builds.ensure("report") == {"hash": "x", "optional_failed": {}}
    with pytest.raises(envs.EnvError, match="could not be created \\(openvino.txt\\)") as exc:
        builds.ensure("openvino")
    assert exc.value is errors["openvino"]  # the very error, so its rows read as before
    builds.cancel()  # nothing left under way: no effect


def _bench_world(monkeypatch, tmp_path, fail=()):
    """bench.main with the environments, model preparation, ceilings, routes and report faked: it logs when each
    starts and ends."""
    log = Log()
    monkeypatch.setenv("SUITE_RUN_ID", "")
    monkeypatch.setenv("SUITE_DEVICE_FILE", "")
    monkeypatch.setattr(envs, "OVERRIDES", {})
    monkeypatch.setattr(envs, "is_ready", lambda name: name == "torch")
    monkeypatch.setattr(envs, "ensure_env", _fake_ensure(log, fail=fail))

    log.argv = []

    def run_in_env(name, args, **kw):
        log.argv.append(list(args))
        log.add("run", args[1], "start")
        time.sleep(1.0 if args[1] == "models.prepare" else 0.01)
        log.add("run", args[1], "end")
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(envs, "run_in_env", run_in_env)
    def run_route(env, toolchain, path, **kw):  # a route that finishes every item of its plan file
        plan = Plan.load(path)
        log.add("route", toolchain)
        for it in plan.items:
            write_item_record(plan.runs_dir, {"item": it.to_dict(), "status": "ok", "rows": [], "run_id": plan.run_id})
        return 0, None

    monkeypatch.setattr(launch, "run_route", run_route)
    return log


def test_bench_overlaps_env_creation_with_preparation_and_times_nothing_before_it_ends(monkeypatch, tmp_path, capsys):
    log = _bench_world(monkeypatch, tmp_path)
    runs = tmp_path / "runs"
    rc = bench.main(["--toolchains", "onnxruntime,openvino,modelopt-onnx", "--models", "resnet50", "--batches", "1",
                     "--runs-dir", str(runs), "--devices", "cpu"])
    assert rc == 0
    ev = log.events
    built = ["onnxruntime", "modelopt-onnx", "openvino", "report"]
    assert {e[1] for e in ev if e[0] == "env-done"} == set(built) | {"torch"}
    # the torch environment first, then the others while models.prepare runs (at most 2 at once)
    assert log.index("env-done", "torch") < log.index("run", "models.prepare", "start")
    assert all(log.index("env-start", n) < log.index("run", "models.prepare", "end") for n in built[:2])
    assert log.most == 2
    # models.prepare no longer measures the ceilings; they and every route start after the last creation ended
    last_env = max(log.index("env-done", n) for n in built)
    prep = [a for a in log.argv if a[1] == "models.prepare"]
    assert len(prep) == 1 and "--ceilings" not in prep[0]
    ceil = [a for a in log.argv if a[1] == "utils.ceilings"]
    assert len(ceil) == 2 and "--merge" not in ceil[0] and "--merge" in ceil[1]  # torch's fresh, then onnxruntime's
    assert [a[a.index("--devices") + 1] for a in ceil] == ["cpu", "cpu"]  # a cpu run: no GPU ceilings
    timed = [i for i, e in enumerate(ev) if e[:2] == ("run", "utils.ceilings") or e[0] == "route"]
    assert len([e for e in ev if e[0] == "route"]) == 3 and timed and min(timed) > last_env
    assert any(e[:2] == ("run", "utils.ceilings") for e in ev)
    err = capsys.readouterr().err
    assert "in the background while the models are prepared (at most 2 at once, at low CPU priority)" in err
    # the background ones niced, the model-preparing one (which everything waits for) not
    assert {e[1:] for e in ev if e[0] == "nice"} == {(n, envs.BACKGROUND_NICE) for n in built} | {("torch", 0)}
    assert "environments created:" in err


def test_a_cuda_run_measures_the_gpu_ceilings_alone(monkeypatch, tmp_path):
    """--devices cuda: one utils.ceilings run, in the torch environment, for the GPU only (no CPU matmuls, no other
    environment's CPU libraries); a cpu,cuda run measures both there and merges the CPU libraries of the others."""
    log = _bench_world(monkeypatch, tmp_path)
    assert bench.main(["--toolchains", "torch,onnxruntime", "--models", "resnet50", "--batches", "1",
                       "--runs-dir", str(tmp_path / "runs"), "--devices", "cuda"]) == 0
    ceil = [a for a in log.argv if a[1] == "utils.ceilings"]
    assert len(ceil) == 1 and ceil[0][ceil[0].index("--devices") + 1] == "cuda" and "--merge" not in ceil[0]
    log.argv.clear()
    assert bench.main(["--toolchains", "torch,onnxruntime", "--models", "resnet50", "--batches", "1",
                       "--runs-dir", str(tmp_path / "runs2"), "--devices", "cpu,cuda"]) == 0
    ceil = [a for a in log.argv if a[1] == "utils.ceilings"]
    assert [a[a.index("--devices") + 1] for a in ceil] == ["cpu,cuda", "cpu"] and "--merge" in ceil[1]


def test_a_background_env_that_fails_gives_its_toolchain_the_same_skipped_rows(monkeypatch, tmp_path, capsys):
    log = _bench_world(monkeypatch, tmp_path, fail=("openvino",))
    runs = tmp_path / "runs"
    rc = bench.main(["--toolchains", "onnxruntime,openvino", "--models", "resnet50", "--batches", "1",
                     "--runs-dir", str(runs), "--no-ceilings", "--devices", "cpu"])
    assert rc == 0  # as before: a toolchain without its environment is skipped, the run goes on
    rows = [r for r in read_rows(runs) if r.toolchain == "openvino"]
    why = ("environment could not be created: environment 'openvino' could not be created (openvino.txt): ERROR: No "
           "matching distribution found for openvino-lib==9.9")
    assert rows and {r.status for r in rows} == {"skipped"} and {r.reason for r in rows} == {why}
    assert {e[1] for e in log.events if e[0] == "route"} == {"onnxruntime"}
    assert log.events.count(("env-start", "openvino")) == 1  # not tried again at route time
    assert "openvino: environment unavailable: environment 'openvino' could not be created" in capsys.readouterr().err


# ------------------------------------------------------------------ the real ensure_env, interrupted

FAKE_PY = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
exec sleep 60
"""


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """An environment 'fake' whose only part is optional and whose pip step hangs (a stand-in interpreter)."""
    req = tmp_path / "req"
    req.mkdir()
    (req / "constraints.txt").write_text("")
    (req / "fake.txt").write_text("fake-lib==1\n")
    py = tmp_path / "fakepy"
    py.write_text(FAKE_PY)
    py.chmod(0o755)
    monkeypatch.setattr(envs, "REQUIREMENTS_DIR", req)
    monkeypatch.setitem(envs.ENVS, "fake", (Part("fake.txt", optional=True),))
    monkeypatch.setattr(envs, "OVERRIDES", {})
    monkeypatch.setenv("SUITE_VENVS_DIR", str(tmp_path / "venvs"))
    monkeypatch.setattr(sys, "executable", str(py))
    # a test command started in the background (`cmd &` in a non-interactive shell) ignores SIGINT, and children
    # inherit an ignored signal: give the stand-in pip the disposition it has under a terminal (a handler is reset
    # to the default in an exec'd child)
    prev = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield tmp_path / "venvs"
    signal.signal(signal.SIGINT, prev)


def _wait_for_step(timeout=20):
    t0 = time.time()
    while time.time() - t0 < timeout:
        with envs._RUNNING_LOCK:
            procs = list(envs._RUNNING)
        if procs and any("pip" in p.args for p in procs):
            return procs[0]
        time.sleep(0.05)
    raise AssertionError("the pip step never started")


def test_background_pip_steps_run_at_the_requested_niceness(fake_env):
    """The bench's background creation gives way to model preparation: its pip step runs niced (the process's own
    niceness as the kernel reports it), a foreground creation is not."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    builds = envs.Builds(["fake"], nice=envs.BACKGROUND_NICE)
    proc = _wait_for_step()
    try:
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, base + envs.BACKGROUND_NICE) > base
    finally:
        builds.cancel(timeout=10)


def test_cancel_stops_a_creation_under_way_and_leaves_it_not_ready(fake_env):
    builds = envs.Builds(["fake"])
    _wait_for_step()
    t0 = time.time()
    builds.cancel(timeout=10)
    assert time.time() - t0 < 10
    with pytest.raises(envs.EnvError, match="interrupted"):
        builds.ensure("fake")
    assert not (fake_env / "fake" / envs.STAMP).exists() and not envs.is_ready("fake")
    assert not envs._CANCELLED.is_set()  # a later run may create it again


def test_ctrl_c_reaching_pip_is_no_failed_optional_part(fake_env):
    """A terminal's Ctrl-C reaches pip itself: the stopped optional part must not be recorded as failed in a stamp
    (that would mark a half-made environment ready, never retried)."""
    out = {}
    t = threading.Thread(target=lambda: out.update(r=_try(lambda: envs.ensure_env("fake"))))
    t.start()
    proc = _wait_for_step()
    os.kill(proc.pid, signal.SIGINT)
    t.join(20)
    assert isinstance(out["r"], envs.EnvError) and "interrupted" in str(out["r"])
    assert not (fake_env / "fake" / envs.STAMP).exists() and not envs.is_ready("fake")


def _try(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


def test_test_command_creates_later_environments_in_the_background_while_earlier_tests_run(monkeypatch, tmp_path,
                                                                                           capsys):
    """evaluation.test: the first environment in the foreground, the rest one at a time at low priority while the
    earlier folders' tests run; every folder's tests start only once its own environment is ready, and a failed
    background creation fails that folder alone."""
    from evaluation.launch import tests as runner

    log = Log()
    names = ["torch", "report", "onnxruntime", "openvino"]
    monkeypatch.setattr(runner, "TEST_DIRS", {n: "tests" for n in names})
    monkeypatch.setattr(envs, "OVERRIDES", {})
    monkeypatch.setattr(envs, "is_ready", lambda name: False)
    monkeypatch.setattr(envs, "ensure_env", _fake_ensure(log, fail=("onnxruntime",), seconds=0.2))
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path)
    junit = '<testsuite tests="2" failures="0" errors="0" skipped="0"></testsuite>'

    def run_in_env(name, cmd, **kw):
        log.add("tests-start", name)
        (tmp_path / "junit" / f"{name}.xml").write_text(junit)
        time.sleep(0.5)  # long enough for the next creation to start meanwhile
        log.add("tests-end", name)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(envs, "run_in_env", run_in_env)
    assert runner.main(names) == 1  # onnxruntime's environment failed
    ev = log.events
    assert ("nice", "torch", 0) in ev and {e[1:] for e in ev if e[0] == "nice" and e[1] != "torch"} == {
        (n, envs.BACKGROUND_NICE) for n in names[1:]}
    assert log.most == 1  # one creation at a time
    assert log.index("env-done", "torch") < log.index("tests-start", "torch")
    assert log.index("env-done", "torch") < log.index("env-start", "report")  # the foreground one alone first
    assert log.index("env-start", "report") < log.index("tests-end", "torch")  # overlapped with torch's tests
    for n in ("report", "openvino"):
        assert log.index("env-done", n) < log.index("tests-start", n)
    assert ("tests-start", "onnxruntime") not in ev
    out = capsys.readouterr()
    assert "onnxruntime: environment could not be created" in out.err and "6 passed, 0 failed" in out.out
