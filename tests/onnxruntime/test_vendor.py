"""The route beside ONNX Runtime's own recipe (evaluation/analysis/vendor.py) on the tiny LM: both built for real, timed in
the same trials, the CSV the command writes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.onnx_tiny import REPO


def test_measure_times_the_route_beside_the_recipe_and_writes_the_csv(tmp_path, h):
    cache = tmp_path / "cache"
    d = h.fake_gpt2_cache(cache)
    part = tmp_path / "part.json"
    env = {**os.environ, "SUITE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "evaluation.analysis.vendor", "measure", "--toolchain", "onnxruntime", "--model",
                        "gpt2", "--weights", "embedded", "--batches", "1,2", "--min-iters", "3", "--calib-samples", "16",
                        "--part", str(part)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(part.read_text())
    assert [(x["route_method"], x["batch"], x["status"]) for x in rows] == [("minmax", 1, "ok"), ("minmax", 2, "ok")]
    for x in rows:
        assert x["trials"] == 3 and x["route_p50_ms"] > 0 and x["vendor_p50_ms"] > 0
        # the ratio is route / recipe from the same trials, its interval around it
        assert x["ci_low"] <= x["route_vs_vendor"] <= x["ci_high"]
        assert x["within_10pct"] in ("yes", "no", "unclear")
        assert (x["within_10pct"] == "yes") == (abs(x["route_vs_vendor"] - 1) <= 0.10)
        # the same scope on both sides, read from each side's own executed kernels: the projection only (of 7168
        # MACs per token, 1024), the LM head and the attention MatMuls left float by both
        assert x["route_coverage_pct"] == x["vendor_coverage_pct"] == pytest.approx(100 * 1024 / 7168, abs=0.1)
        assert "allow_spinning=0" in x["note"]
    # the recipe's artifact is cached beside the route's, keyed by what made it
    assert len(list((d / "vendor").glob("ort-quantize_static-*.onnx"))) == 1

    from evaluation.analysis.vendor import FIELDS, write_csv

    path = write_csv(tmp_path / "vendor_gpt2.csv", rows)
    with open(path, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == list(FIELDS) and [g["batch"] for g in got] == ["1", "2"]


def test_bad_selections_are_one_line_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, msg in ((["--toolchains", "modelopt-onnx"], "unknown toolchain"),
                      (["--models", "resnet50", "--methods", "dynamic"], "select no (route, vendor recipe) pair"),
                      (["--publish", "--out", str(tmp_path)], "drop --out")):
        r = subprocess.run([sys.executable, "-m", "evaluation.analysis.vendor", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
