"""ModelOpt ONNX route on tiny offline models: real ModelOpt quantization evaluated with ONNX Runtime."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from utils.metrics import relative_error
from quantization.modelopt_onnx import route
from quantization.kit import onnx as oc
from utils.atomic import sha256_file
from utils.errors import SuiteError

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt[onnx] is not installed")


def _images(n, seed=1, res=32):
    return np.random.default_rng(seed).standard_normal((n, 3, res, res)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory, h):
    return h.tiny_convnet(tmp_path_factory.mktemp("mo") / "conv.onnx")


@pytest.mark.parametrize("method", ["max", "entropy"])
def test_int8_input_unchanged_qdq_and_error_bound(tiny_net, tmp_path, method):
    src = tmp_path / "src.onnx"
    src.write_bytes(tiny_net.read_bytes())
    before = sha256_file(src)
    x = _images(24)
    reader = oc.ArrayCalibrationReader("input", [x[:16], x[16:]])
    out = tmp_path / "q.onnx"
    secs = route.modelopt_quantize(src, out, reader, mode="int8", calibration_method=method, calibration_eps=["cpu"],
                                   high_precision_dtype="fp32")
    assert secs > 0
    assert sha256_file(src) == before  # ModelOpt rewrites its input: the route must only hand it a copy
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 3, ops
    # every complete calibration pass fed exactly the 24 configured samples
    full = [p for p in reader.passes if p]
    assert full and full[-1] == 24 and all(p <= 24 for p in full), reader.passes
    xe = _images(8, seed=5)
    ref = oc.make_session(src, 1).run(None, {"input": xe})[0]
    q = oc.make_session(out, 1).run(None, {"input": xe})[0]
    err = relative_error(ref, q)
    assert err < 0.05, f"{method}: relative error {err:.4f}"


def test_modelopt_placement_is_not_fused_by_ort_cpu(tiny_net, tmp_path):
    out = tmp_path / "q.onnx"
    x = _images(16)
    route.modelopt_quantize(tiny_net, out, oc.ArrayCalibrationReader("input", [x]), mode="int8",
                            calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32")
    rec = oc.provider_record(out, 1, [oc.CPU_EP], {"input": x[:1]})
    # Q/DQ only on inputs (TensorRT style): ORT CPU keeps float convs and runs DequantizeLinear kernels
    assert rec.int_kernels == 0 and rec.dq_kernels >= 2, rec.ops
    assert rec.compute_precision() == "fp32"
    assert "slower than FP32" in route.ROUTE.slow_reason(rec)
    # with output quantization requested for Conv, ORT can fuse some of them into QLinearConv
    out2 = tmp_path / "q2.onnx"
    route.modelopt_quantize(tiny_net, out2, oc.ArrayCalibrationReader("input", [x]), mode="int8",
                            calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32",
                            options={"op_types_needing_output_quant": ["Conv", "Gemm"]})
    rec2 = oc.provider_record(out2, 1, [oc.CPU_EP], {"input": x[:1]})
    assert rec2.ops.get("QLinearConv", 0) >= 1, rec2.ops


def test_mo_option_parsing():
    assert route.parse_options(["dq_only=true", "op_types_needing_output_quant=Conv,Gemm", "opset=19"]) == {
        "dq_only": True, "op_types_needing_output_quant": ["Conv", "Gemm"], "opset": 19}
    assert route.parse_options(["op_types_to_quantize=Conv"]) == {"op_types_to_quantize": ["Conv"]}
    with pytest.raises(SuiteError, match="dq_only"):
        route.parse_options(["nonsense=1"])


def test_cli_corrupt_onnx_exit_2(tmp_path, h):
    cache = tmp_path / "cache"
    d = h.fake_resnet_cache(cache)
    onnx_file = d / json.loads((d / "manifest.json").read_text())["onnx"]  # stored relative to the cache folder
    onnx_file.write_bytes(onnx_file.read_bytes()[:300])  # truncated
    r = h.run_route("quantization.modelopt_onnx.route", ["--model", "resnet50", "--runs-dir", str(tmp_path / "r")], cache)
    assert r.returncode == 2, r.stderr[-1500:]
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    # the manifest's hash record catches the truncation first (one line naming the file and the fix)
    assert last.startswith("error: ") and "Traceback" not in r.stderr
    assert "changed since it was made" in last or "is not a valid ONNX model" in last


def test_cli_bad_method_lists_valid_ones(tmp_path, h):
    r = h.run_route("quantization.modelopt_onnx.route", ["--model", "gpt2", "--methods", "int3"], tmp_path / "c")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "\n" not in err and "int3" in err
    for m in ("max", "entropy", "fp8", "int4"):
        assert m in err


def test_cli_end_to_end_rows_index_and_unchanged_source(tmp_path, h):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    d = h.fake_resnet_cache(cache)
    g = h.fake_gpt2_cache(cache)
    src = d / json.loads((d / "manifest.json").read_text())["onnx"]  # stored relative to the cache folder
    before = sha256_file(src)
    args = ["--runs-dir", str(runs), "--batches", "1", "--min-time", "0.01", "--min-iters", "2",
            "--calib-samples", "16", "--eval-limit", "64", "--devices", "cpu"]
    r = h.run_route("quantization.modelopt_onnx.route", args, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sha256_file(src) == before
    rows = {(x["model"], x["method"]): x for x in (json.loads(p.read_text()) for p in runs.glob("*.json"))}
    assert len(rows) == 8
    for model in ("resnet50", "gpt2"):
        for m in ("max", "entropy"):
            row = rows[(model, m)]
            assert row["status"] == "ok", row["reason"]
            assert row["calib_samples"] == 16 and row["calib_method"] == m
            assert row["extra"]["qdq"]["QuantizeLinear"] > 0
            assert "CPUExecutionProvider" in row["notes"]
    assert "slower than FP32 on ORT CPU" in rows[("resnet50", "max")]["notes"]
    assert rows[("resnet50", "max")]["compute_precision"] == "fp32"  # simulated: no integer kernel ran
    # the tiny net's 8/16-channel convs are outside ModelOpt's FP8 Conv rule: a precise skipped row
    assert rows[("resnet50", "fp8")]["status"] == "skipped" and "no Q/DQ" in rows[("resnet50", "fp8")]["reason"]
    for row in rows.values():
        assert row["status"] in ("ok", "skipped", "failed") and (row["status"] == "ok" or row["reason"])
        assert "\n" not in row["reason"]
    index = json.loads((d / "modelopt-onnx" / "index.json").read_text())["entries"]
    for m in ("max", "entropy"):
        (e,) = [e for e in index.values() if e["method"] == m]
        assert not Path(e["path"]).is_absolute()  # relative to the index's folder: a moved cache still works
        p = d / "modelopt-onnx" / e["path"]
        assert p.is_file() and e["calib_samples"] == 16 and len(e["calib_sha"]) == 16
        assert e["file"]["size"] == p.stat().st_size and len(e["file"]["sha256"]) == 64
        oc.check_onnx(p)
    gindex = json.loads((g / "modelopt-onnx" / "index.json").read_text())["entries"]
    assert [e["calib_samples"] for e in gindex.values() if e["method"] == "max"] == [16]
    # a re-calibration with other settings adds an entry; it never repoints the first one
    before = {k: dict(v) for k, v in index.items()}
    r = h.run_route("quantization.modelopt_onnx.route", args[:-2] + ["--devices", "cpu", "--model", "resnet50",
                    "--methods", "max", "--calib-samples", "8"], cache)
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.loads((d / "modelopt-onnx" / "index.json").read_text())["entries"]
    assert len(after) == len(before) + 1
    assert all(after[k] == v for k, v in before.items())
    assert sorted(e["calib_samples"] for e in after.values() if e["method"] == "max") == [8, 16]


def test_int4_block_axis_repair_runs_on_ort(tiny_net, tmp_path):
    """ModelOpt INT4 (AWQ-clip) on a Gemm(transB=1) weight writes axis=0 for scales blocked along axis 1 (ORT
    rejects it); the route repairs the axis. (rtn_dq blocks along axis 0 and labels it so: valid as written.)"""
    out = tmp_path / "int4.onnx"
    x = _images(8)
    route.modelopt_quantize(tiny_net, out, oc.ArrayCalibrationReader("input", [x]), mode="int4",
                            calibration_method="awq_clip", calibration_eps=["cpu"], high_precision_dtype="fp32")
    m = onnx.load(str(out))
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert dq, "INT4 DequantizeLinear expected on the classifier weight"
    fixed = route.fix_block_axes(out)
    assert fixed == [dq[0].name]  # ModelOpt 0.47 wrote axis=0; the scales are blocked along axis 1
    route.check_block_scales(out)  # raises if any blocked DQ is still inconsistent
    # the repaired weight dequantizes to within INT4 rounding of the FP32 weight
    wf = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(tiny_net)).graph.initializer if i.name == "wf"))
    xe = _images(4, seed=3)
    ref = oc.make_session(tiny_net, 1).run(None, {"input": xe})[0]
    q = oc.make_session(out, 1).run(None, {"input": xe})[0]
    err = relative_error(ref, q)
    print(f"int4 relative error {err:.4f}")
    assert err < 0.15, f"INT4 (one block of 16 inputs per output) relative error {err:.3f}; repaired {fixed}; |w|max {abs(wf).max():.2f}"


# ---------------------------------------------------------------- INT4 blocks on a 256-wide GPT-2-shaped net

def _int4_weights(path: Path) -> dict:
    """node name less `_DequantizeLinear` (ModelOpt 0.47 names it after the source weight) -> (codes, scales,
    axis, block) of every blocked DequantizeLinear in the ONNX at `path`."""
    m = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "DequantizeLinear" and attrs.get("block_size"):
            assert len(n.input) == 2 or not n.input[2], f"{n.name}: symmetric INT4 expected (no zero point)"
            out[n.name.removesuffix("_DequantizeLinear")] = (inits[n.input[0]], inits[n.input[1]],
                                                             int(attrs.get("axis", 1)), int(attrs["block_size"]))
    return out


@pytest.fixture(scope="module")
def wide_int4(wide_net_path, tmp_path_factory):
    """The route's INT4 (AWQ-clip, its default) of the 256-wide GPT-2-shaped net, before and after its repair."""
    d = tmp_path_factory.mktemp("wide_int4")
    x = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)
    out = d / "int4.onnx"
    route.modelopt_quantize(wide_net_path, out, oc.ArrayCalibrationReader("x", [x]), mode="int4",
                            calibration_method="awq_clip", calibration_eps=["cpu"], high_precision_dtype="fp32")
    raw = d / "as_written.onnx"
    raw.write_bytes(out.read_bytes())
    fixed = route.fix_block_axes(out)
    return raw, out, fixed


def test_int4_wide_blocks_dequantize_to_the_weights_block_by_block(wide_net_path, wide_int4, h):
    """Every INT4 weight of a GPT-2-shaped net with >= 2 blocks of 128 inputs per output (out != in except the
    GPT-2-square attn_c_proj): the repaired artifact's blocks run along each weight's input axis, its codes are
    round-to-nearest of the FP32 weight with that block's scale, and the scale is the block's (clipped) amax / 7.
    Read along the other axis (a wrongly blocked layout), the same codes and scales fail: by shape, or by value."""
    raw, out, fixed = wide_int4
    src = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(wide_net_path)).graph.initializer}
    q = _int4_weights(out)
    assert set(q) == set(h.WIDE_WEIGHTS), sorted(q)  # all six weights are INT4
    assert fixed == [n for n in fixed if n.startswith("head_t")] and len(fixed) == 1  # only the transB=1 weight
    for name, (shape, op, in_axis) in h.WIDE_WEIGHTS.items():
        codes, scale, axis, block = q[name]
        w = src[name]
        assert codes.shape == shape and block == 128 and axis == in_axis, (name, op, codes.shape, axis)
        assert shape[in_axis] // block >= 2 and scale.shape[in_axis] == shape[in_axis] // block, name
        assert codes.min() >= -8 and codes.max() <= 7, name
        full = np.repeat(scale, block, axis=axis)
        # codes are RTN of w at the block's scale (exact but for float ties at x.5: allow 0.1% one-step flips)
        rtn = np.clip(np.round(w / full), -8, 7)
        assert np.mean(rtn != codes) <= 1e-3, (name, float(np.mean(rtn != codes)))
        # the scale is the block's amax / 7, clipped by AWQ-clip to no less than half of it
        amax = (np.abs(w).reshape(shape[0] // block, block, shape[1]).max(axis=1) if axis == 0
                else np.abs(w).reshape(shape[0], shape[1] // block, block).max(axis=2))
        assert np.all(scale <= amax / 7 * (1 + 1e-5)) and np.all(scale >= amax / 14), name
        deq = h.blocked_dequantize(codes, scale, axis, block)
        inside = np.abs(w) <= 7 * full
        step = np.abs(deq - w) / full
        assert step[inside].max() <= 0.5 + 1e-4, (name, float(step[inside].max()))
        # the same codes and scales read as blocks along the other axis
        other = 1 - axis
        try:
            wrong = h.blocked_dequantize(codes, np.ascontiguousarray(scale.T), other, block)
        except ValueError:
            assert shape[0] != shape[1], name  # out != in: caught by shape
        else:
            bad = (np.abs(wrong - w) / full)[inside]
            assert bad.max() > 1.0, (name, float(bad.max()))  # square: caught by value
    # as written by ModelOpt 0.47, the Gemm(transB=1) weight's scales contradict its `axis`: the route's checks
    with pytest.raises(RuntimeError, match="head_t"):
        route.check_block_scales(raw)
    route.check_block_scales(out)


def test_int4_wide_repaired_model_runs_on_ort_close_to_fp32(wide_net_path, wide_int4):
    raw, out, _ = wide_int4
    xe = np.random.default_rng(3).standard_normal((8, 256)).astype(np.float32)
    with pytest.raises(Exception, match="ceil"):  # ORT refuses the unrepaired model when it runs the DQ
        oc.make_session(raw, 1).run(None, {"x": xe})
    ref = oc.make_session(wide_net_path, 1).run(None, {"x": xe})[0]
    got = oc.make_session(out, 1).run(None, {"x": xe})[0]
    err = relative_error(ref, got)
    assert 1e-4 < err < 0.2, err  # INT4 changes the output, within its rounding


def test_per_node_calibration_gives_the_same_max_ranges(tiny_net, tmp_path):
    """--mo-option calibrate_per_node=true (ModelOpt's lowest-memory calibration, node by node; slow on GPT-2 small's
    3,972 nodes) gives the same max-calibration scales as whole-model calibration."""
    x = _images(24)
    scales = {}
    for per_node in (False, True):
        out = tmp_path / f"q{per_node}.onnx"
        route.modelopt_quantize(tiny_net, out, oc.ArrayCalibrationReader("input", [x[:16], x[16:]]), mode="int8",
                                calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32",
                                options={"calibrate_per_node": True} if per_node else None)
        m = onnx.load(str(out))
        scales[per_node] = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer if "scale" in i.name}
    assert scales[True] and scales[True].keys() == scales[False].keys()
    for k in scales[True]:
        np.testing.assert_allclose(scales[True][k], scales[False][k], rtol=1e-6)


def test_scope_excludes_the_kept_nodes_and_coverage_is_what_ort_ran(tmp_path, h):
    """GPT-2's default scope reaches ModelOpt as nodes_to_exclude: of the tiny LM's MatMuls only the projection gets
    Q/DQ (1024 of 7168 MACs per token); the row's coverage is what ORT's CPU EP ran in integer kernels, not the
    Q/DQ placement, and the notes say both."""
    import onnx

    cache, runs = tmp_path / "cache", tmp_path / "runs"
    g = h.fake_gpt2_cache(cache)
    args = ["--model", "gpt2", "--methods", "max", "--runs-dir", str(runs), "--batches", "1", "--min-time", "0.01",
            "--min-iters", "2", "--calib-samples", "16", "--devices", "cpu"]
    r = h.run_route("quantization.modelopt_onnx.route", args, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    (art,) = (g / "modelopt-onnx").glob("max-*.onnx")
    m = onnx.load(str(art))
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = {n.name for n in m.graph.node if n.op_type == "MatMul" and any(i in dq for i in n.input)}
    assert fed == {"proj"}  # lm_head, attn_qk, attn_av excluded by the scope
    assert "nodes_to_exclude the 3 MAC nodes it keeps" in row["notes"]
    assert "Q/DQ placed on the weights of 1 MAC layers (14.3 % of MACs)" in row["notes"]
    ints = sum(n for op, n in row["extra"]["providers"]["ops"].items() if op in oc.REDUCED_KERNELS)
    assert row["coverage_pct"] == (pytest.approx(100 * 1024 / 7168, abs=0.01) if ints else 0.0)
