"""The bench under faults, end to end (system Python driver, the torch and onnxruntime environments, tiny models):
an interrupted run and a killed route leave parseable rows and tables, lose no earlier ok row, and say so."""
from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests import bench_proc
from utils.paths import VENVS_DIR

pytestmark = pytest.mark.skipif(not (VENVS_DIR / "torch" / "bin" / "python").exists(),
                                reason="the torch environment (model preparation) does not exist yet")

BASE = ["--toolchains", "onnxruntime", "--models", "resnet50", "--methods", "fp32,minmax", "--batches", "1",
        "--eval-limit", "32", "--calib-samples", "16", "--min-iters", "2", "--no-ceilings", "--devices", "cpu"]


def bench(args, cache, **kw):
    return bench_proc.bench(args, {"SUITE_CACHE_DIR": str(cache)}, **kw)


def rows_of(runs: Path) -> dict:
    out = {}
    for p in runs.glob("*.json"):
        out[p.stem] = json.loads(p.read_text())  # every row file parses
    return out


def wait_for(proc, text: str, timeout: float = 300) -> str:
    """Read stderr lines until one contains `text`."""
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)}")


@pytest.fixture
def first_run(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_resnet_cache(cache)
    p = bench(BASE + ["--runs-dir", str(runs), "--min-time", "0.01"], cache)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    first = rows_of(runs)
    assert len(first) == 2 and all(r["status"] == "ok" for r in first.values())
    assert (tmp_path / "summary.csv").is_file()  # tables beside the runs folder, not in results/
    return cache, runs, first


def route_pid(runs: Path) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"quantization.kit" in cmd and any(str(runs).encode() in c for c in cmd):  # its plan file is there
                return int(d.name)
    return None


def test_sigint_mid_route_keeps_every_ok_row_and_parseable_tables(first_run, tmp_path):
    cache, runs, first = first_run
    before_csv = (tmp_path / "summary.csv").read_text()
    p = bench(BASE + ["--runs-dir", str(runs), "--min-time", "30"], cache, start_new_session=True)
    wait_for(p, "onnxruntime: resnet50")
    time.sleep(3)  # inside the route (timing a 30 s row)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "interrupted" in err
    after = rows_of(runs)
    for k, r in first.items():
        assert after[k]["status"] == "ok" and after[k]["value"] == r["value"], k
    list(csv.DictReader(open(tmp_path / "summary.csv")))  # parses
    assert (tmp_path / "summary.csv").read_text() == before_csv  # not rewritten half-way
    assert not [f for f in runs.rglob("*.tmp")] and not [f for f in tmp_path.glob(".*.tmp")]


def test_killed_route_gets_failed_rows_naming_the_signal_and_exit_1(first_run):
    cache, runs, first = first_run
    p = bench(BASE + ["--runs-dir", str(runs), "--min-time", "30"], cache)
    wait_for(p, "onnxruntime: resnet50")
    pid = None
    for _ in range(100):
        pid = route_pid(runs)
        if pid:
            break
        time.sleep(0.1)
    assert pid, "route process not found"
    time.sleep(2)
    os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err[-2000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert "FAILED" in last and "SIGKILL" in last, last
    after = rows_of(runs)
    for k, r in first.items():  # the earlier ok rows stay: failed rows never replace them
        assert after[k]["status"] == "ok" and after[k]["value"] == r["value"]
    attempts = [json.loads(f.read_text()) for f in (runs / "attempts").glob("*.json")]
    assert attempts and all(a["status"] == "failed" and "SIGKILL" in a["reason"] for a in attempts)
    assert all("peak resident memory" in a["reason"] for a in attempts)
    with open(runs.parent / "summary.csv") as fh:
        table = list(csv.DictReader(fh))
    assert any("SIGKILL" in (r["last_attempt"] or "") for r in table)  # the table says the latest attempt failed


def _kill_route_when(runs: Path, ready, timeout: float = 300) -> None:
    """SIGKILL the route process writing into `runs` once `ready()` holds."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ready():
            pid = route_pid(runs)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.1)
    raise AssertionError("the route never got there")


def test_a_route_killed_in_its_timing_phase_keeps_every_scored_row_and_resume_only_times_them(tmp_path, h):
    """The lease that ends while a route times: every variant it scored keeps its row (accuracy, fidelity; the table
    says "not timed"), the failure is its latest attempt; --resume then builds and times those variants without
    scoring them again, runs the one it never reached, and a second --resume has nothing left to do."""
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_resnet_cache(cache)
    args = BASE[:BASE.index("--methods")] + ["--methods", "fp32,minmax", "--batches", "1,2"] + \
        BASE[BASE.index("--batches") + 2:] + ["--runs-dir", str(runs)]
    p = bench(args + ["--min-time", "60"], cache)
    _kill_route_when(runs, lambda: len(list(runs.glob("*.json"))) == 4)  # both variants scored, timing under way
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "SIGKILL" in [ln for ln in err.splitlines() if ln.strip()][-1], err[-2000:]
    rows = rows_of(runs)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["pending"] == "timing" and r["value"] is not None
                                  for r in rows.values())
    attempts = [json.loads(f.read_text()) for f in (runs / "attempts").glob("*.json")]
    assert len(attempts) == 4 and all(a["status"] == "failed" and "SIGKILL" in a["reason"] for a in attempts)
    with open(tmp_path / "summary.md") as fh:
        md = fh.read()
    assert "not timed" in md and "latest attempt failed" in md

    dry = bench(args + ["--min-time", "0.01", "--resume", "--dry-run"], cache)
    out, _ = dry.communicate(timeout=120)
    assert dry.returncode == 0 and "plan: 2 item(s)" in out
    p = bench(args + ["--min-time", "0.01", "--resume"], cache)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert err.count("scores reused from run") == 2  # built and timed only
    after = rows_of(runs)
    for k, r in rows.items():
        assert after[k]["pending"] == "" and after[k]["latency_p50_ms"] is not None
        assert after[k]["value"] == r["value"] and after[k]["extra"]["scores_from_run"] == r["environment"]["run_id"]
    assert not list((runs / "attempts").glob("*.json"))  # the finished rows cleared the failed attempts
    again = bench(args + ["--min-time", "0.01", "--resume", "--dry-run"], cache)
    out, _ = again.communicate(timeout=120)
    assert "plan: 0 item(s)" in out and out.count("resume: done in run") == 2
