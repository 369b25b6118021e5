"""Tiny ONNX models built offline with onnx.helper, and fake model caches that point the routes at them.

Shared by tests/onnxruntime and tests/modelopt_onnx (imported by their conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def tiny_convnet(path: Path, seed: int = 0) -> Path:
    """input [N,3,H,W] -> conv/relu x2 -> GAP -> Gemm -> logits [N,10]; dynamic N/H/W, opset 17."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 0.3, (10, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = [_init("w1", w1), _init("b1", rng.normal(0, 0.1, 8).astype(np.float32)), _init("w2", w2),
             _init("b2", rng.normal(0, 0.1, 16).astype(np.float32)), _init("wf", wf),
             _init("bf", np.zeros(10, np.float32))]
    g = helper.make_graph(nodes, "tiny_convnet",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def tiny_lm(path: Path, vocab: int = 64, dim: int = 32, seed: int = 0) -> Path:
    """input_ids [N,L] int64 -> embedding, a weight MatMul, one self-attention-like act x act MatMul pair,
    LM head MatMul -> logits [N,L,V] (opset 17)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "wq"], ["q0"], name="proj"),
        helper.make_node("Add", ["q0", "bq"], ["q"], name="proj_bias"),
        helper.make_node("Transpose", ["q"], ["qt"], name="qt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "qt"], ["scores"], name="attn_qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="attn_scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="attn_softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "q"], ["ctx"], name="attn_av"),
        helper.make_node("Add", ["ctx", "h"], ["res"], name="residual"),
        helper.make_node("MatMul", ["res", "wo"], ["logits"], name="lm_head"),
    ]
    inits = [_init("emb", rng.normal(0, 1.0, (vocab, dim)).astype(np.float32)),
             _init("wq", rng.normal(0, 0.2, (dim, dim)).astype(np.float32)),
             _init("bq", np.zeros(dim, np.float32)), _init("scale", np.array(dim ** -0.5, np.float32)),
             _init("wo", rng.normal(0, 0.3, (dim, vocab)).astype(np.float32))]
    g = helper.make_graph(nodes, "tiny_lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "L"])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "L", vocab])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


WIDE_D, WIDE_HEAD, WIDE_VOCAB = 256, 384, 320
# name -> (weight initializer shape, op, input axis of the weight): every one has out != in or >= 2 INT4 blocks
# of 128 inputs per output; GPT-2's four linear kinds as its ONNX export writes them (Gemm, weight (in, out)),
# a Gemm(transB=1) weight (out, in) and a MatMul LM head
WIDE_WEIGHTS = {"c_attn": ((256, 768), "Gemm", 0), "attn_c_proj": ((256, 256), "Gemm", 0),
                "c_fc": ((256, 1024), "Gemm", 0), "mlp_c_proj": ((1024, 256), "Gemm", 0),
                "head_t": ((384, 256), "Gemm(transB=1)", 1), "lm_head": ((384, 320), "MatMul", 0)}


def wide_linear_net(path: Path, seed: int = 0) -> Path:
    """x [N,256] -> c_attn Gemm (256,768) -> Split q,k,v -> q*k+v -> attn_c_proj Gemm (256,256) -> +x
    -> c_fc Gemm (256,1024) -> Relu -> mlp_c_proj Gemm (1024,256) -> +r1 -> head_t Gemm(transB=1) (384,256)
    -> Relu -> lm_head MatMul (384,320) -> logits [N,320]; opset 18, dynamic N. GPT-2-shaped at 256 wide: every
    weight has >= 2 INT4 blocks of 128 inputs per output (WIDE_WEIGHTS), and each 128-input block of a column
    has its own magnitude (x0.1 .. x1.1), so a scale applied to the wrong block is visibly wrong."""
    rng = np.random.default_rng(seed)

    def weight(name):
        shape, op, in_axis = WIDE_WEIGHTS[name]
        fan_in = shape[in_axis]
        w = rng.normal(0, fan_in ** -0.5, shape).astype(np.float32)
        mag = rng.uniform(0.1, 1.1, (fan_in // 128, shape[1 - in_axis])).astype(np.float32)
        mag = np.repeat(mag, 128, axis=0)
        return _init(name, w * (mag if in_axis == 0 else mag.T))

    def bias(name, n):
        return _init(name, rng.normal(0, 0.1, n).astype(np.float32))

    d = WIDE_D
    nodes = [helper.make_node("Gemm", ["x", "c_attn", "b_attn"], ["qkv"], name="c_attn_gemm"),
             helper.make_node("Split", ["qkv"], ["q", "k", "v"], name="split", axis=1, num_outputs=3),
             helper.make_node("Mul", ["q", "k"], ["qk"], name="qk"),
             helper.make_node("Add", ["qk", "v"], ["a"], name="av"),
             helper.make_node("Gemm", ["a", "attn_c_proj", "b_aproj"], ["ap"], name="attn_c_proj_gemm"),
             helper.make_node("Add", ["ap", "x"], ["r1"], name="res1"),
             helper.make_node("Gemm", ["r1", "c_fc", "b_fc"], ["f"], name="c_fc_gemm"),
             helper.make_node("Relu", ["f"], ["fr"], name="act"),
             helper.make_node("Gemm", ["fr", "mlp_c_proj", "b_mproj"], ["mp"], name="mlp_c_proj_gemm"),
             helper.make_node("Add", ["mp", "r1"], ["r2"], name="res2"),
             helper.make_node("Gemm", ["r2", "head_t", "b_head"], ["hd"], name="head_t_gemm", transB=1),
             helper.make_node("Relu", ["hd"], ["hr"], name="act2"),
             helper.make_node("MatMul", ["hr", "lm_head"], ["logits"], name="lm_head_matmul")]
    inits = [weight("c_attn"), bias("b_attn", 3 * d), weight("attn_c_proj"), bias("b_aproj", d), weight("c_fc"),
             bias("b_fc", 4 * d), weight("mlp_c_proj"), bias("b_mproj", d), weight("head_t"),
             bias("b_head", WIDE_HEAD), weight("lm_head")]
    g = helper.make_graph(nodes, "wide_linear_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", WIDE_VOCAB])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def blocked_dequantize(codes: np.ndarray, scale: np.ndarray, axis: int, block: int) -> np.ndarray:
    """ONNX blocked DequantizeLinear (no zero point): element e uses scale[e with e[axis] // block]. Raises
    ValueError when `scale` does not have the blocked shape of `codes` along `axis`."""
    want = tuple(-(-d // block) if i == axis else d for i, d in enumerate(codes.shape))
    if tuple(scale.shape) != want:
        raise ValueError(f"scale {tuple(scale.shape)} is not the blocked shape {want} of {codes.shape} on axis {axis}")
    full = np.repeat(scale, block, axis=axis)
    full = full[tuple(slice(0, d) for d in codes.shape)]
    return codes.astype(np.float32) * full.astype(np.float32)


def model_cache_dir(cache: Path, model: str) -> Path:
    """The folder ModelSource(model, 'embedded') resolves to under SUITE_CACHE_DIR=cache (key computed in a child)."""
    out = subprocess.run([sys.executable, "-c", "from utils.specs import ModelSource; import sys; "
                          f"sys.stdout.write(ModelSource('{model}').cache_dir.name)"],
                         cwd=REPO, env={**os.environ, "SUITE_CACHE_DIR": str(cache)}, capture_output=True, text=True,
                         check=True)
    return cache / out.stdout.strip()


def fake_resnet_cache(cache: Path, onnx_path: Path | None = None) -> Path:
    d = model_cache_dir(cache, "resnet50")
    d.mkdir(parents=True, exist_ok=True)
    onnx_path = onnx_path or tiny_convnet(d / "model.onnx")
    rel = onnx_path.relative_to(d) if d in onnx_path.parents else onnx_path  # stored relative, as models.prepare does
    (d / "manifest.json").write_text(json.dumps({
        "onnx": str(rel), "files": {"onnx": fingerprint(onnx_path)}, "resolution": 32, "num_classes": 10, "latency_resolution": 224,
        "dataset": "sklearn-digits-32px", "ops_per_item": 1.0e6,
        # what models.prepare records for a classifier (the traffic estimate reads it; here the real ResNet50's count)
        "arch_name": "resnet50", "activation_elements": 16_836_106}))
    return d


def fake_gpt2_cache(cache: Path, seq_len: int = 64, vocab: int = 64) -> Path:
    d = model_cache_dir(cache, "gpt2")
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(d / "train_ids.npy", rng.integers(0, vocab, 4000, dtype=np.int64))
    np.save(d / "val_ids.npy", rng.integers(0, vocab, 200, dtype=np.int64))
    tiny_lm(d / "model.onnx", vocab)
    (d / "manifest.json").write_text(json.dumps({
        "onnx": "model.onnx", "files": {"onnx": fingerprint(d / "model.onnx")}, "train_ids": "train_ids.npy",
        "val_ids": "val_ids.npy", "seq_len": seq_len, "vocab_size": vocab, "dataset": "random-ids",
        "ops_per_item": 1.0e4,
        # what models.prepare records for a causal LM; this stand-in has no attention or MLP to describe
        "arch_name": "gpt2", "n_kv_head": None, "mlp_inner": None}))
    return d


def fingerprint(path: Path) -> dict:
    from utils.artifacts import fingerprint as fp

    return fp(path)


def run_route(module: str, args: list[str], cache: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUITE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------ fixtures (imported by both conftest.py)

@pytest.fixture(scope="session")
def convnet_path(tmp_path_factory) -> Path:
    return tiny_convnet(tmp_path_factory.mktemp("tiny") / "convnet.onnx")


@pytest.fixture(scope="session")
def lm_path(tmp_path_factory) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("tiny") / "lm.onnx")


@pytest.fixture(scope="session")
def wide_net_path(tmp_path_factory) -> Path:
    return wide_linear_net(tmp_path_factory.mktemp("tiny") / "wide.onnx")


@pytest.fixture(scope="session")
def h():
    """The helpers of this module (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(tiny_convnet=tiny_convnet, tiny_lm=tiny_lm, fake_resnet_cache=fake_resnet_cache,
                           fake_gpt2_cache=fake_gpt2_cache, run_route=run_route, model_cache_dir=model_cache_dir,
                           wide_linear_net=wide_linear_net, WIDE_WEIGHTS=WIDE_WEIGHTS,
                           blocked_dequantize=blocked_dequantize)
