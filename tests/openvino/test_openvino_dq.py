"""Which arithmetic the weight-only rows run: the CPU plugin's runtime model gives weight-compressed matmuls the same
kernel name whether DYNAMIC_QUANTIZATION_GROUP_SIZE is on or off, so the on/off timing decides (ov.dq_account), on
GPT-2 small's MLP matmuls (768 x 3072, 128 tokens). The FP32 model is the control."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from quantization.openvino import ov as O  # noqa: E402


def int8_dot_product() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def on_off(model, x, rounds=15):
    """ov.dq_account over interleaved calls of the two compiled copies, in CPU time like the route (a shared test
    machine stretches the wall time of either copy several-fold; the CPU time a call takes it barely moves)."""
    import time

    runs = {}
    for name, group in (("off", 0), ("on", None)):
        compiled, _ = O.compile_cpu(model, 2, dynamic_quantization_group_size=group)
        rec = O.timed_run(compiled, x, budget_s=0.0, min_calls=1)  # warm-up, FullyConnected record, the setting
        runs[name] = (compiled.create_infer_request(), rec, compiled)
    ms = {"off": [], "on": []}
    cpu = {"off": [], "on": []}
    for i in range(rounds):
        for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
            request = runs[name][0]
            t, c = time.perf_counter(), time.process_time()
            request.infer(x)
            ms[name].append((time.perf_counter() - t) * 1000.0)
            cpu[name].append((time.process_time() - c) * 1000.0)
    recs = {n: {**runs[n][1], "ms": v, "min_ms": min(v), "median_ms": float(np.median(v)), "cpu_ms": cpu[n],
                "cpu_min_ms": min(cpu[n]), "cpu_median_ms": float(np.median(cpu[n])), "calls": len(v)}
            for n, v in ms.items()}
    return O.dq_account(recs["off"], recs["on"])


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(0, 1, (1, 128, 768)).astype(np.float32)


def test_fp32_control_has_no_compressed_layers_and_no_effect(mlp_path, x):
    acc = on_off(O.read_onnx(mlp_path), x)
    assert acc["weight_compressed_layers"] == 0 and acc["fc_runtime_precision"] == {"f32": 4}
    assert acc["active"] is False and acc["group_size"] > 0  # the plugin's setting is on, with nothing to act on
    assert 0.75 < acc["off_over_on_min"] < 1.3, acc


@pytest.mark.parametrize("mode, runtime", [("int8_asym", {"u8": 4}), ("int4_sym", {"i4": 3, "u8": 1})])
def test_weight_only_kernel_names_do_not_tell_the_timing_does(mlp_path, x, mode, runtime):
    model, _ = O.compress_weights(O.read_onnx(mlp_path), mode, group_size=128)
    acc = on_off(model, x)
    assert acc["fc_runtime_precision"] == runtime and acc["weight_compressed_layers"] == 4
    # the runtime model reads the same float kernel names with dynamic quantization off and on
    assert acc["kernel_names_differ"] is False and all(k.endswith("_f32") for k in acc["fc_kernels_on"]), acc
    if not int8_dot_product():
        pytest.skip("no int8 dot-product instructions (VNNI/AMX) on this CPU: what the plugin does without them was "
                    "not observed on the build machines")
    assert acc["active"] is True and acc["off_over_on_min"] >= O.DQ_ACTIVE_RATIO, acc
    assert acc["off"]["median_ms"] > acc["on"]["median_ms"] * O.DQ_ACTIVE_RATIO


def _run(cpu, group=32, compressed=4, kernels=None, wall=None):
    ms = wall or [20.0] * len(cpu)
    return {"ms": ms, "min_ms": min(ms), "median_ms": float(np.median(ms)), "cpu_ms": cpu, "cpu_min_ms": min(cpu),
            "cpu_median_ms": float(np.median(cpu)), "calls": len(cpu), "dq_group_size": group,
            "fc": {"layers": 4, "runtime": {"u8": 4}, "kernels": kernels or {"brgemm_avx512_f32": 4},
                   "weight_compressed": compressed}}


def test_dq_account_rule():
    slow, fast = _run([30.0, 31.0, 32.0]), _run([20.0, 21.0, 22.0])
    acc = O.dq_account(slow, fast)  # CPU time decides: the wall clock (20 ms both, a loaded machine) does not
    assert acc["active"] is True and acc["clock"] == "cpu" and acc["wall_off_over_on_min"] == 1.0
    assert acc["off_over_on_min"] == 1.5 and acc["off_over_on_median"] == pytest.approx(1.476)
    assert acc["on"] == {"min_ms": 20.0, "median_ms": 20.0, "cpu_min_ms": 20.0, "cpu_median_ms": 21.0, "calls": 3}
    assert acc["kernel_names_differ"] is False
    assert O.dq_account(_run([20.0] * 3, wall=[40.0] * 3), fast)["active"] is False  # a slower wall clock alone
    assert O.dq_account(slow, _run([20.0, 21.0, 22.0], group=0))["active"] is False  # the setting was off
    assert O.dq_account(slow, _run([20.0, 21.0, 22.0], compressed=0))["active"] is False  # nothing compressed
    assert O.dq_account(_run([23.0, 31.0, 32.0]), fast)["active"] is False  # best call only 1.15x
    assert O.dq_account(_run([30.0, 24.0, 25.0]), fast)["active"] is False  # median only 1.19x
    assert O.dq_account(_run([30.0], kernels={"brgemm_avx512_i8": 4}), fast)["kernel_names_differ"] is True
    note = O.dq_note(acc)
    assert "brgemm_avx512_f32 x4 with DYNAMIC_QUANTIZATION_GROUP_SIZE=32 and the same names with 0" in note
    assert "1.50x the cpu time (best call 30.00 vs 20.00 ms" in note and "wall time x1.00" in note
    assert "compute precision int8" in note


def test_dq_command_writes_one_line_per_repeat_and_a_pooled_line(tmp_path, h):
    cache = tmp_path / "cache"
    h.fake_gpt2_cache(cache)
    out = tmp_path / "dq.csv"
    r = h.run_route("quantization.openvino.dq", ["--model", "gpt2", "--weights", "embedded", "--methods",
                                                         "fp32,int8-wo", "--repeats", "2", "--budget", "0.05",
                                                         "--out", str(out), "--calib-samples", "16"], cache)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(x["method"], x["repeat"], x["order"]) for x in lines] == [
        ("fp32", "1", "off-on"), ("fp32", "2", "on-off"), ("fp32", "pooled", ""),
        ("int8-wo", "1", "off-on"), ("int8-wo", "2", "on-off"), ("int8-wo", "pooled", "")]
    by = {(x["method"], x["repeat"]): x for x in lines}
    assert by[("fp32", "pooled")]["weight_compressed_layers"] == "0" and by[("fp32", "pooled")]["active"] == "False"
    wo = by[("int8-wo", "pooled")]
    assert int(wo["weight_compressed_layers"]) > 0 and wo["kernel_names_differ"] == "False"
    assert '"u8"' in wo["fc_runtime_precision"]
    ratio = float(wo["off_over_on_min"])  # CPU time
    assert ratio == pytest.approx(float(wo["off_cpu_min_ms"]) / float(wo["on_cpu_min_ms"]), rel=1e-3)
    assert float(wo["wall_off_over_on_min"]) == pytest.approx(float(wo["off_min_ms"]) / float(wo["on_min_ms"]), rel=1e-3)
    assert (wo["active"] == "True") == (ratio >= O.DQ_ACTIVE_RATIO and float(wo["off_over_on_median"]) >= O.DQ_ACTIVE_RATIO)
