"""Build-config choices per precision and TensorRT major version, profiles, keys, dtypes (no TensorRT)."""
import numpy as np
import pytest

from quantization.tensorrt.plan import (NOT_INSTALLED, BuildPlan, TrtVersion, build_plan, calibration_profile,
                                              engine_key, image_profile, image_profiles, np_dtype, pad_right,
                                              select_profile, text_profile, text_profiles, trt_unavailable)


def test_version_parse_and_order():
    assert TrtVersion.parse("10.16.1.11") == TrtVersion(10, 16, 1)
    assert TrtVersion.parse("11.0.0") > TrtVersion.parse("10.16.1")
    assert str(TrtVersion.parse("10")) == "10.0.0"
    with pytest.raises(ValueError):
        TrtVersion.parse("ten")


@pytest.mark.parametrize("method,flags,calib,strong,onnx,netflags,cp", [
    ("fp32", (), False, False, "fp32", (), "fp32"),
    ("fp16", ("FP16",), False, False, "fp32", (), "fp16"),
    ("int8-entropy", ("INT8",), True, False, "fp32", (), "int8"),
    ("int8-qdq", (), False, True, "qdq", ("STRONGLY_TYPED",), "int8"),
])
def test_plans_on_10x(method, flags, calib, strong, onnx, netflags, cp):
    p = build_plan(method, "10.16.1.11")
    assert p.available and not p.reason
    assert (p.builder_flags, p.needs_calibrator, p.strongly_typed, p.onnx, p.network_flags, p.compute_precision) == \
        (flags, calib, strong, onnx, netflags, cp)


def test_fp32_clears_tf32_so_fp32_means_fp32():
    assert build_plan("fp32", "10.16").clear_flags == ("TF32",)


@pytest.mark.parametrize("version", ["10.16.1", "11.1.0"])
def test_every_plan_clears_tf32(version):
    """fp16 / int8 engines keep some layers in FP32: those must not silently run in TF32 either."""
    for m in ("fp32", "fp16", "int8-entropy", "int8-qdq"):
        p = build_plan(m, version)
        if p.available:
            assert "TF32" in p.clear_flags and "TF32" not in p.builder_flags, m


def test_image_profiles_one_fixed_profile_per_timed_batch_plus_eval():
    ps = image_profiles((32, 1, 8), eval_resolution=16, latency_resolution=224, eval_batch=64, calib_batch=32)
    assert [p.shapes["input"][1] for p in ps] == [(1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224),
                                                   (64, 3, 16, 16)]
    for p in ps[:3]:
        lo, opt, hi = p.shapes["input"]
        assert lo == opt == hi  # batch b is tuned for exactly batch b
    assert ps[3].shapes["input"] == ((1, 3, 16, 16), (64, 3, 16, 16), (64, 3, 16, 16))
    assert select_profile(ps, "input", (1, 3, 224, 224)) == 0
    assert select_profile(ps, "input", (32, 3, 224, 224)) == 2
    assert select_profile(ps, "input", (7, 3, 16, 16)) == 3  # the last partial eval batch
    with pytest.raises(ValueError, match="outside every optimization profile"):
        select_profile(ps, "input", (2, 3, 224, 224))  # not a timed batch


def test_text_profiles_and_selection_prefers_the_tuned_profile():
    ps = text_profiles((1, 8), seq_len=128, calib_batch=16)
    assert [p.shapes["input_ids"] for p in ps] == [((1, 128),) * 3, ((8, 128),) * 3,
                                                    ((1, 128), (1, 128), (16, 128))]
    assert select_profile(ps, "input_ids", (1, 128)) == 0  # exact tuned profile, not the eval one (opt 1 too)
    assert select_profile(ps, "input_ids", (8, 128)) == 1
    assert select_profile(ps, "input_ids", (12, 128)) == 2
    with pytest.raises(ValueError):
        text_profiles((), seq_len=8)


def test_engine_key_covers_every_profile():
    plan = build_plan("fp16", "10.16")
    a = text_profiles((1, 8), seq_len=64)
    k = engine_key(onnx_sha="a", plan=plan, profile=a)
    assert k == engine_key(onnx_sha="a", plan=plan, profile=text_profiles((1, 8), seq_len=64))
    assert k != engine_key(onnx_sha="a", plan=plan, profile=text_profiles((1, 4, 8), seq_len=64))
    assert k != engine_key(onnx_sha="a", plan=plan, profile=text_profiles((1, 8), seq_len=64, calib_batch=16))
    assert k != engine_key(onnx_sha="a", plan=plan, profile=a[:1])


def test_plans_on_11x():
    fp32 = build_plan("fp32", "11.2.0")
    assert fp32.available and fp32.strongly_typed and fp32.builder_flags == ()
    qdq = build_plan("int8-qdq", "11.2.0")
    assert qdq.available and qdq.strongly_typed and qdq.onnx == "qdq"
    assert qdq.network_flags == ()  # strong typing is always on; the flag is deprecated and ignored
    ent = build_plan("int8-entropy", "11.0.0")
    assert not ent.available
    assert "removed implicit INT8 calibration" in ent.reason and "<11" in ent.reason and "int8-qdq" in ent.reason
    fp16 = build_plan("fp16", "11.0.0")
    assert not fp16.available and "FP16" in fp16.reason
    for p in (ent, fp16):
        assert "\n" not in p.reason


def test_no_11x_plan_uses_a_removed_flag():
    removed = {"FP16", "INT8", "FP8", "BF16", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
    for m in ("fp32", "fp16", "int8-entropy", "int8-qdq"):
        p = build_plan(m, "11.0")
        if p.available:
            assert not set(p.builder_flags) & removed and not p.needs_calibrator


def test_old_and_unknown():
    assert not build_plan("fp32", "8.6.1").available
    with pytest.raises(ValueError):
        build_plan("int4", "10.16")


def test_plan_key_fields_ignore_version_and_reason():
    a, b = build_plan("fp16", "10.15.0"), build_plan("fp16", "10.16.1")
    assert a.key_fields() == b.key_fields()
    assert build_plan("fp16", "10.16").key_fields() != build_plan("fp32", "10.16").key_fields()


def test_image_profile_covers_eval_calib_and_latency_shapes():
    p = image_profile((1, 32), eval_resolution=16, eval_batch=64, calib_batch=32)
    lo, opt, hi = p.shapes["input"]
    assert lo == (1, 3, 16, 16) and opt == (32, 3, 224, 224) and hi == (64, 3, 224, 224)
    for shape in [(1, 3, 224, 224), (32, 3, 224, 224), (64, 3, 16, 16), (7, 3, 16, 16)]:
        assert p.covers("input", shape)
    assert not p.covers("input", (65, 3, 224, 224))


def test_text_profile_fixed_length():
    p = text_profile((1, 8), seq_len=128, calib_batch=16)
    assert p.shapes["input_ids"] == ((1, 128), (8, 128), (16, 128))
    assert not p.covers("input_ids", (1, 64))


def test_calibration_profile_is_fixed():
    p = calibration_profile((32, 3, 16, 16), "input")
    assert p.shapes["input"] == ((32, 3, 16, 16),) * 3


def test_pad_right_is_exact_prefix():
    ids = np.arange(1, 6, dtype=np.int64)[None]
    out = pad_right(ids, 8)
    assert out.shape == (1, 8) and out.dtype == np.int64 and out.flags.c_contiguous
    assert (out[0, :5] == ids[0]).all() and (out[0, 5:] == 0).all()
    assert pad_right(np.zeros((1, 8), np.int64), 8).shape == (1, 8)
    with pytest.raises(ValueError):
        pad_right(np.zeros((1, 9), np.int64), 8)


def test_engine_key_changes_with_each_input_only():
    plan = build_plan("int8-entropy", "10.16")
    prof = text_profile((1, 8), seq_len=64)
    base = dict(onnx_sha="a" * 64, plan=plan, profile=prof, calib={"calib_sha": "c1", "batch_size": 8})
    k = engine_key(**base)
    assert k == engine_key(**base)
    assert engine_key(**base) == engine_key(**{**base, "plan": build_plan("int8-entropy", "10.15")})
    assert k != engine_key(**{**base, "onnx_sha": "b" * 64})
    assert k != engine_key(**{**base, "calib": {"calib_sha": "c2", "batch_size": 8}})
    assert k != engine_key(**{**base, "calib": {"calib_sha": "c1", "batch_size": 16}})
    assert k != engine_key(**{**base, "profile": text_profile((1, 32), seq_len=64)})
    assert k != engine_key(**{**base, "plan": build_plan("fp16", "10.16")})


def test_np_dtype():
    assert np_dtype("FLOAT") == np.float32 and np_dtype("DataType.HALF") == np.float16
    assert np_dtype("INT64") == np.int64 and np_dtype("int32") == np.int32
    with pytest.raises(ValueError):
        np_dtype("FP8")


def test_unavailable_reasons():
    assert trt_unavailable(None, None) == NOT_INSTALLED
    assert "pypi.nvidia.com" in NOT_INSTALLED and "NGC" in NOT_INSTALLED
    assert trt_unavailable("10.16.1", "cudaErrorNoDevice") == "no CUDA device (cudaErrorNoDevice)"
    assert trt_unavailable("10.16.1", None) is None


def test_buildplan_is_frozen():
    with pytest.raises(Exception):
        BuildPlan(method="fp32", precision="fp32", trt_version="10", available=True).method = "x"
