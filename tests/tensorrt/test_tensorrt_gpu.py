"""Real TensorRT on a real GPU: build, calibrate, run and time tiny engines.

Skips with a reason where TensorRT is not installed or no CUDA device is present (every
build machine and CI); run on a GPU machine with TensorRT 10.x (or 11.x: the fp16 and
int8-entropy tests then check that those variants are reported unavailable).
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's package index or an NGC container)")
pytestmark = pytest.mark.requires_cuda

from utils.metrics import relative_error  # noqa: E402
from quantization.tensorrt.cache import CalibKey, CalibrationCache  # noqa: E402
from quantization.tensorrt.calib import CalibrationStream  # noqa: E402
from utils.harness import Latency  # noqa: E402
from quantization.tensorrt.gpu import Stream, device_info  # noqa: E402
from quantization.tensorrt.plan import (build_plan, calibration_profile, image_profile, image_profiles,  # noqa: E402
                                              pad_right, text_profile, text_profiles)
from quantization.tensorrt.trt_backend import (EngineRunner, build_serialized, make_entropy_calibrator,  # noqa: E402
                                                     make_logger)


def tiny():
    spec = importlib.util.spec_from_file_location("trt_tiny_models", Path(__file__).with_name("tiny_models.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def logger():
    return make_logger(trt)


def build_and_run(logger, onnx_path, plan, profile, x, **kw):
    runner = EngineRunner(trt, logger, build_serialized(trt, logger, onnx_path, plan, profile, **kw))
    try:
        return runner.infer(x), runner
    finally:
        runner.close()


@pytest.mark.parametrize("method,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_classifier_matches_numpy(tmp_path, logger, method, tol):
    plan = build_plan(method, trt.__version__)
    if not plan.available:
        pytest.skip(plan.reason)
    ref = tiny().image_classifier(tmp_path / "c.onnx")
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    y, _ = build_and_run(logger, tmp_path / "c.onnx", plan, image_profile((1, 4), eval_resolution=16), x)
    assert y.shape == (4, 10)
    assert relative_error(ref(x), y) < tol


def test_entropy_calibration_writes_then_reuses_its_cache(tmp_path, logger):
    plan = build_plan("int8-entropy", trt.__version__)
    if not plan.available:
        assert "removed implicit INT8 calibration" in plan.reason
        pytest.skip(plan.reason)
    ref = tiny().image_classifier(tmp_path / "c.onnx")
    calib = np.random.default_rng(1).standard_normal((20, 3, 16, 16)).astype(np.float32)
    batches = CalibrationStream(calib, 8)
    key = CalibKey(onnx_sha="tiny", calib_sha="r1", batch_size=8, trt_version=trt.__version__, n_samples=20)
    profile = image_profile((1, 8), eval_resolution=16, calib_batch=8)
    x = calib[:4]
    fed = []
    for _ in range(2):
        cache = CalibrationCache(tmp_path, key)
        stream = Stream()
        cal = make_entropy_calibrator(trt, batches, cache, stream)
        y, _ = build_and_run(logger, tmp_path / "c.onnx", plan, profile, x, calibrator=cal,
                             calib_profile=calibration_profile(batches.batch_shape, "input"))
        fed.append(cal.fed)
        cal.release()
        stream.destroy()
        assert relative_error(ref(x), y) < 0.2
    assert fed == [3, 0]  # 20 samples in batches of 8, last one padded; then the cache is read
    assert cache.path.stat().st_size > 0


def test_lm_int64_input_fixed_length_and_padding(tmp_path, logger):
    ref = tiny().token_lm(tmp_path / "lm.onnx", vocab=64)
    plan = build_plan("fp32", trt.__version__)
    engine = build_serialized(trt, logger, tmp_path / "lm.onnx", plan, text_profile((1, 2), seq_len=16))
    runner = EngineRunner(trt, logger, engine)
    try:
        ids = np.random.default_rng(0).integers(0, 64, (1, 10), dtype=np.int64)
        y = runner.infer(pad_right(ids, 16))[:, :10]
        assert relative_error(ref(ids), y) < 1e-4
        runner.set_input(np.zeros((2, 16), np.int64))
        timer = runner.gpu_timer(repeat=4)
        lat = Latency.from_values([timer(runner.enqueue) for _ in range(5)], kind="cuda-events", items_per_call=32)
        assert lat.p50_ms > 0
        runner.e2e_timer()(runner.e2e_call)
    finally:
        runner.close()


def test_lm_one_profile_per_batch(tmp_path, logger):
    ref = tiny().token_lm(tmp_path / "lm.onnx", vocab=64)
    plan = build_plan("fp32", trt.__version__)
    engine = build_serialized(trt, logger, tmp_path / "lm.onnx", plan, text_profiles((1, 4), seq_len=16))
    runner = EngineRunner(trt, logger, engine)
    try:
        assert len(runner.profiles) == 3
        for b, index in [(4, 1), (1, 0), (2, 2)]:
            ids = np.random.default_rng(b).integers(0, 64, (b, 16), dtype=np.int64)
            assert relative_error(ref(ids), runner.infer(ids)) < 1e-4
            assert runner.context.active_optimization_profile == index
    finally:
        runner.close()


def test_device_info():
    d = device_info(0)
    assert d.name and d.compute_capability.count(".") == 1
