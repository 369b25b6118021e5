"""bench --cluster ADDRESS on a Ray cluster of several nodes on this host (ray.cluster_utils.Cluster: a head without a
bench slot and two worker nodes with one each), one of which is killed while it runs a route."""
from __future__ import annotations

import json
import os
import platform
import re
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import bench, route_processes, wait_for

# default methods: fp32, minmax and minmax's calibration twins entropy and percentile, which are timed at batch 1
# only, so they finish (item records) while fp32 and minmax are still being timed at batch 2
ARGS = ["--models", "resnet50", "--toolchains", "onnxruntime", "--batches", "1,2", "--eval-limit", "32",
        "--calib-samples", "16", "--min-iters", "2", "--min-time", "3", "--no-ceilings", "--no-report",
        "--devices", "cpu", "--retries", "1"]
PLANNED = {("fp32", 1), ("fp32", 2), ("minmax", 1), ("minmax", 2), ("entropy", 1), ("percentile", 1)}
EARLY = {"entropy", "percentile"}


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    """A head (no bench slot, no CPU for tasks) and two worker nodes with one bench slot each; each worker node
    has its own model cache folder (SUITE_NODE_CACHE_DIR, inherited by its processes). Ray's default settings."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # nodes and driver on one private host
    small = dict(object_store_memory=100 * 1024 ** 2, include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, **small))
    nodes = {}
    try:
        for name in ("node-a", "node-b"):
            monkeypatch.setenv("SUITE_NODE_CACHE_DIR", str(tmp_path / name))
            nodes[name] = cluster.add_node(num_cpus=1, resources={"bench_slot": 1}, **small)
        monkeypatch.delenv("SUITE_NODE_CACHE_DIR")
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()


def records_of(runs: Path) -> dict:
    out = {}
    for f in (runs / "items").glob("*.json"):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[rec["item"]["method"]] = rec
    return out


def test_a_node_killed_mid_run_costs_only_its_unfinished_items(tiny_cache, tmp_path, two_nodes):
    """The node running the route is killed once two of its four items have finished (and reached the driver): those
    keep their rows from attempt 1; the other two run again from the start on the other node (attempt 2); every
    planned row exists once, one ok record per item, no failed attempt kept."""
    cluster, nodes = two_nodes
    runs = tmp_path / "runs"
    t0 = time.time()
    p = bench(ARGS + ["--runs-dir", str(runs), "--cluster", cluster.address], tiny_cache, tmp_path / "driver-node",
              {"RAY_AUTH_MODE": "disabled"})
    head = wait_for(p, "onnxruntime/resnet50: submitted (attempt 1")
    run_id = re.search(r"run (\S+-ray)", head).group(1)
    seen: list[tuple[float, str]] = []

    def drain(f) -> None:
        for line in f:
            seen.append((time.time(), line))

    drains = [threading.Thread(target=drain, args=(f,), daemon=True) for f in (p.stdout, p.stderr)]
    for t in drains:  # nothing may block on a full pipe while the test watches the node
        t.start()
    victim = None
    while victim is None:  # the node running the route, once the driver holds the twins' records
        assert p.poll() is None and time.time() - t0 < 400, "the route never finished its first items"
        on = [n for n in nodes if route_processes(str(tmp_path / n))]
        if on and set(records_of(runs)) >= EARLY:
            victim = on[0]
        time.sleep(0.1)
    t_kill = time.time()
    cluster.remove_node(nodes[victim], allow_graceful=False)  # the machine is gone: raylet, workers, route process
    survivor = next(n for n in nodes if n != victim)
    p.wait(timeout=600)
    for t in drains:
        t.join(timeout=30)
    took = time.time() - t0
    log = head + "".join(line for _, line in seen)
    assert p.returncode == 0, log[-4000:]
    assert not route_processes(str(tmp_path / victim))  # the route process died with its node

    lost = re.search(r"task lost on the cluster (\d+) s after it was submitted", log)
    assert lost and "trying again" in log, log[-4000:]
    assert "submitted (attempt 2, needs {\"bench_slot\": 1}, 2 item(s): fp32, minmax)" in log, log[-4000:]
    rows = {f.stem: json.loads(f.read_text()) for f in runs.glob("*.json")}
    assert {(r["method"], r["batch"]) for r in rows.values()} == PLANNED and len(rows) == len(PLANNED)  # no loss
    for r in rows.values():
        c = r["environment"]["cluster"]
        assert r["status"] == "ok" and not r["pending"] and r["latency_p50_ms"] > 0, r["reason"]
        assert r["environment"]["run_id"] == run_id and r["environment"]["launcher"] == "ray"
        assert c["host"] == platform.node()
        if r["method"] in EARLY:  # finished on the lost node before it went: kept
            assert c["attempt"] == 1 and c["node_id"] == nodes[victim].node_id and c["task_start"] < t_kill
        else:  # unfinished there: run again, from the start, on the other node
            assert c["attempt"] == 2 and c["node_id"] == nodes[survivor].node_id and c["task_start"] >= t_kill - 1
    assert not (runs / "attempts").exists() or not list((runs / "attempts").iterdir())  # no failed attempt kept
    recs = records_of(runs)
    assert sorted(recs) == ["entropy", "fp32", "minmax", "percentile"]  # one record per item
    assert all(r["status"] == "ok" and r["run_id"] == run_id for r in recs.values())
    assert sorted(k for r in recs.values() for k in r["rows"]) == sorted(rows)  # every row once
    # what the lost node cost: the first attempt's time on the two items it had not finished
    t_noticed, lost_line = next((t, line) for t, line in seen if "task lost on the cluster" in line)
    retry = next(r["environment"]["cluster"] for r in rows.values() if r["environment"]["cluster"]["attempt"] == 2)
    assert t_noticed - t_kill < 60
    print(f"\nlost node: attempt 1 lost {lost.group(1)} s after its submission (the driver noticed "
          f"{t_noticed - t_kill:.1f} s after the kill); the retry's task took {retry['task_end'] - retry['task_start']:.0f} s "
          f"(route {retry['route_end'] - retry['route_start']:.0f} s) for 2 of 4 items; whole run {took:.0f} s\n"
          f"{lost_line.strip()}")
