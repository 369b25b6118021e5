"""Fixtures for the openvino environment's tests: the shared tiny-ONNX models (tests/onnx_tiny.py) plus a
transformer-like MatMul block whose weights are big enough for int4 groups (built offline, no torch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_tiny import convnet_path, h, lm_path, wide_net_path  # noqa: F401  (pytest finds fixtures by name here)

D_IN, D_OUT = 256, 384  # out != in; int4 group_size 128 -> 2 groups per output column of W_up, 3 of W_down


def tiny_matmul_block(path: Path, seed: int = 0) -> Path:
    """x [N,L,256] -> MatMul W_up (256,384) + b -> Relu -> MatMul W_down (384,256) -> + x (residual)
    -> MatMul W_head (256,384) -> y [N,L,384]; opset 17, dynamic N/L. Three constant-weight MatMuls, so
    NNCF's int4 (which keeps the last layer in int8 unless all_layers) still has int4 layers."""
    rng = np.random.default_rng(seed)

    def init(name, arr):
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w_up"], ["u0"], name="up"),
        helper.make_node("Add", ["u0", "b_up"], ["u1"], name="up_bias"),
        helper.make_node("Relu", ["u1"], ["u2"], name="act"),
        helper.make_node("MatMul", ["u2", "w_down"], ["d0"], name="down"),
        helper.make_node("Add", ["d0", "x"], ["r"], name="residual"),
        helper.make_node("MatMul", ["r", "w_head"], ["y"], name="head"),
    ]
    inits = [init("w_up", rng.normal(0, D_IN ** -0.5, (D_IN, D_OUT))), init("b_up", rng.normal(0, 0.1, D_OUT)),
             init("w_down", rng.normal(0, D_OUT ** -0.5, (D_OUT, D_IN))),
             init("w_head", rng.normal(0, D_IN ** -0.5, (D_IN, D_OUT)))]
    g = helper.make_graph(nodes, "tiny_matmul_block",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", D_IN])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", D_OUT])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="session")
def block_path(tmp_path_factory) -> Path:
    return tiny_matmul_block(tmp_path_factory.mktemp("tiny") / "block.onnx")


@pytest.fixture(scope="session")
def image_batches() -> list[np.ndarray]:
    """Calibration feed for the conv net: 12 batches of 4 images [4,3,32,32]."""
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1, (4, 3, 32, 32)).astype(np.float32) for _ in range(12)]


@pytest.fixture(scope="session")
def block_batches() -> list[dict]:
    """Calibration feed for the MatMul block: 8 dicts {"x": [2,16,256]}."""
    rng = np.random.default_rng(2)
    return [{"x": rng.normal(0, 1, (2, 16, D_IN)).astype(np.float32)} for _ in range(8)]


MLP_D, MLP_F, MLP_LAYERS = 768, 3072, 2  # GPT-2 small's MLP shapes: big enough that the matmul arithmetic dominates


def gpt2_mlp_blocks(path: Path, seed: int = 0) -> Path:
    """x [N,L,768] -> 2 x (MatMul (768,3072) -> Relu -> MatMul (3072,768) -> + x) -> y [N,L,768]: GPT-2 small's MLP
    matmuls (the bulk of its prefill arithmetic) without the rest, so the dynamic-quantization experiment runs in
    about a second per compiled copy."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(MLP_LAYERS):
        inits += [numpy_helper.from_array(rng.normal(0, MLP_D ** -0.5, (MLP_D, MLP_F)).astype(np.float32), f"fc{i}"),
                  numpy_helper.from_array(rng.normal(0, MLP_F ** -0.5, (MLP_F, MLP_D)).astype(np.float32), f"proj{i}")]
        nodes += [helper.make_node("MatMul", [x, f"fc{i}"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"act{i}"),
                  helper.make_node("MatMul", [f"a{i}", f"proj{i}"], [f"p{i}"], name=f"proj{i}"),
                  helper.make_node("Add", [f"p{i}", x], [f"y{i}"], name=f"res{i}")]
        x = f"y{i}"
    g = helper.make_graph(nodes, "gpt2_mlp_blocks",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", MLP_D])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", "L", MLP_D])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory) -> Path:
    return gpt2_mlp_blocks(tmp_path_factory.mktemp("mlp") / "mlp.onnx")
