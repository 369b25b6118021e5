"""bench --cluster local, end to end on this machine (a throw-away one-node Ray cluster with one bench slot)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import bench, route_processes, run_bench, wait_for
from utils.registry import TOOLCHAINS

SMALL = ["--models", "resnet50", "--batches", "1", "--eval-limit", "32", "--calib-samples", "16", "--min-iters", "2",
         "--no-ceilings", "--no-report"]
CUDA_ONLY = [t for t, tc in TOOLCHAINS.items() if set(tc.devices) == {"cuda"}]


def rows_of(runs: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in runs.glob("*.json")}


@pytest.fixture(scope="module")
def local_and_ray(real_cache, tmp_path_factory):
    """The same small bench (torch and onnxruntime on the embedded ResNet50), locally and through Ray."""
    tmp = tmp_path_factory.mktemp("same")
    args = SMALL + ["--toolchains", "torch,onnxruntime", "--methods", "eager,fx,fp32,minmax", "--min-time", "0.05",
                    "--devices", "cpu"]
    rc, log = run_bench(args + ["--runs-dir", str(tmp / "local")], real_cache, tmp / "node")
    assert rc == 0, log[-3000:]
    rc, log = run_bench(args + ["--runs-dir", str(tmp / "ray"), "--cluster", "local"], real_cache, tmp / "node")
    assert rc == 0, log[-3000:]
    return rows_of(tmp / "local"), rows_of(tmp / "ray"), log


def test_ray_rows_match_the_local_bench(local_and_ray):
    local, ray_rows, _ = local_and_ray
    assert set(local) == set(ray_rows) and len(local) == 4
    for k, r in ray_rows.items():
        assert r["status"] == "ok", (k, r["reason"])
        assert (r["value"], r["top5"]) == (local[k]["value"], local[k]["top5"]), k
        env = r["environment"]
        assert env["launcher"] == "ray" and local[k]["environment"]["launcher"] == "local"
        assert env["host"] == platform.node() and env["cluster"]["host"] == platform.node()
        assert env["git_commit"] not in ("", "unknown")  # the driver's commit, though the node's copy has no .git
        assert env["cluster"]["resources"] == {"bench_slot": 1}


def test_timing_tasks_on_one_node_never_overlap(local_and_ray):
    _, ray_rows, _ = local_and_ray
    spans: dict[str, set] = {}
    for r in ray_rows.values():
        c = r["environment"]["cluster"]
        assert c["task_start"] <= c["route_start"] < c["route_end"] <= c["task_end"]
        spans.setdefault(c["node_id"], set()).add((c["task_start"], c["task_end"]))
    for node, s in spans.items():
        s = sorted(s)
        assert len(s) == 2  # torch and onnxruntime: two tasks
        for (a0, a1), (b0, b1) in zip(s, s[1:]):
            assert a1 <= b0, f"tasks overlapped on {node}: {a0}-{a1} and {b0}-{b1}"


def test_a_killed_route_is_retried_and_a_route_needing_a_gpu_is_skipped(tiny_cache, tmp_path):
    # two batches: the kit writes every variant's batch-1 rows, then times batch 2, when the hook kills the route
    args = SMALL + ["--toolchains", ",".join(["onnxruntime", *CUDA_ONLY]), "--methods", "fp32,minmax,entropy",
                    "--batches", "1,2", "--min-time", "1", "--runs-dir", str(tmp_path / "runs"), "--cluster", "local",
                    "--retries", "1"]
    rc, log = run_bench(args, tiny_cache, tmp_path / "node", {"SUITE_CLUSTER_TEST_CRASH": "onnxruntime/resnet50:1"})
    rows = rows_of(tmp_path / "runs")
    ort = {k: r for k, r in rows.items() if r["toolchain"] == "onnxruntime" and r["device"] == "cpu"}
    assert len(ort) == 6 and all(r["status"] == "ok" and not r["pending"] for r in ort.values()), log[-3000:]
    attempts = sorted(r["environment"]["cluster"]["attempt"] for r in ort.values())
    # attempt 1 died while timing (batch 1 timed, batch 2 not): no item finished, so every item was re-run in
    # attempt 2, whose complete rows replaced the first attempt's
    assert set(attempts) == {2}, attempts
    assert "trying again" in log and "SIGKILL" in log
    if shutil.which("nvidia-smi"):
        return  # a GPU machine: the cuda-only rows may run
    gpu = [r for r in rows.values() if r["toolchain"] in CUDA_ONLY]
    assert gpu and all(r["status"] == "skipped" and '"GPU": 1' in r["reason"] for r in gpu)
    assert rc == 0, log[-3000:]


def test_a_route_killed_on_every_attempt_gets_failed_rows(tiny_cache, tmp_path):
    # each attempt scores every variant (rows written at once, latency pending), times batch 1, and is killed while
    # timing batch 2: after the last attempt the batch-1 rows are finished, the batch-2 rows keep their scores (not
    # timed) with the failure (the signal, the attempt) beside them as their latest attempt
    args = SMALL + ["--toolchains", "onnxruntime", "--methods", "fp32,minmax,entropy", "--batches", "1,2",
                    "--min-time", "1", "--runs-dir", str(tmp_path / "runs"), "--cluster", "local", "--retries", "1",
                    "--devices", "cpu"]
    rc, log = run_bench(args, tiny_cache, tmp_path / "node", {"SUITE_CLUSTER_TEST_CRASH": "onnxruntime/resnet50:9"})
    assert rc == 1, log[-3000:]
    rows = rows_of(tmp_path / "runs")
    assert all(r["status"] == "ok" for r in rows.values()), log[-3000:]
    assert sorted((r["method"], r["batch"]) for r in rows.values() if not r["pending"]) == [
        ("entropy", 1), ("fp32", 1), ("minmax", 1)]
    assert sorted((r["method"], r["batch"]) for r in rows.values() if r["pending"]) == [
        ("entropy", 2), ("fp32", 2), ("minmax", 2)]
    failed = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "attempts").glob("*.json")]
    assert sorted((r["method"], r["batch"]) for r in failed) == [("entropy", 2), ("fp32", 2), ("minmax", 2)]
    assert all(r["status"] == "failed" and "SIGKILL" in r["reason"] and "attempt 2 of 2" in r["reason"] for r in failed)
    assert all(r["environment"]["launcher"] == "ray" for r in rows.values())
    assert "FAILED" in [ln for ln in log.splitlines() if ln.strip()][-1]


def test_ctrl_c_cancels_the_tasks_and_writes_no_partial_rows(tiny_cache, tmp_path):
    node = tmp_path / "node"
    args = SMALL + ["--toolchains", "onnxruntime", "--methods", "fp32,minmax", "--min-time", "60",
                    "--runs-dir", str(tmp_path / "runs"), "--cluster", "local"]
    p = bench(args, tiny_cache, node, start_new_session=True)
    wait_for(p, "onnxruntime/resnet50: submitted")
    for _ in range(300):  # the route is running (timing a 60 s row)
        if route_processes(str(node)):
            break
        time.sleep(0.2)
    assert route_processes(str(node)), "route process not found"
    time.sleep(2)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "interrupted" in err, err[-3000:]
    assert not list((tmp_path / "runs").glob("*.json"))  # nothing from the cancelled route
    assert not [f for f in tmp_path.rglob("*.tmp")]
    for _ in range(50):
        if not route_processes(str(node)):
            break
        time.sleep(0.2)
    assert not route_processes(str(node)), "the route process outlived the cancelled task"
