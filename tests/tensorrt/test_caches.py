"""Calibration-cache validity/invalidation and engine-cache version/GPU checks (no TensorRT)."""
import json

import pytest

from quantization.tensorrt.cache import CalibKey, CalibrationCache, DeviceInfo, EngineCache
from utils.errors import SuiteError

KEY = CalibKey(onnx_sha="onnx1", calib_sha="cal1", batch_size=32, trt_version="10.16.1.11", n_samples=128)
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0")
A100 = DeviceInfo("NVIDIA A100-SXM4-80GB", "8.0")


def fresh(tmp_path, key=KEY, **kw):
    return CalibrationCache(tmp_path, key, **kw)


def test_absent_then_written_then_hit(tmp_path):
    c = fresh(tmp_path)
    assert c.state() == "absent" and c.read() is None and c.hit is False
    c.write(memoryview(b"TRT-10161-EntropyCalibration2\ninput: 3c010a14\n"))
    header = json.loads(c.header_path.read_text())
    assert header["trt_version"] == "10.16.1.11" and header["inputs"]["calib_sha"] == "cal1"
    again = fresh(tmp_path)
    assert again.read().startswith(b"TRT-10161") and again.hit is True


@pytest.mark.parametrize("change", [dict(onnx_sha="onnx2"), dict(calib_sha="cal2"), dict(batch_size=16),
                                    dict(n_samples=64), dict(partial="drop")])
def test_model_data_or_batch_change_is_a_miss_and_gets_rewritten(tmp_path, change):
    fresh(tmp_path).write(b"old")
    new_key = CalibKey(**{**KEY.__dict__, **change})
    c = fresh(tmp_path, new_key)
    assert c.state() == "stale" and c.read() is None and c.hit is False
    c.write(b"new")
    assert fresh(tmp_path, new_key).read() == b"new"
    assert fresh(tmp_path).state() == "stale"  # the old inputs no longer match


def test_other_tensorrt_version_same_inputs_is_a_clear_error(tmp_path):
    fresh(tmp_path).write(b"x")
    other = CalibKey(**{**KEY.__dict__, "trt_version": "10.15.1.29"})
    with pytest.raises(SuiteError) as e:
        fresh(tmp_path, other).read()
    msg = str(e.value)
    assert "10.16.1.11" in msg and "10.15.1.29" in msg and "--rebuild" in msg and "\n" not in msg
    assert fresh(tmp_path, other, rebuild=True).read() is None  # --rebuild recalibrates


def test_missing_header_is_recalibrated(tmp_path):
    c = fresh(tmp_path)
    c.path.write_bytes(b"orphan")
    assert c.state() == "stale" and c.read() is None


def test_calib_key_depends_on_everything():
    keys = {KEY.key, CalibKey(**{**KEY.__dict__, "trt_version": "11.0"}).key,
            CalibKey(**{**KEY.__dict__, "batch_size": 8}).key, CalibKey(**{**KEY.__dict__, "onnx_sha": "z"}).key,
            CalibKey(**{**KEY.__dict__, "calib_sha": "z"}).key}
    assert len(keys) == 5


def test_engine_cache_hit_and_miss(tmp_path):
    ec = EngineCache(tmp_path, "fp16", "k1")
    assert ec.check("10.16.1.11", H100) is False
    ec.save(b"plan", "10.16.1.11", H100, build_seconds=3.5)
    assert ec.check("10.16.1.11", H100) is True
    assert ec.load("10.16.1.11", H100) == b"plan" and ec.meta()["build_seconds"] == 3.5
    assert EngineCache(tmp_path, "fp16", "k2").check("10.16.1.11", H100) is False  # other inputs, other file
    assert ec.path.name == "fp16-k1.engine" and ec.sidecar.name == "fp16-k1.engine.json"


def test_engine_from_other_version_is_a_one_line_error(tmp_path):
    EngineCache(tmp_path, "fp32", "k").save(b"plan", "10.15.1.29", H100)
    with pytest.raises(SuiteError) as e:
        EngineCache(tmp_path, "fp32", "k").check("10.16.1.11", H100)
    msg = str(e.value)
    assert "10.15.1.29" in msg and "10.16.1.11" in msg and "--rebuild" in msg and "\n" not in msg


def test_engine_from_other_gpu_is_a_one_line_error(tmp_path):
    EngineCache(tmp_path, "int8-entropy", "k").save(b"plan", "10.16.1.11", A100)
    with pytest.raises(SuiteError) as e:
        EngineCache(tmp_path, "int8-entropy", "k").load("10.16.1.11", H100)
    msg = str(e.value)
    assert "A100" in msg and "sm_80" in msg and "H100" in msg and "sm_90" in msg and "\n" not in msg


def test_engine_without_sidecar_is_rebuilt(tmp_path):
    ec = EngineCache(tmp_path, "fp32", "k")
    ec.path.write_bytes(b"plan")
    assert ec.check("10.16.1.11", H100) is False


def test_device_info_str():
    assert str(H100) == "NVIDIA H100 80GB HBM3 (sm_90)"
