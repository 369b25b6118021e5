"""Tiny ONNX models with NumPy references, built offline with onnx.helper (used by the GPU tests).

Kept in a module without `test_` so pytest does not collect it; the tests load it by path
(importlib import mode gives test folders no package).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def image_classifier(path, *, classes: int = 10, channels: int = 8, seed: int = 0):
    """input [N,3,H,W] float32 -> Conv3x3(pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits [N,C]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(channels) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((classes, channels)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

    def reference(x: np.ndarray) -> np.ndarray:
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N,3,H,W,3,3
        c = np.einsum("nchwij,ocij->nohw", win, w1) + b1[None, :, None, None]
        return (np.maximum(c, 0).mean(axis=(2, 3)) @ w2.T + b2).astype(np.float32)

    return reference


def token_lm(path, *, vocab: int = 64, dim: int = 16, seed: int = 0):
    """input_ids [N,L] int64 -> Gather(embedding) -> MatMul -> logits [N,L,V] (a causal model of depth 0)."""
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((vocab, dim)) * 0.5).astype(np.float32)
    out = (rng.standard_normal((dim, vocab)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
             helper.make_node("MatMul", ["h", "out"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "L"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "L", vocab])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(out, "out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return lambda ids: (emb[np.asarray(ids)] @ out).astype(np.float32)
