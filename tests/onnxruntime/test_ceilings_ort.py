"""utils.ceilings' onnxruntime MatMulInteger library (one-node model) at tiny sizes, in the onnxruntime env."""
import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from utils.ceilings import _ort_matmul_integer, measure  # noqa: E402


def test_ort_matmul_integer_is_exact():
    import numpy as np

    fn = _ort_matmul_integer(32, 1)
    (y,) = fn()
    assert y.dtype == np.int32 and y.shape == (32, 32)
    rng = np.random.default_rng(0)  # the factory's operands, regenerated
    b = rng.integers(-128, 128, (32, 32), dtype=np.int8)
    a = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    assert np.array_equal(y, a.astype(np.int32) @ b.astype(np.int32))


def test_measure_with_ort_int8():
    r = measure(1, 2.0, sizes=(64, 128), bursts=5, min_burst_s=0.005,
                libraries=("numpy.matmul", "onnxruntime.MatMulInteger"))
    json.dumps(r)
    lib = r["libraries"]["onnxruntime.MatMulInteger"]
    assert lib["available"] and lib["precision"] == "int8" and set(lib["sizes"]) == {"64", "128"}
    assert r["int8_library"] == "onnxruntime.MatMulInteger" and r["int8_ops_per_s"] == lib["ops_per_s"] > 1e8
