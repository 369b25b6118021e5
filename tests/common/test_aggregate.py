import math

import pandas as pd
import pytest

from evaluation.report.aggregate import aggregate
from evaluation.report.table import build_table
from utils.metrics import pack_bits
from utils.errors import SuiteError
from utils.rows import ResultRow, write_row
from utils.stats import speedup_ci

CEIL = {"fp32_ops_per_s": 100e9, "int8_ops_per_s": 400e9, "threads": 2}


def _row(toolchain, method, precision, p50, value, correct, batch=32, compute=None, **kw):
    return ResultRow(model="resnet50", weights="embedded", dataset="digits", toolchain=toolchain, method=method,
                     precision=precision, device="cpu", batch=batch, metric="top1", value=value,
                     latency_kind="host-wall", latency_p10_ms=p50 * 0.9, latency_p50_ms=p50, latency_p90_ms=p50 * 1.1,
                     latency_p99_ms=p50 * 1.2, throughput=batch / (p50 / 1000), throughput_unit="images/s",
                     ops_per_item=4e9, compute_precision=compute or precision,
                     environment={"ceilings": CEIL, "eval_sha": "abc", "cpu": "test-cpu", "threads": 2},
                     latency_samples=21,
                     extra={"n_eval": len(correct), "correct_bits": pack_bits(correct),
                            "latency": {"samples_ms": [p50 * (1 + 0.01 * ((i % 5) - 2)) for i in range(21)]}}, **kw)


def _rows():
    n = 200
    base = [True] * 190 + [False] * 10
    slightly = list(base)
    slightly[0] = False  # one flip: not significant
    much = [False] * 40 + base[40:]  # 40 flips: significant
    return [
        _row("torch", "eager", "fp32", 400.0, 95.0, base),
        _row("torch", "fx", "int8", 50.0, 94.5, slightly),
        _row("onnxruntime", "fp32", "fp32", 200.0, 95.0, base),
        _row("onnxruntime", "minmax", "int8", 80.0, 75.0, much),
        ResultRow(model="resnet50", weights="embedded", dataset="digits", toolchain="tensorrt", method="int8-entropy",
                  precision="int8", device="cuda", batch=32, metric="top1", status="skipped",
                  reason="TensorRT is not installed"),
    ], n


def test_deltas_speedups_efficiency_and_significance():
    rows, n = _rows()
    df = build_table(rows).set_index(["toolchain", "method"])
    fx = df.loc[("torch", "fx")]
    assert fx["baseline_value"] == 95.0 and fx["delta"] == pytest.approx(-0.5)
    assert fx["speedup"] == pytest.approx(8.0)  # vs its own eager FP32
    # rows measured in separate processes: an unpaired bootstrap interval over both rows' samples
    assert fx["speedup_ci_low"] < 8.0 < fx["speedup_ci_high"] and "unpaired" in fx["speedup_vs"]
    assert fx["speedup_ci_high"] / fx["speedup_ci_low"] < 1.05
    assert fx["speedup_vs_best_fp32"] == pytest.approx(4.0)  # vs ONNX Runtime FP32, the fastest FP32 row
    assert fx["best_fp32"] == "onnxruntime/fp32"
    # rows of separate processes: the unpaired bootstrap over both rows' latency samples (+-2 % around each p50), an
    # interval strictly around the point and inside the extreme ratios those samples allow
    ort_s, fx_s = (r.extra["latency"]["samples_ms"] for r in (rows[2], rows[1]))
    assert (fx["speedup_best_ci_low"], fx["speedup_best_ci_high"]) == pytest.approx(
        speedup_ci(ort_s, fx_s, paired=False)[1:])
    assert 4.0 * 0.98 / 1.02 <= fx["speedup_best_ci_low"] < 4.0 < fx["speedup_best_ci_high"] <= 4.0 * 1.02 / 0.98
    # 4 GFLOP x 640 images/s over the 400 GOP/s INT8 ceiling
    assert fx["efficiency"] == pytest.approx(100 * 4e9 * 640 / 400e9)
    assert bool(fx["delta_significant"]) is False
    mm = df.loc[("onnxruntime", "minmax")]
    assert mm["speedup"] == pytest.approx(2.5) and bool(mm["delta_significant"]) is True
    assert mm["delta_p_value"] < 1e-6
    eager = df.loc[("torch", "eager")]
    assert eager["efficiency"] == pytest.approx(100 * 4e9 * 80 / 100e9)
    trt = df.loc[("tensorrt", "int8-entropy")]
    assert trt["status"] == "skipped" and trt["reason"] == "TensorRT is not installed" and math.isnan(trt["value"])


def test_files_written_and_marked(tmp_path):
    rows, _ = _rows()
    runs = tmp_path / "runs"
    for r in rows:
        write_row(r, runs)
    aggregate(runs, tmp_path)
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert len(csv) == 5 and {"speedup_vs_best_fp32", "efficiency", "delta_significant", "status"} <= set(csv.columns)
    md = (tmp_path / "summary.md").read_text()
    assert "| torch | fx | int8 |  | cpu | 32 | 94.50 | -0.50 ~ |" in md  # no coverage reported: an empty cell
    assert "| onnxruntime | minmax | int8 |  | cpu | 32 | 75.00 | -20.00 |" in md
    assert "skipped: TensorRT is not installed" in md
    png = (tmp_path / "accuracy_vs_latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_failed_aggregation_leaves_previous_tables_intact(tmp_path):
    (tmp_path / "summary.md").write_text("previous")
    with pytest.raises(SuiteError, match="no result rows"):
        aggregate(tmp_path / "empty-runs", tmp_path)
    assert (tmp_path / "summary.md").read_text() == "previous"


def test_pt2e_is_compared_with_fp32_under_the_same_compiler():
    rows, _ = _rows()
    base = [True] * 190 + [False] * 10
    rows += [_row("torch", "inductor", "fp32", 300.0, 95.0, base), _row("torch", "pt2e", "int8", 100.0, 95.0, base)]
    df = build_table(rows).set_index(["toolchain", "method"])
    assert df.loc[("torch", "pt2e"), "speedup"] == pytest.approx(3.0)  # inductor FP32 / pt2e, not eager / pt2e
    assert df.loc[("torch", "pt2e"), "speedup_vs_best_fp32"] == pytest.approx(2.0)  # ORT FP32 at 200 ms is fastest


def test_paired_speedup_from_the_kit_wins_and_efficiency_above_110_gets_a_note():
    rows, _ = _rows()
    base = [True] * 190 + [False] * 10
    paired = _row("torch", "fx", "int8", 50.0, 95.0, base, speedup_paired=7.5, speedup_ci_low=7.2,
                  speedup_ci_high=7.9, speedup_vs="torch/eager")
    fast = _row("onnxruntime", "fp32", "fp32", 20.0, 95.0, base)  # 4e9 x 1600 / 100e9 = 6400 %
    rows = [r for r in rows if (r.toolchain, r.method) not in (("torch", "fx"), ("onnxruntime", "fp32"))]
    df = build_table(rows + [paired, fast]).set_index(["toolchain", "method"])
    fx = df.loc[("torch", "fx")]
    assert (fx["speedup"], fx["speedup_ci_low"], fx["speedup_ci_high"]) == (7.5, 7.2, 7.9)
    assert fx["speedup_vs"] == "torch/eager"
    ort = df.loc[("onnxruntime", "fp32")]
    assert ort["efficiency"] > 110 and "above the measured fp32 ceiling" in ort["notes"]


def test_mixed_latency_kinds_are_never_compared():
    rows, _ = _rows()
    base = [True] * 190 + [False] * 10
    gpu = _row("torch", "fx", "int8", 5.0, 95.0, base).replace(latency_kind="cuda-events", method="fx")
    rows = [r for r in rows if (r.toolchain, r.method) != ("torch", "fx")] + [gpu]
    df = build_table(rows).set_index(["toolchain", "method"])
    fx = df.loc[("torch", "fx")]
    assert pd.isna(fx["speedup"]) and pd.isna(fx["speedup_vs_best_fp32"])  # no host-wall FP32 to divide by


def test_mismatched_evaluation_hash_gives_no_paired_test():
    rows, _ = _rows()
    much = [False] * 40 + [True] * 150 + [False] * 10
    other = _row("onnxruntime", "minmax", "int8", 80.0, 75.0, much)
    other = other.replace(environment={**other.environment, "eval_sha": "another-split"})
    rows = [r for r in rows if (r.toolchain, r.method) != ("onnxruntime", "minmax")] + [other]
    mm = build_table(rows).set_index(["toolchain", "method"]).loc[("onnxruntime", "minmax")]
    assert mm["delta"] == pytest.approx(-20.0)
    assert pd.isna(mm["delta_p_value"]) and pd.isna(mm["delta_significant"])  # different samples: not paired


def _lm_row(method, precision, window_nll, sha="s1", **kw):
    tokens = [64] * len(window_nll)
    ppl = math.exp(sum(window_nll) / sum(tokens))
    return ResultRow(model="gpt2", weights="embedded", dataset="text", toolchain="onnxruntime", method=method,
                     precision=precision, device="cpu", batch=1, metric="ppl", value=ppl,
                     environment={"eval_sha": sha}, extra={"window_nll": window_nll, "window_tokens": tokens}, **kw)


def test_perplexity_branch_block_bootstrap():
    import numpy as np

    rng = np.random.default_rng(0)
    base = list(rng.normal(3.0 * 64, 8.0, 60))
    same = [x + rng.normal(0, 0.05) for x in base]  # noise only
    worse = [x + 6.4 for x in base]  # +0.1 nat per token on every window
    df = build_table([_lm_row("fp32", "fp32", base), _lm_row("minmax", "int8", same),
                      _lm_row("entropy", "int8", worse)]).set_index("method")
    assert bool(df.loc["minmax", "delta_significant"]) is False
    assert bool(df.loc["entropy", "delta_significant"]) is True
    assert df.loc["entropy", "delta_ci_low"] > 0 and df.loc["minmax", "delta_ci_low"] < 0 < df.loc["minmax", "delta_ci_high"]
    other = build_table([_lm_row("fp32", "fp32", base), _lm_row("entropy", "int8", worse, sha="s2")])
    assert pd.isna(other.set_index("method").loc["entropy", "delta_significant"])  # other tokens: no paired test


def _at(row: ResultRow, stamp: str, host: str, **kw) -> ResultRow:
    return row.replace(environment={**row.environment, "timestamp": stamp, "host": host, "launcher": "ray"}, **kw)


def test_run_folders_from_several_machines_merge_by_key_and_timestamp(tmp_path):
    """Newest ok row wins; a failed row never replaces an ok one (it becomes the latest attempt); rows of another
    device and host stand beside them; the CLI takes --runs-dir several times."""
    from evaluation.report.aggregate import main
    from evaluation.report.merge import merge_runs

    rows, _ = _rows()
    eager, fx = rows[0], rows[1]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_row(_at(eager, "2026-01-01T00:00:00Z", "cpu-box"), a)
    write_row(_at(fx, "2026-01-02T00:00:00Z", "cpu-box"), a)
    write_row(_at(eager, "2026-01-03T00:00:00Z", "cpu-box-2", value=96.0), b)  # newer ok: wins
    write_row(_at(fx, "2026-01-04T00:00:00Z", "cpu-box-2", status="failed", reason="route process killed by SIGKILL"), b)
    cuda = _at(rows[2], "2026-01-01T00:00:00Z", "gpu-box").replace(device="cuda")
    write_row(cuda, c)
    write_row(_at(eager, "2025-12-01T00:00:00Z", "old-box", value=90.0), c)  # older ok: loses
    merged, attempts = merge_runs([a, b, c])
    by = {(r.toolchain, r.method, r.device): r for r in merged}
    assert len(merged) == 3
    assert by[("torch", "eager", "cpu")].value == 96.0 and by[("torch", "eager", "cpu")].environment["host"] == "cpu-box-2"
    assert by[("torch", "fx", "cpu")].status == "ok" and "SIGKILL" in attempts[fx.key].reason
    assert by[("onnxruntime", "fp32", "cuda")].environment["host"] == "gpu-box"
    assert merge_runs([c, b, a])[0] == merged  # order of the folders does not matter
    assert main(["--runs-dir", str(a), "--runs-dir", str(b), "--runs-dir", str(c), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert {"host", "launcher"} <= set(table.columns) and set(table["host"]) == {"cpu-box", "cpu-box-2", "gpu-box"}
    assert set(table["launcher"]) == {"ray"} and set(table["device"]) == {"cpu", "cuda"}
    assert table[table["method"] == "fx"]["last_attempt"].str.contains("SIGKILL").all()
    assert "Hosts: " in (tmp_path / "out" / "summary.md").read_text()


# ------------------------------------------------------------------------------ efficiency on cuda rows

GPU_CEIL = {"available": True, "gpu": "NVIDIA H200", "capability": "9.0", "library": "torch 2.11.0+cu130",
            "fp32_ops_per_s": 50e12, "bf16_ops_per_s": 700e12, "fp16_ops_per_s": 720e12, "fp8_ops_per_s": 1400e12,
            "int8_ops_per_s": 1300e12, "bf16_method": "torch.mm bfloat16", "fp32_method": "torch.mm float32"}


def _cuda_row(method, compute, p50, gpu="NVIDIA H200", ceil=GPU_CEIL, batch=32):
    return ResultRow(model="resnet50", weights="random", dataset="digits", toolchain="torch", method=method,
                     precision=compute, device="cuda", batch=batch, metric="top1", value=None,
                     latency_kind="cuda-events", latency_p10_ms=p50 * 0.95, latency_p50_ms=p50,
                     latency_p90_ms=p50 * 1.05, latency_p99_ms=p50 * 1.1, throughput=batch / (p50 / 1000),
                     throughput_unit="images/s", ops_per_item=8e9, compute_precision=compute,
                     environment={"ceilings": {**CEIL, "cuda": ceil}, "gpu": gpu, "eval_sha": "abc"},
                     latency_samples=21, extra={"latency": {"samples_ms": [p50] * 21}})


def test_cuda_rows_take_the_gpus_own_ceiling_of_their_precision():
    from evaluation.report.table import ceiling

    for compute in ("fp32", "bf16", "fp16", "fp8", "int8"):
        assert ceiling(_cuda_row("x", compute, 1.0)) == GPU_CEIL[f"{compute}_ops_per_s"]
    assert ceiling(_cuda_row("x", "int4", 1.0)) is None  # no int4 matmul measured
    assert ceiling(_cuda_row("x", "bf16", 1.0, gpu="NVIDIA A100")) is None  # another GPU's record never rates it
    assert ceiling(_cuda_row("x", "bf16", 1.0, ceil={"available": False, "reason": "no GPU"})) is None
    # a CPU row still takes the CPU's
    assert ceiling(_row("torch", "fx", "int8", 50.0, 94.5, [True])) == CEIL["int8_ops_per_s"]
    df = build_table([_cuda_row("inductor-bf16", "bf16", 2.0), _cuda_row("inductor", "fp32", 20.0)]).set_index("method")
    # 8 GFLOP x 16,000 images/s over 700 TFLOP/s
    assert df.loc["inductor-bf16", "efficiency"] == pytest.approx(100 * 8e9 * 16000 / 700e12)
    assert df.loc["inductor", "efficiency"] == pytest.approx(100 * 8e9 * 1600 / 50e12)


def test_a_cuda_row_above_its_ceiling_says_why_and_the_table_names_the_gpu_ceilings():
    from evaluation.report.markdown import render_markdown

    rows = [_cuda_row("inductor", "fp32", 2.0)]  # 8 GFLOP x 16,000/s = 128 TFLOP/s over a 50 TFLOP/s FP32 GEMM
    df = build_table(rows)
    r = df.iloc[0]
    assert r["efficiency"] == pytest.approx(256.0)
    assert "above the measured fp32 ceiling on NVIDIA H200 (torch.mm float32)" in r["notes"] and "TF32" in r["notes"]
    md = render_markdown(df, rows)
    assert ("GPU ceilings (NVIDIA H200, compute capability 9.0, through torch 2.11.0+cu130): matmul TOP/s FP32 50, "
            "BF16 700, FP16 720, FP8 1400, INT8 1300.") in md


def test_weight_only_rows_efficiency_note_says_what_the_on_off_timing_showed():
    """An OpenVINO weight-only row above the FP32 ceiling: written before the on/off measurement (compute precision
    from kernel names) its note names the measurement and the INT8 reading; measured active, it is an int8 row read
    against the INT8 ceiling with no note; measured inactive yet above, its note quotes the measured ratio."""
    base = [True] * 190 + [False] * 10
    old = _row("openvino", "int8-wo", "int8", 400.0, 95.0, base, compute="fp32",
               notes="plugin default kept: DYNAMIC_QUANTIZATION_GROUP_SIZE=32; kernel names ... 0 integer / 49 float")
    dq = {"active": True, "off_over_on_min": 1.8, "off_over_on_median": 1.7, "threshold": 1.2, "group_size": 32}
    new = _row("openvino", "int4-wo", "int4", 400.0, 95.0, base, compute="int8")
    new = new.replace(extra={**new.extra, "dynamic_quantization": dq})
    odd = _row("openvino", "int8", "int8", 400.0, 95.0, base, compute="fp32")  # a made-up inactive measurement
    odd = odd.replace(extra={**odd.extra, "dynamic_quantization": {**dq, "active": False, "off_over_on_min": 1.05}})
    df = build_table([old, new, odd]).set_index("method")
    eff_fp32 = 100 * 4e9 * 80 / 100e9  # 32 images in 400 ms over the 100 GFLOP/s FP32 ceiling
    assert df.loc["int8-wo", "efficiency"] == pytest.approx(eff_fp32)
    note = df.loc["int8-wo", "notes"]
    assert "predates the on/off measurement" in note and "DYNAMIC_QUANTIZATION_GROUP_SIZE" in note
    assert f"against the INT8 ceiling (INT8 GEMM) it is {100 * 4e9 * 80 / 400e9:.0f}%" in note
    assert "runs integer matmul kernels although" not in note  # the old, unmeasured claim is gone
    assert df.loc["int4-wo", "efficiency"] == pytest.approx(100 * 4e9 * 80 / 400e9)
    assert df.loc["int4-wo", "efficiency"] < 110 and not df.loc["int4-wo", "notes"]
    assert "did not call the plugin's dynamic quantization active" in df.loc["int8", "notes"]
    assert "took 1.05x the wall time, below 1.2x" in df.loc["int8", "notes"]  # a record without a clock: wall


def _cov_row(toolchain, method, precision, p50, coverage=None, run="r"):
    return ResultRow(model="gpt2", weights="random", dataset="random token ids", toolchain=toolchain, method=method,
                     precision=precision, device="cpu", batch=1, metric="ppl", agreement=None if precision == "fp32"
                     else 95.0, latency_kind="host-wall", latency_p10_ms=p50 * 0.95, latency_p50_ms=p50,
                     latency_p90_ms=p50 * 1.05, latency_p99_ms=p50 * 1.1, throughput=128000 / p50,
                     latency_samples=20, coverage_pct=coverage, compute_precision=precision,
                     environment={"eval_sha": "e", "run_id": run, "timestamp": "2026-12-04T10:00:00"},
                     extra={"latency": {"samples_ms": [p50 * (1 + 0.002 * (i % 5)) for i in range(20)]}})


def test_coverage_column_and_a_verdict_that_says_when_rows_did_other_work(tmp_path):
    from evaluation.report.verdict import Criterion, verdicts
    from evaluation.report.markdown import readme_block, render_markdown

    rows = [_cov_row("onnxruntime", "fp32", "fp32", 170.0), _cov_row("openvino", "fp32", "fp32", 160.0),
            _cov_row("onnxruntime", "minmax", "int8", 100.0, 67.4), _cov_row("openvino", "int8", "int8", 80.0, 67.4),
            _cov_row("openvino", "int8+head", "int8", 55.0, 98.1)]
    df = build_table(rows).set_index(["toolchain", "method"])
    assert df.loc[("openvino", "int8+head"), "coverage_pct"] == 98.1
    assert math.isnan(df.loc[("openvino", "fp32"), "coverage_pct"])
    df = df.reset_index()
    (v,) = verdicts(df, Criterion())
    assert (v["toolchain"], v["method"], v["coverage"]) == ("openvino", "int8+head", 98.1)
    # the two default-scope rows did a third less INT8 work: the line names them with their coverage
    assert v["coverage_differs"] == ["openvino int8 (67 %)", "onnxruntime minmax (67 %)"]
    md = render_markdown(df, rows)
    line = next(x for x in md.splitlines() if x.startswith("- **gpt2 · cpu · batch 1**"))
    assert "**openvino int8+head** (int8, coverage 98 %)" in line
    assert "compared with rows of other coverage" in line and "onnxruntime minmax (67 %)" in line
    assert "| openvino | int8+head | int8 | 98 | cpu | 1 |" in md
    assert "| onnxruntime | minmax | int8 | 67 | cpu |" in readme_block(df)
    # rows of one coverage (within a point): the verdict compares them without that remark
    same = [r for r in rows if r.method != "int8+head"] + [_cov_row("openvino", "int8+head", "int8", 55.0, 67.9)]
    (v2,) = verdicts(build_table(same), Criterion())
    assert v2["coverage_differs"] == [] and v2["coverage"] == 67.9
