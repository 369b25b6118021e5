"""The onnxruntime toolchain's declared ceilings (quantization/onnxruntime/ceilings.py: MatMulInteger, one-node model)
at tiny sizes, measured by utils.ceilings in the onnxruntime env."""
import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from quantization.onnxruntime.ceilings import _ort_matmul_fp32, _ort_matmul_integer  # noqa: E402
from utils.ceilings import measure  # noqa: E402


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
    r = measure(1, 10.0, sizes=(64, 128), bursts=5, min_burst_s=0.005,
                libraries=("numpy.matmul", "onnxruntime.MatMulInteger"))
    json.dumps(r)
    lib = r["libraries"]["onnxruntime.MatMulInteger"]
    assert lib["available"] and lib["precision"] == "int8" and set(lib["sizes"]) == {"64", "128"}
    assert r["int8_library"] == "onnxruntime.MatMulInteger" and r["int8_ops_per_s"] == lib["ops_per_s"] > 1e8


def test_ort_matmul_fp32_computes_the_product_and_measure_names_the_declared_library():
    import numpy as np

    (y,) = _ort_matmul_fp32(16, 1)()
    rng = np.random.default_rng(0)
    b = rng.standard_normal((16, 16)).astype(np.float32)
    a = rng.standard_normal((16, 16)).astype(np.float32)
    np.testing.assert_allclose(y, a @ b, rtol=1e-4, atol=1e-4)
    r = measure(1, 1.0, sizes=(64,), bursts=2, min_burst_s=0.001, toolchains=["onnxruntime"], extra_bursts=False)
    assert set(r["libraries"]) == {"numpy.matmul", "onnxruntime.MatMul", "onnxruntime.MatMulInteger"}
    assert r["libraries"]["onnxruntime.MatMul"]["method"].startswith("onnxruntime MatMul float32")
