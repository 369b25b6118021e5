"""trt_backend against the strict fake TensorRT (tests/tensorrt/fake_trt.py): calibration checks, every
returned status checked, one optimization profile per timed batch selected at run time, TF32 cleared."""
import numpy as np
import pytest

from quantization.tensorrt import trt_backend
from quantization.tensorrt.cache import CalibKey, CalibrationCache
from quantization.tensorrt.calib import CalibrationError, CalibrationStream
from quantization.tensorrt.plan import (build_plan, calibration_profile, image_profile, image_profiles,
                                              text_profiles)
from quantization.tensorrt.trt_backend import EngineRunner, build_serialized, make_entropy_calibrator
from tests.tensorrt import fake_trt
from tests.tensorrt.fake_trt import BUILDS, FakeBuffer, FakeStream, make_fake_trt, write_onnx

V10, V11 = "10.16.1.11", "11.1.0"
SEQ = 16


@pytest.fixture(autouse=True)
def fake_device(monkeypatch):
    fake_trt.reset()
    fake_trt.patch_device(monkeypatch, trt_backend)


def calib_setup(tmp_path, n=20, batch=8, res=8):
    x = np.random.default_rng(0).standard_normal((n, 3, res, res)).astype(np.float32)
    stream = CalibrationStream(x, batch)
    key = CalibKey(onnx_sha="s", calib_sha="c", batch_size=stream.batch_size, trt_version=V10, n_samples=n)
    return stream, CalibrationCache(tmp_path, key)


def build_int8(trt, tmp_path, stream, cache, calibrator=None, res=8):
    onnx = write_onnx(tmp_path / "m.onnx", "cls")
    cal = calibrator or make_entropy_calibrator(trt, stream, cache, FakeStream())
    profiles = image_profiles((1, 2), eval_resolution=res, latency_resolution=res, calib_batch=stream.batch_size)
    data = build_serialized(trt, trt.Logger(), onnx, build_plan("int8-entropy", trt.__version__), profiles,
                            calibrator=cal, calib_profile=calibration_profile(stream.batch_shape, "input"))
    return data, cal


# ------------------------------------------------------------------ finding 1: swallowed calibrator errors

class FailingStream(CalibrationStream):
    """Its second batch cannot be produced (e.g. a data loading error)."""

    def __iter__(self):
        for i, b in enumerate(super().__iter__()):
            if i == 1:
                raise OSError("calibration batch 2 unreadable")
            yield b


def test_exception_in_get_batch_fails_the_build_instead_of_a_partly_calibrated_engine(tmp_path, capsys):
    trt = make_fake_trt(V10)
    _, cache = calib_setup(tmp_path)
    x = np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
    stream = FailingStream(x, 8)
    with pytest.raises(CalibrationError, match="OSError: calibration batch 2 unreadable"):
        build_int8(trt, tmp_path, stream, cache)
    assert "Exception caught in get_batch()" in capsys.readouterr().err  # what TensorRT does with it
    assert BUILDS[0]["fed"] == 1  # the fake TensorRT built an engine from 1 of 3 batches


def test_exception_in_read_calibration_cache_is_recorded(tmp_path):
    trt = make_fake_trt(V10)
    stream, cache = calib_setup(tmp_path)

    def broken():
        raise PermissionError("cache unreadable")

    cache.read = broken
    with pytest.raises(CalibrationError, match="PermissionError"):
        build_int8(trt, tmp_path, stream, cache)


def test_full_calibration_then_cache_hit_pass_the_check(tmp_path):
    trt = make_fake_trt(V10)
    stream, cache = calib_setup(tmp_path)
    _, cal = build_int8(trt, tmp_path, stream, cache)
    assert (cal.fed, cal.expected, cal.cache_served, cal.error) == (3, 3, False, None)
    _, cal2 = build_int8(trt, tmp_path, stream, CalibrationCache(tmp_path, cache.key))
    assert (cal2.fed, cal2.cache_served) == (0, True) and BUILDS[-1]["fed"] == 0


def test_calibrator_must_initialise_the_pybind_base():
    trt = make_fake_trt(V10)

    class Bad(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            self.x = 1

    with pytest.raises(TypeError, match="must be called when overriding __init__"):
        Bad()


def test_fake_checks_calibration_buffer_size_and_dtype(tmp_path):
    trt = make_fake_trt(V10)
    stream, cache = calib_setup(tmp_path)
    small = FakeBuffer(16)

    class TooSmall(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.fed, self.expected, self.error, self.cache_served = 0, 3, None, False

        def get_batch_size(self):
            return 8

        def get_batch(self, names):
            FakeStream().h2d(small, np.zeros(4, np.float32))
            return [int(small)]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, data):
            pass

    with pytest.raises(AssertionError, match="the binding needs 6144 bytes of FLOAT"):
        build_int8(trt, tmp_path, stream, cache, calibrator=TooSmall())


# ------------------------------------------------------------------ finding 3: TF32 off in every engine

@pytest.mark.parametrize("method", ["fp32", "fp16", "int8-entropy", "int8-qdq"])
@pytest.mark.parametrize("version", [V10, V11])
def test_tf32_is_cleared_in_every_engine(tmp_path, method, version):
    trt = make_fake_trt(version)
    plan = build_plan(method, version)
    if not plan.available:
        pytest.skip(plan.reason)
    kw = {}
    if plan.needs_calibrator:
        stream, cache = calib_setup(tmp_path)
        kw = dict(calibrator=make_entropy_calibrator(trt, stream, cache, FakeStream()),
                  calib_profile=calibration_profile(stream.batch_shape, "input"))
    profiles = image_profiles((1, 2), eval_resolution=8, latency_resolution=8, calib_batch=8)
    build_serialized(trt, trt.Logger(), write_onnx(tmp_path / "m.onnx"), plan, profiles, **kw)
    assert "TF32" in BUILDS[-1]["cleared"] and "TF32" not in BUILDS[-1]["flags"]


# ------------------------------------------------------------------ finding 4: returned statuses

def test_rejected_calibration_profile_raises(tmp_path):
    trt = make_fake_trt(V10)
    trt.reject_calibration_profile = True
    stream, cache = calib_setup(tmp_path)
    with pytest.raises(RuntimeError, match="set_calibration_profile returned False"):
        build_int8(trt, tmp_path, stream, cache)
    assert not BUILDS


def test_rejected_optimization_profile_raises(tmp_path):
    trt = make_fake_trt(V10)
    bad = image_profile((4,), eval_resolution=8, latency_resolution=8, eval_batch=2, calib_batch=2)
    bad.shapes["input"] = ((4, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))  # min > opt
    with pytest.raises(RuntimeError, match="rejected optimization profile #0"):
        build_serialized(trt, trt.Logger(), write_onnx(tmp_path / "m.onnx"), build_plan("fp32", V10), [bad])


def test_rejected_tensor_address_raises(tmp_path):
    trt = make_fake_trt(V10)
    data = build_serialized(trt, trt.Logger(), write_onnx(tmp_path / "m.onnx"), build_plan("fp32", V10),
                            image_profiles((1,), eval_resolution=8, latency_resolution=8, eval_batch=2))
    runner = EngineRunner(trt, trt.Logger(), data)

    class Misaligned(FakeBuffer):
        def __int__(self):
            return self.ptr + 8  # not 256-byte aligned: TensorRT returns False

    runner.buffers["logits"] = Misaligned()
    with pytest.raises(RuntimeError, match="set_tensor_address returned False"):
        runner.set_input(np.zeros((1, 3, 8, 8), np.float32))


# ------------------------------------------------------------------ finding 2: one profile per timed batch

def test_one_profile_per_timed_batch_and_the_runner_selects_it(tmp_path):
    trt = make_fake_trt(V10)
    profiles = text_profiles((1, 4), seq_len=SEQ, calib_batch=8)
    data = build_serialized(trt, trt.Logger(), write_onnx(tmp_path / "lm.onnx", "lm"), build_plan("fp32", V10),
                            profiles)
    assert BUILDS[0]["profiles"] == [{"input_ids": ((1, SEQ),) * 3}, {"input_ids": ((4, SEQ),) * 3},
                                     {"input_ids": ((1, SEQ), (1, SEQ), (8, SEQ))}]
    runner = EngineRunner(trt, trt.Logger(), data)
    ctx = runner.context
    for batch, index in [(4, 1), (1, 0), (3, 2), (8, 2), (4, 1)]:
        y = runner.infer(np.zeros((batch, SEQ), np.int64))
        assert y.shape == (batch, SEQ, fake_trt.VOCAB)
        assert ctx.active_optimization_profile == index == runner.profile_index
    with pytest.raises(RuntimeError, match="outside every optimization profile"):
        runner.set_input(np.zeros((9, SEQ), np.int64))


def test_image_profiles_latency_at_latency_resolution_eval_at_eval_resolution(tmp_path):
    trt = make_fake_trt(V10)
    profiles = image_profiles((1, 2), eval_resolution=8, latency_resolution=16, eval_batch=4)
    runner = EngineRunner(trt, trt.Logger(), build_serialized(
        trt, trt.Logger(), write_onnx(tmp_path / "m.onnx"), build_plan("fp32", V10), profiles))
    # the fake's logits carry 1 + the profile index that ran
    assert runner.infer(np.zeros((2, 3, 16, 16), np.float32))[0, 3] == 2.0  # profile #1, tuned for batch 2
    assert runner.infer(np.zeros((3, 3, 8, 8), np.float32))[0, 3] == 3.0  # the eval profile #2
    assert runner.infer(np.zeros((1, 3, 16, 16), np.float32))[0, 3] == 1.0


def test_single_profile_engine_never_switches(tmp_path):
    trt = make_fake_trt(V10)
    data = build_serialized(trt, trt.Logger(), write_onnx(tmp_path / "m.onnx"), build_plan("fp32", V10),
                            image_profile((1, 2), eval_resolution=8, latency_resolution=8, eval_batch=4, calib_batch=4))
    runner = EngineRunner(trt, trt.Logger(), data)
    runner.context.set_optimization_profile_async = None  # must not be called
    assert runner.infer(np.zeros((3, 3, 8, 8), np.float32)).shape == (3, fake_trt.CLASSES)


# ------------------------------------------------------------------ finding 5: timers on the runner

def test_runner_gpu_timer_and_e2e_call(tmp_path):
    trt = make_fake_trt(V10)
    runner = EngineRunner(trt, trt.Logger(), build_serialized(
        trt, trt.Logger(), write_onnx(tmp_path / "m.onnx"), build_plan("fp32", V10),
        image_profiles((2,), eval_resolution=8, latency_resolution=8, eval_batch=2)))
    with pytest.raises(RuntimeError, match="set_input"):
        runner.e2e_call()
    runner.set_input(np.ones((2, 3, 8, 8), np.float32))
    assert runner.gpu_timer(repeat=4)(runner.enqueue) == 1.5 and runner.timer.calls == [(4, 1)]
    ms = runner.e2e_timer()(runner.e2e_call)
    assert ms >= 0 and runner._host_out["logits"][0, 3] == 1.0  # the outputs came back to the host


# ------------------------------------------------------------------ finding 6: the fake per version

def test_fake_versions_differ_like_the_real_ones(tmp_path):
    t10, t11 = make_fake_trt(V10), make_fake_trt(V11)
    assert hasattr(t10, "IInt8EntropyCalibrator2") and hasattr(t10.BuilderFlag, "INT8")
    assert not hasattr(t11, "IInt8EntropyCalibrator2")
    assert not hasattr(t11.BuilderFlag, "INT8") and not hasattr(t11.BuilderFlag, "FP16")
    b = t11.Builder(t11.Logger())
    b.create_network(0)
    cfg = b.create_builder_config()
    with pytest.raises(AttributeError):
        cfg.int8_calibrator = object()
    assert not hasattr(cfg, "set_calibration_profile")
    with pytest.raises(ValueError, match="needs a calibrator"):
        build_serialized(t10, t10.Logger(), write_onnx(tmp_path / "m.onnx"), build_plan("int8-entropy", V10),
                         image_profiles((1,), eval_resolution=8, latency_resolution=8))
