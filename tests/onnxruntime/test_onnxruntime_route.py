"""ONNX Runtime route on tiny offline models: real ORT quantization, numbers asserted."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from utils.metrics import relative_error
from quantization.kit import onnx as oc
from quantization.onnxruntime import route
from utils.errors import SuiteError



def _calib_images(n=20, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_reader_feeds_exactly_the_configured_samples(convnet_path, tmp_path):
    x = _calib_images(37)
    batches = [x[i:i + 16] for i in range(0, 37, 16)]  # 16 + 16 + 5
    reader = oc.ArrayCalibrationReader("input", batches)
    route.quantize_static_onnx(convnet_path, tmp_path / "q.onnx", reader, method="minmax", task_kind="image-classification")
    # ORT's MinMax calibrator makes one pass over the reader: every sample exactly once
    assert reader.passes == [37]
    assert reader.batches_fed == 3
    assert reader.n_samples == 37


def test_calibration_batches_cover_the_shared_subset():
    from types import SimpleNamespace

    from quantization.kit.tasks import ImageData, task_for
    from utils.data import Split

    x = _calib_images(35)
    split = Split("calibration", x, np.zeros(35, np.int64), np.arange(35))
    ctx = SimpleNamespace(task=task_for("resnet50"), data=ImageData(split, split, 32))
    bs = oc.calibration_batches(ctx, 16)
    assert [b.shape[0] for b in bs] == [16, 16, 3]
    np.testing.assert_array_equal(np.concatenate(bs), x)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_has_qdq_and_small_error(convnet_path, tmp_path, method):
    out = tmp_path / f"{method}.onnx"
    x = _calib_images(32)
    reader = oc.ArrayCalibrationReader("input", [x[:16], x[16:]])
    route.quantize_static_onnx(convnet_path, out, reader, method=method, task_kind="image-classification")
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 6, ops  # activations + per-channel weights
    # per-channel S8 weights: the conv weight scales are vectors, one per output channel
    m = onnx.load(str(out))
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer if i.name.endswith("_scale")}
    assert any(v.ndim == 1 and v.size == 8 for v in scales.values())
    xe = np.random.default_rng(7).standard_normal((8, 3, 32, 32)).astype(np.float32)
    ref = oc.make_session(convnet_path, 1).run(None, {"input": xe})[0]
    q = oc.make_session(out, 1).run(None, {"input": xe})[0]
    err = relative_error(ref, q)
    assert err < 0.05, f"{method}: relative error {err:.4f} FP32 vs INT8"


def test_cpu_ep_fuses_ort_qdq_into_integer_kernels(convnet_path, tmp_path):
    out = tmp_path / "q.onnx"
    x = _calib_images(16)
    route.quantize_static_onnx(convnet_path, out, oc.ArrayCalibrationReader("input", [x]), method="minmax",
                               task_kind="image-classification")
    rec = oc.provider_record(out, 1, [oc.CPU_EP], {"input": x[:1]})
    assert rec.session[0] == oc.CPU_EP
    assert rec.nodes_by_provider.get(oc.CPU_EP, 0) > 0
    assert rec.ops.get("QLinearConv", 0) == 2, rec.ops  # both convs run as integer kernels
    assert rec.compute_precision() == "int8"


def test_gpt2_style_weight_matmuls_only(lm_path, tmp_path):
    m = onnx.load(str(lm_path))
    assert sorted(route.weight_matmuls(m)) == ["lm_head", "proj"]  # attention act x act MatMuls excluded
    assert route.lm_head_nodes(m) == ["lm_head"]
    ids = np.random.default_rng(0).integers(0, 64, (8, 16), dtype=np.int64)
    ref = oc.make_session(lm_path, 1).run(None, {"input_ids": ids})[0]
    errs = {}
    for head in ("fp32", "int8"):
        out = tmp_path / f"lm-{head}.onnx"
        info = route.quantize_static_onnx(lm_path, out, oc.ArrayCalibrationReader("input_ids", [ids]),
                                          method="minmax", task_kind="language-model", lm_head=head)
        q = onnx.load(str(out))
        quantized = {n.name for n in q.graph.node if n.op_type == "MatMul"
                     and any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
        assert ("lm_head" in quantized) == (head == "int8"), quantized
        assert "attn_qk" not in quantized and "attn_av" not in quantized
        assert info["quantized_nodes"] == (1 if head == "fp32" else 2)
        errs[head] = relative_error(ref, oc.make_session(out, 1).run(None, {"input_ids": ids})[0])
    assert errs["fp32"] < 0.03 and errs["int8"] < 0.05, errs


def test_corrupt_onnx_is_one_line_error(tmp_path, h):
    bad = tmp_path / "bad.onnx"
    good = h.tiny_convnet(tmp_path / "good.onnx")
    bad.write_bytes(good.read_bytes()[:200])  # truncated
    with pytest.raises(SuiteError) as ei:
        oc.check_onnx(bad)
    msg = str(ei.value)
    assert "\n" not in msg and "is not a valid ONNX model" in msg and str(bad) in msg


def test_cli_corrupt_onnx_exit_2(tmp_path, h):
    cache = tmp_path / "cache"
    d = h.fake_resnet_cache(cache)
    onnx_file = d / json.loads((d / "manifest.json").read_text())["onnx"]
    onnx_file.write_bytes(b"\x08\x07garbage" * 10)
    r = h.run_route("quantization.onnxruntime.route", ["--model", "resnet50", "--runs-dir", str(tmp_path / "runs")], cache)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    # the recorded hash catches it before ONNX is parsed: one line naming the file and the fix
    assert lines[-1].startswith("error: ") and str(onnx_file) in lines[-1] and "changed since it was made" in lines[-1]
    assert "models.prepare" in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("*.json"))


def test_cli_bad_method_lists_valid_ones(tmp_path, h):
    r = h.run_route("quantization.onnxruntime.route", ["--model", "resnet50", "--methods", "minmax,bogus"],
                  tmp_path / "cache")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "bogus" in err
    for m in ("fp32", "minmax", "entropy", "percentile"):
        assert m in err


def test_cli_end_to_end_rows_and_cache(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    d = h.fake_resnet_cache(cache)
    h.fake_gpt2_cache(cache)
    args = ["--runs-dir", str(runs), "--batches", "1,2", "--min-time", "0.01", "--min-iters", "2",
            "--calib-samples", "16", "--eval-limit", "64", "--devices", "cpu"]
    # every method named: the calibration twins (entropy, percentile) are timed at every batch too
    r = h.run_route("quantization.onnxruntime.route", args + ["--methods", "fp32,minmax,entropy,percentile"], cache)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    assert len(rows) == 2 * 4 * 2  # models x methods x batches
    assert all(x["status"] == "ok" for x in rows), [x["reason"] for x in rows if x["status"] != "ok"]
    by = {(x["model"], x["method"], x["batch"]): x for x in rows}
    fp = by[("resnet50", "fp32", 1)]
    assert fp["compute_precision"] == "fp32" and fp["latency_kind"] == "host-wall" and fp["throughput_unit"] == "images/s"
    assert fp["extra"]["n_eval"] == 64 and fp["top5"] >= fp["value"]
    assert "ORT_ENABLE_ALL" in fp["notes"] and "session.intra_op.allow_spinning=0" in fp["notes"]  # fast path, recorded
    for m in ("minmax", "entropy", "percentile"):
        q = by[("resnet50", m, 2)]
        assert q["compute_precision"] == "int8" and q["calib_samples"] == 16 and q["calib_method"] == m
        assert q["extra"]["calib_samples_fed"] == [16]
        assert "CPUExecutionProvider" in q["notes"]
        assert abs(q["value"] - fp["value"]) <= 100 * 8 / 64  # a few of 64 random-net predictions may flip
        g = by[("gpt2", m, 2)]
        assert g["throughput_unit"] == "tokens/s" and g["extra"]["ppl_stride"] == 32  # half the 64-token context
        gfp = by[("gpt2", "fp32", 2)]
        assert abs(g["value"] / gfp["value"] - 1) < 0.05, (g["value"], gfp["value"])
        assert g["throughput"] == pytest.approx(2 * 64 / (g["latency_p50_ms"] / 1000), rel=1e-6)
    # artifacts cached under <cache>/<model>/onnxruntime and reused by a second run
    files = sorted(p.name for p in (d / "onnxruntime").glob("*.onnx"))
    assert any(f.startswith("minmax-int8-") for f in files) and any(f.startswith("preprocessed-") for f in files)
    r2 = h.run_route("quantization.onnxruntime.route", args[:] + ["--model", "resnet50", "--methods", "minmax"], cache)
    assert r2.returncode == 0, r2.stderr[-2000:]
    row = json.loads((runs / "resnet50__embedded__onnxruntime__minmax__int8__cpu__b1__lim64.json").read_text())
    assert "cached artifact reused" in row["notes"]
    assert sorted(p.name for p in (d / "onnxruntime").glob("*.onnx")) == files


def test_devices_and_provider_record_on_cpu_build(convnet_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the cuda rows of a CPU build say why
        assert "no CUDA/TensorRT execution provider" in oc.cuda_driver_missing()
    x = np.zeros((2, 3, 32, 32), np.float32)
    rec = oc.provider_record(convnet_path, 1, [oc.CPU_EP], {"input": x})
    assert rec.session == (oc.CPU_EP,) and rec.main_provider == oc.CPU_EP
    assert rec.ops.get("FusedConv", 0) + rec.ops.get("Conv", 0) == 2 and rec.int_kernels == 0
    assert rec.compute_precision() == "fp32"


def test_artifact_names_are_keyed_by_inputs(tmp_path):
    a = oc.artifact_path(tmp_path, "minmax-int8", {"src": "aa", "calib_sha": "1", "n": 128})
    b = oc.artifact_path(tmp_path, "minmax-int8", {"src": "aa", "calib_sha": "2", "n": 128})
    c = oc.artifact_path(tmp_path, "minmax-int8", {"n": 128, "calib_sha": "1", "src": "aa"})
    assert a != b and a == c and a.name.startswith("minmax-int8-") and a.suffix == ".onnx"


def _act_scales(path):
    m = onnx.load(str(path))
    weights = {i.name for i in m.graph.initializer if i.name in ("w1", "w2", "wf")}
    return {i.name: float(onnx.numpy_helper.to_array(i)) for i in m.graph.initializer
            if i.name.endswith("_scale") and onnx.numpy_helper.to_array(i).size == 1
            and i.name[:-len("_scale")] not in weights}


def test_entropy_needs_more_bins_than_orts_default(convnet_path, tmp_path):
    x = _calib_images(32)
    # heavy-tailed activations so a clipped range beats the full one
    x[0] *= 20.0
    scales = {}
    for name, method, bins in (("minmax", "minmax", 0), ("ent_default", "entropy", 0), ("ent_2048", "entropy", 2048)):
        out = tmp_path / f"{name}.onnx"
        route.quantize_static_onnx(convnet_path, out, oc.ArrayCalibrationReader("input", [x]), method=method,
                                   task_kind="image-classification", entropy_bins=bins)
        scales[name] = _act_scales(out)
    # ORT's default (128 bins, 128 quantized bins) leaves the KL search one candidate: the MinMax range
    assert scales["ent_default"] == pytest.approx(scales["minmax"], rel=1e-6)
    # with 2048 bins the search clips: smaller scale on at least the outlier-dominated input
    smaller = [k for k in scales["minmax"] if scales["ent_2048"][k] < 0.9 * scales["minmax"][k]]
    assert smaller, (scales["minmax"], scales["ent_2048"])


def test_weights_zeroed_in_place_are_caught_by_the_hash(tmp_path, h):
    """Part of the FP32 ONNX's weights zeroed (still a parseable model): the recorded hash refuses it."""
    cache = tmp_path / "cache"
    d = h.fake_resnet_cache(cache)
    f = d / "model.onnx"
    m = onnx.load(str(f))
    init = m.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr[...] = 0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(f))
    oc.check_onnx(f)  # still a valid model
    r = h.run_route("quantization.onnxruntime.route", ["--model", "resnet50", "--runs-dir", str(tmp_path / "runs")], cache)
    assert r.returncode == 2 and "changed since it was made" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


def test_cached_artifact_changed_on_disk_is_made_again(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    d = h.fake_resnet_cache(cache)
    args = ["--model", "resnet50", "--methods", "minmax", "--runs-dir", str(runs), "--batches", "1", "--min-time",
            "0.01", "--min-iters", "2", "--calib-samples", "16", "--eval-limit", "32", "--no-preprocess"]
    assert h.run_route("quantization.onnxruntime.route", args, cache).returncode == 0
    (art,) = (d / "onnxruntime").glob("minmax-int8-*.onnx")
    good = art.read_bytes()
    art.write_bytes(good[: len(good) // 2])  # truncated in place
    r = h.run_route("quantization.onnxruntime.route", args, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cached artifact not reused" in r.stderr and "changed since it was made" in r.stderr
    row = json.loads(next(runs.glob("*minmax*.json")).read_text())
    assert row["status"] == "ok" and "cached artifact reused" not in row["notes"]
    assert art.read_bytes() == good  # made again, byte for byte the same


def test_prepared_cache_relocates_and_is_reused(tmp_path, h):
    """A prepared cache copied to another folder (a moved checkout, a container mount) is found and reused there."""
    import shutil

    cache, runs = tmp_path / "cache", tmp_path / "runs"
    h.fake_resnet_cache(cache)
    h.fake_gpt2_cache(cache)
    args = ["--methods", "fp32,minmax", "--runs-dir", str(runs), "--batches", "1", "--min-time", "0.01",
            "--min-iters", "2", "--calib-samples", "16", "--eval-limit", "32", "--devices", "cpu"]
    r1 = h.run_route("quantization.onnxruntime.route", args, cache)
    assert r1.returncode == 0, r1.stderr[-2000:]
    first = {p.name: json.loads(p.read_text()) for p in runs.glob("*.json")}
    moved = tmp_path / "elsewhere" / "cache"
    shutil.copytree(cache, moved)  # copy2 keeps modification times
    shutil.rmtree(cache)
    r2 = h.run_route("quantization.onnxruntime.route", args, moved)
    assert r2.returncode == 0, r2.stderr[-2000:]
    again = {p.name: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert set(again) == set(first) and len(first) == 2 * 2
    for k, row in again.items():
        assert row["status"] == "ok" and row["value"] == first[k]["value"]
        if row["method"] == "minmax":
            assert "cached artifact reused" in row["notes"]  # not recalibrated in the new place
            assert not Path(row["extra"]["onnx"]).is_absolute()
    assert not cache.exists()


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_bounded_calibration_collects_one_batch_at_a_time(convnet_path, tmp_path, method):
    """bounded=True (large models): ORT runs its calibrator once per batch range and merges; MinMax ranges merge
    exactly (identical scales), histograms by range extension (close); every batch is still fed exactly once."""
    x = _calib_images(48)
    outs = {}
    for bounded in (False, True):
        reader = oc.ArrayCalibrationReader("input", [x[:16], x[16:32], x[32:]])
        out = tmp_path / f"{method}-{bounded}.onnx"
        info = route.quantize_static_onnx(convnet_path, out, reader, method=method, task_kind="image-classification",
                                          bounded=bounded, entropy_bins=256 if method == "entropy" else 0)
        assert reader.passes == [48] and reader.batches_fed == 3
        assert ("calibration_memory" in info) == bounded
        m = onnx.load(str(out))
        outs[bounded] = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer if i.name.endswith("_scale")}
    assert outs[True].keys() == outs[False].keys()
    for k in outs[True]:
        if method == "minmax":
            np.testing.assert_array_equal(outs[True][k], outs[False][k])
        else:
            np.testing.assert_allclose(outs[True][k], outs[False][k], rtol=0.5)
