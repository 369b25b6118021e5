"""The onnxruntime toolchain's device ceilings (Toolchain.ceilings): ONNX Runtime's own float32 GEMM (MLAS) and its
MatMulInteger (uint8 x int8 -> int32, B a constant initializer as in a quantized model), each a one-node model on
the CPU execution provider. onnx and onnxruntime are imported inside the factories only: elsewhere they are
recorded as unavailable.
"""
from __future__ import annotations

from typing import Callable

from utils.ceilings.provider import Library, Provider, Unavailable


def _one_node(op: str, b, a_type: str, y_type: str, threads: int):
    """An InferenceSession (CPU EP, `threads` intra-op threads) of the one-node model Y = op(A, B), B constant."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise Unavailable("onnx/onnxruntime not importable") from exc
    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], "ceiling",
        [helper.make_tensor_value_info("A", getattr(TensorProto, a_type), [n, n])],
        [helper.make_tensor_value_info("Y", getattr(TensorProto, y_type), [n, n])],
        initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any ORT failure means: not measurable here
        raise Unavailable(f"onnxruntime: {exc.__class__.__name__}: {str(exc)[:120]}") from exc


def _ort_matmul_fp32(n: int, threads: int) -> Callable[[], object]:
    """ONNX Runtime's own SGEMM (MLAS): on some CPUs faster than the BLAS torch and NumPy use."""
    import numpy as np

    rng = np.random.default_rng(0)
    sess = _one_node("MatMul", rng.standard_normal((n, n)).astype(np.float32), "FLOAT", "FLOAT", threads)
    feed = {"A": rng.standard_normal((n, n)).astype(np.float32)}
    return lambda: sess.run(None, feed)


def _ort_matmul_integer(n: int, threads: int) -> Callable[[], object]:
    import numpy as np

    rng = np.random.default_rng(0)
    sess = _one_node("MatMulInteger", rng.integers(-128, 128, (n, n), dtype=np.int8), "UINT8", "INT32", threads)
    feed = {"A": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    return lambda: sess.run(None, feed)


CEILINGS = Provider(libraries={
    "onnxruntime.MatMul": Library(_ort_matmul_fp32, "fp32", "onnxruntime MatMul float32 (one-node model, CPU EP, "
                                                            "MLAS SGEMM)"),
    "onnxruntime.MatMulInteger": Library(_ort_matmul_integer, "int8",
                                         "onnxruntime MatMulInteger uint8 x int8 -> int32 (one-node model, CPU EP)")})
