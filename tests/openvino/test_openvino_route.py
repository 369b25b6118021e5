"""The openvino route through the kit on the tiny fake model caches (tests/onnx_tiny.py): rows, calibration,
compute precision from the kernels that ran, the cached IR, and a library-missing run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

REPO = Path(__file__).resolve().parents[2]
MOD = "quantization.openvino"
# tiny LM: 32-wide layers, so int4 groups of 16 (the real GPT-2's 768/3072 take the default 128)
ARGS = ["--batches", "1,2", "--min-time", "0.01", "--min-iters", "2", "--calib-samples", "16", "--eval-limit", "64",
        "--group-size", "16"]


def rows_of(runs: Path) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    return {(r["model"], r["method"], r["batch"]): r for r in rows}


def test_cli_end_to_end_rows_calibration_and_cache(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    rd = h.fake_resnet_cache(cache)
    gd = h.fake_gpt2_cache(cache)
    r = h.run_route(MOD, ["--runs-dir", str(runs), *ARGS], cache)
    assert r.returncode == 0, r.stderr[-2000:]
    by = rows_of(runs)
    assert len(by) == (2 + 4) * 2  # resnet50 fp32/int8 + gpt2 fp32/int8/int8-wo/int4-wo, batches 1 and 2
    assert all(x["status"] == "ok" for x in by.values()), [x["reason"] for x in by.values() if x["status"] != "ok"]
    for model, methods in (("resnet50", ("fp32", "int8")), ("gpt2", ("fp32", "int8", "int8-wo", "int4-wo"))):
        fp = by[(model, "fp32", 2)]
        assert fp["compute_precision"] == "fp32" and fp["calib_samples"] is None
        assert "INFERENCE_PRECISION_HINT=f32" in fp["notes"] and "NUM_STREAMS=1" in fp["notes"]
        assert "PERFORMANCE_HINT=LATENCY" in fp["notes"]
        assert fp["extra"]["openvino_properties"]["mismatch"] == []
        q = by[(model, "int8", 2)]
        assert q["compute_precision"] == "int8", q["notes"]  # integer kernels ran (brgconv/brgemm ..._i8)
        assert q["calib_samples"] == 16 and q["calib_method"] == "nncf-minmax"
        assert q["extra"]["nncf"]["samples_fed"] == 16 and q["extra"]["runtime_precisions"]["int_compute"] > 0
        assert "NNCF quantize: preset performance" in q["notes"]
        for m in methods:
            for b in (1, 2):  # every row timed: its p50 and throughput are those of its own samples
                r = by[(model, m, b)]
                samples = r["extra"]["latency"]["samples_ms"]
                assert r["latency_samples"] == len(samples) >= 2 and min(samples) > 0
                assert r["latency_p50_ms"] == pytest.approx(float(np.percentile(samples, 50)), abs=2e-4)
                items = b * (64 if model == "gpt2" else 1)  # tokens (seq_len 64) or images per call
                assert r["throughput"] == pytest.approx(items / (r["latency_p50_ms"] / 1000.0))
    assert "model_type transformer" in by[("gpt2", "int8", 1)]["notes"]
    assert "model_type default" in by[("resnet50", "int8", 1)]["notes"]
    # INT8 against FP32 on the same 64 digits: the accuracy difference is exactly the per-sample flips, and the
    # logits stay close (a miscalibrated model moves SQNR long before it moves top-1 on 64 samples)
    q, fp = by[("resnet50", "int8", 1)], by[("resnet50", "fp32", 1)]
    assert q["fidelity_vs"] == "openvino/fp32" and q["extra"]["n_eval"] == 64
    assert q["value"] - fp["value"] == pytest.approx(100 * (q["flips_gained"] - q["flips_lost"]) / 64)
    assert q["agreement"] >= 96.0 and q["sqnr_db"] > 20.0, (q["agreement"], q["sqnr_db"])
    # weight-only rows: next-token agreement and KL against the FP32 baseline's logits on the same tokens
    for m, mode, agree, kl in (("int8-wo", "INT8_ASYM", 98.0, 1e-3), ("int4-wo", "INT4_SYM", 90.0, 0.03)):
        w = by[("gpt2", m, 1)]
        assert w["calib_samples"] == 0 and w["calib_method"] == "data-free" and mode in w["notes"]
        assert w["fidelity_vs"] == "openvino/fp32" and w["agreement"] >= agree and 0 < w["kl"] < kl, \
            (m, w["agreement"], w["kl"])
        # which arithmetic ran is measured (kernel names read f32 either way): the row's compute precision follows
        dq = w["extra"]["dynamic_quantization"]
        assert dq["weight_compressed_layers"] == 2 and dq["kernel_names_differ"] is False
        assert dq["fc_kernels_on"] == dq["fc_kernels_off"] and all(k.endswith("_f32") for k in dq["fc_kernels_on"])
        assert dq["active"] == (dq["group_size"] > 0 and dq["off_over_on_min"] >= dq["threshold"]
                                and dq["off_over_on_median"] >= dq["threshold"])
        assert w["compute_precision"] == ("int8" if dq["active"] else "fp32")
        assert "weight-compressed matmuls: runtimePrecision" in w["notes"] and "the same IR with 0 takes" in w["notes"]
    assert by[("gpt2", "int8-wo", 1)]["extra"]["dynamic_quantization"]["fc_runtime_precision"] == {"u8": 2}
    assert not any("dynamic_quantization" in by[(mod, m, 1)]["extra"]
                   for mod, m in (("gpt2", "fp32"), ("gpt2", "int8"), ("resnet50", "fp32"), ("resnet50", "int8")))
    assert "i4" in json.dumps(by[("gpt2", "int4-wo", 1)]["extra"]["weights_after"])
    assert by[("gpt2", "int4-wo", 1)]["precision"] == "int4"
    # the quantized IRs are cached and reused; fp32 reads the ONNX itself
    irs = sorted(p.name for d in (rd, gd) for p in (d / "openvino").glob("*.xml"))
    assert len(irs) == 4 and all((d / "openvino" / Path(n).with_suffix(".bin")).is_file() for d in (rd, gd)
                                 for n in (p.name for p in (d / "openvino").glob("*.xml")))
    r2 = h.run_route(MOD, ["--runs-dir", str(runs), *ARGS, "--methods", "int8"], cache)
    assert r2.returncode == 0, r2.stderr[-2000:]
    again = rows_of(runs)
    for model in ("resnet50", "gpt2"):
        q = again[(model, "int8", 1)]
        assert "cached and reused" in q["notes"] and q["calib_samples"] == 16
    assert sorted(p.name for d in (rd, gd) for p in (d / "openvino").glob("*.xml")) == irs


def test_changed_ir_is_made_again(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    d = h.fake_resnet_cache(cache)
    args = ["--model", "resnet50", "--methods", "int8", "--runs-dir", str(runs), *ARGS[:-2]]
    assert h.run_route(MOD, args, cache).returncode == 0
    (xml,) = (d / "openvino").glob("int8-*.xml")
    binf = xml.with_suffix(".bin")
    good = binf.read_bytes()
    binf.write_bytes(good[: len(good) // 2])  # truncated weights
    r = h.run_route(MOD, args, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cached artifact not reused" in r.stderr and "changed since it was made" in r.stderr
    row = json.loads(next(runs.glob("*int8*b1*.json")).read_text())
    assert row["status"] == "ok" and "reused" not in row["notes"] and row["compute_precision"] == "int8"
    assert len(binf.read_bytes()) == len(good)


def test_library_missing_gives_skipped_rows(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_resnet_cache(cache)
    h.fake_gpt2_cache(cache)
    block = tmp_path / "block" / "nncf"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text("raise ImportError('nncf blocked by the test')\n")
    env = {**os.environ, "SUITE_CACHE_DIR": str(cache), "PYTHONPATH": f"{block.parent}{os.pathsep}{REPO}"}
    r = subprocess.run([sys.executable, "-m", MOD, "--runs-dir", str(runs), *ARGS], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    by = rows_of(runs)
    assert len(by) == (2 + 4) * 2
    assert all(x["status"] == "skipped" and "nncf cannot be imported" in x["reason"] for x in by.values())
    assert not any(cache.rglob("*.xml"))


def test_bad_options_are_one_line_errors(tmp_path, h):
    r = h.run_route(MOD, ["--runs-dir", str(tmp_path), "--ratio", "0"], tmp_path / "cache")
    assert r.returncode == 2 and "--ratio must be in (0, 1]" in r.stderr
    assert "Traceback" not in r.stderr


def test_scope_reaches_nncf_and_coverage_comes_from_the_runtime_model(tmp_path, h):
    """int8 (default scope: the LM head and the act x act attention MatMuls in NNCF's ignored scope) against
    int8+head (the LM head quantized too): per token of the 64-token tiny LM, proj 1024 of 7168 MACs and the head
    2048 more, read back from the kernels the CPU plugin runs (their originalLayersNames; the head is renamed
    'logits' by the ONNX frontend)."""
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_gpt2_cache(cache)
    r = h.run_route(MOD, ["--runs-dir", str(runs), "--model", "gpt2", "--methods", "int8,int8+head,int8-wo", *ARGS],
                    cache)
    assert r.returncode == 0, r.stderr[-2000:]
    by = rows_of(runs)
    d, hd, wo = by[("gpt2", "int8", 1)], by[("gpt2", "int8+head", 1)], by[("gpt2", "int8-wo", 1)]
    assert d["coverage_pct"] == pytest.approx(100 * 1024 / 7168, abs=0.01)
    assert hd["coverage_pct"] == pytest.approx(100 * 3072 / 7168, abs=0.01)
    assert "3 MatMul/convolution ops in NNCF's ignored scope" in d["notes"]
    assert "2 MatMul/convolution ops in NNCF's ignored scope" in hd["notes"]
    for row, scope in ((d, "default"), (hd, "head")):
        c = row["extra"]["coverage"]
        assert c["scope"] == scope and c["missed"] == [] and c["extra"] == [] and "runtime model" in c["source"]
    # weight-only INT8: the weights are stored in 8 bits; the coverage follows the kernels' own precision (f32 kernels
    # that decompress the weights on this CPU: 0 %; integer kernels where the plugin quantizes activations on the fly)
    ints = wo["extra"]["runtime_precisions"]["int_compute"]
    assert (wo["coverage_pct"] > 0) == (ints > 0), (wo["coverage_pct"], ints)
    if not ints:
        assert wo["coverage_pct"] == 0.0 and wo["extra"]["coverage"]["missed"] == ["proj"]
