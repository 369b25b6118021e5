"""Faults a user meets, end to end (system-Python bench, the torch and onnxruntime environments, a tiny ONNX model).

Measured on the main branch before the run plan (7d521ac): a killed route left failed rows for variants at batches
the run never planned (the calibration twins entropy/percentile at the larger batch), marked the killed run's
finished ok rows "latest attempt failed", and a later clean run left those marks in place; two benches on one runs
folder both exited 0, the second one's contended latencies silently replacing the first's rows."""
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

# default methods: fp32, minmax and minmax's calibration twins entropy and percentile, which are timed at the
# smallest batch only (utils/registry.py latency_twins)
BASE = ["--toolchains", "onnxruntime", "--models", "resnet50", "--batches", "1,2", "--eval-limit", "32",
        "--calib-samples", "16", "--min-iters", "2", "--no-ceilings", "--devices", "cpu"]
PLANNED = {("fp32", 1), ("fp32", 2), ("minmax", 1), ("minmax", 2), ("entropy", 1), ("percentile", 1)}


def bench(args, cache, **kw):
    return bench_proc.bench(args, {"SUITE_CACHE_DIR": str(cache)}, **kw)


def rows_of(runs: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}


def attempts_of(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (runs / "attempts").glob("*.json")]


def table(report: Path) -> dict:
    with open(report / "summary.csv") as fh:
        return {(r["method"], int(r["batch"])): r for r in csv.DictReader(fh)}


def route_pid(runs: Path) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"quantization.kit" in cmd and any(str(runs).encode() in c for c in cmd):
                return int(d.name)
    return None


def wait_for(proc, text: str, timeout: float = 300) -> str:
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)[-3000:]}")


def test_a_killed_route_fails_only_what_it_planned_and_a_clean_run_clears_the_marks(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_resnet_cache(cache)
    p = bench(BASE + ["--runs-dir", str(runs), "--min-time", "3"], cache)

    def batch1_timed() -> bool:  # every variant timed at batch 1: the route is timing batch 2 now (>= 6 s of it)
        rows = [r for r in rows_of(runs).values() if r["batch"] == 1]
        return len(rows) == 4 and all(r.get("latency_p50_ms") is not None for r in rows)

    t0 = time.time()
    while not batch1_timed():
        assert p.poll() is None and time.time() - t0 < 300, "the route never timed batch 1"
        time.sleep(0.05)
    pid = route_pid(runs)
    assert pid, "route process not found"
    os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "SIGKILL" in [ln for ln in err.splitlines() if ln.strip()][-1], err[-2000:]

    rows = rows_of(runs)
    got = {(r["method"], r["batch"]) for r in rows.values()}
    assert got == PLANNED, f"rows at keys the run never planned: {sorted(got - PLANNED)}"
    assert all(r["status"] == "ok" for r in rows.values())
    done = {(r["method"], r["batch"]) for r in rows.values() if not r["pending"]}
    assert done == {("fp32", 1), ("minmax", 1), ("entropy", 1), ("percentile", 1)}  # finished before the kill
    failed = {(a["method"], a["batch"]) for a in attempts_of(runs)}
    assert failed == {("fp32", 2), ("minmax", 2)}  # only the planned rows the route did not finish
    assert all(a["status"] == "failed" and "SIGKILL" in a["reason"] for a in attempts_of(runs))
    recs = {json.loads(f.read_text())["item"]["method"]: json.loads(f.read_text())["status"]
            for f in (runs / "items").glob("*.json")}
    assert recs == {"fp32": "failed", "minmax": "failed", "entropy": "ok", "percentile": "ok"}
    marked = {k for k, r in table(tmp_path).items() if r["last_attempt"]}
    assert marked == {("fp32", 2), ("minmax", 2)}  # "latest attempt failed" only where it did

    p = bench(BASE + ["--runs-dir", str(runs), "--min-time", "0.01"], cache)  # the same items, clean
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    rows = rows_of(runs)
    assert {(r["method"], r["batch"]) for r in rows.values()} == PLANNED
    assert all(r["status"] == "ok" and not r["pending"] and r["latency_p50_ms"] for r in rows.values())
    assert not attempts_of(runs)  # the marks are gone
    assert not any(r["last_attempt"] for r in table(tmp_path).values())
    assert "latest attempt" not in (tmp_path / "summary.md").read_text()


def test_a_second_bench_on_the_same_runs_folder_refuses_and_a_killed_holder_leaves_no_lock(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_resnet_cache(cache)
    one = ["--methods", "fp32", "--batches", "1"]
    first = bench(BASE + one + ["--runs-dir", str(runs), "--min-time", "60"], cache, start_new_session=True)
    try:
        wait_for(first, "onnxruntime: resnet50")  # the first run is measuring
        t0 = time.time()
        second = bench(BASE + one + ["--runs-dir", str(runs), "--min-time", "0.01"], cache)
        out, err = second.communicate(timeout=600)
        took = time.time() - t0
        lines = [ln for ln in (out + err).splitlines() if ln.strip()]
        assert second.returncode == 2 and len(lines) == 1, (second.returncode, lines[-20:])
        assert lines[0].startswith(f"error: another run is writing to {runs} (pid {first.pid} on ")
        assert took < 10, took
        assert not list(runs.glob("*.json")) or all(r["environment"]["run_id"].endswith(f"-{first.pid}")
                                                     for r in rows_of(runs).values())
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the holder and its route, as a kill -9 or a lost session does
        first.communicate(timeout=60)
    third = bench(BASE + one + ["--runs-dir", str(runs), "--min-time", "0.01"], cache)
    _, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]  # the lock died with its holder
    assert [r["status"] for r in rows_of(runs).values()] == ["ok"]
