"""Faults a user meets, at the level of the bench's own checks and the report step (no toolchain needed).

Each was measured on the main branch before these checks existed (7d521ac): a damaged row file made every report
crash with a long JSONDecodeError naming no file; with device.json a folder the run printed two IsADirectoryError
tracebacks, wrote rows without ceilings and ended "all ok" with exit 0; a failed ceiling measurement or run log was
no failure of the run."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from evaluation.launch import bench, envs
from evaluation.launch import run
from tests import bench_proc
from utils.paths import REPO_ROOT
from utils.rows import ResultRow, write_row


def _row(method: str, precision: str, p50: float) -> ResultRow:
    return ResultRow(model="resnet50", weights="embedded", dataset="digits", toolchain="onnxruntime", method=method,
                     precision=precision, device="cpu", batch=1, metric="top1", value=95.0, latency_kind="host-wall",
                     latency_p10_ms=p50, latency_p50_ms=p50, latency_p90_ms=p50, latency_p99_ms=p50,
                     environment={"run_id": "r1", "timestamp": "2026-12-01T00:00:00Z"})


def _truncated_runs(runs: Path) -> Path:
    """Three rows; the minmax one cut to half its bytes (a full disk, a copy cut short)."""
    for m, p, ms in (("fp32", "fp32", 10.0), ("minmax", "int8", 4.0), ("entropy", "int8", 4.1)):
        write_row(_row(m, p, ms), runs)
    bad = runs / f"{_row('minmax', 'int8', 4.0).key}.json"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    return bad


def test_a_truncated_row_file_is_named_in_one_line_moved_aside_and_the_rest_tabled(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "tables"
    bad = _truncated_runs(runs)
    half = bad.read_bytes()
    cmd = [sys.executable, "-m", "evaluation.report.aggregate", "--runs-dir", str(runs), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": "."},
                       cwd=REPO_ROOT)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    naming = [ln for ln in p.stderr.splitlines() if bad.name in ln]
    assert len(naming) == 1 and naming[0].startswith("error: damaged row file ") and str(bad) in naming[0], p.stderr
    assert "JSONDecodeError" in naming[0] and str(runs / "damaged") in naming[0]
    moved = runs / "damaged" / bad.name
    assert not bad.exists() and moved.read_bytes() == half  # moved, never deleted or rewritten
    table = pd.read_csv(out / "summary.csv")
    assert sorted(table["method"]) == ["entropy", "fp32"]  # the tables from the rest
    # the next report (a later run, evaluation.report.aggregate again) no longer trips on it
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": "."},
                       cwd=REPO_ROOT)
    assert p.returncode == 0 and "damaged" not in p.stderr, p.stderr[-3000:]
    assert [f.name for f in (runs / "damaged").iterdir()] == [bad.name]


def test_the_bench_report_step_names_the_damaged_file_and_the_run_fails(tmp_path, monkeypatch, capfd):
    """The bench's report step (run.report, as run at the end of every bench) in the report environment."""
    runs, out = tmp_path / "runs", tmp_path / "tables"
    bad = _truncated_runs(runs)
    monkeypatch.setattr(envs, "OVERRIDES", {"report": Path(sys.executable)})  # this interpreter is the report env
    args = argparse.Namespace(no_report=False, runs_dir=runs, publish=False, update_readme=False)  # (older name)
    failures: list[str] = []
    run.report(args, out, failures)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if bad.name in ln]) == 1
    assert failures == ["report step (evaluation.report.aggregate) exited 1: see its lines above"]
    assert (runs / "damaged" / bad.name).is_file()
    assert sorted(pd.read_csv(out / "summary.csv")["method"]) == ["entropy", "fp32"]


def test_device_json_a_folder_stops_the_bench_before_any_work(tmp_path):
    work, cache = tmp_path / "work", tmp_path / "cache"
    (work / "device.json").mkdir(parents=True)  # the report folder of --runs-dir work/runs is work/
    t0 = time.time()
    p = bench_proc.bench(["--models", "resnet50", "--toolchains", "onnxruntime", "--runs-dir", str(work / "runs")],
                         {"SUITE_CACHE_DIR": str(cache)}, start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"the bench was still working after 60 s:\n{err[-2000:]}") from None
    took = time.time() - t0
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, lines[:30])
    assert lines[0] == (f"error: {work / 'device.json'} exists and is not a file (the run writes it): move it away "
                        "or pass another --out")
    assert took < 5.0, took
    assert [x.name for x in work.iterdir()] == ["device.json"] and not any((work / "device.json").iterdir())
    assert not cache.exists()  # nothing prepared


def test_a_failed_ceiling_measurement_is_a_failure_of_the_run(tmp_path, monkeypatch):
    calls = []

    def fake_run(env, argv, **kw):
        calls.append((env, argv))
        return subprocess.CompletedProcess(argv, 1 if env == "torch" else 0)

    monkeypatch.setattr(envs, "run_in_env", fake_run)
    failures: list[str] = []
    run.measure_ceilings(argparse.Namespace(threads=2), ["torch", "onnxruntime"], tmp_path, lambda name: {},
                           failures=failures)
    assert [c[0] for c in calls] == ["torch", "onnxruntime"]  # the ORT merge still runs
    assert failures == ["ceilings through torch's libraries exited 1"]


def test_a_run_log_that_cannot_be_written_is_a_failure_of_the_run(tmp_path):
    (tmp_path / run.RUN_LOG).mkdir()  # made a folder after the checks (another process, a hand)
    failures: list[str] = []
    args = argparse.Namespace(weights="embedded")
    run.record_run(tmp_path, "r1", args, ["resnet50"], ["onnxruntime"], 12.0, failures, [])
    assert len(failures) == 1 and failures[0].startswith(f"could not record the run in {tmp_path / run.RUN_LOG}: "
                                                         "IsADirectoryError")
