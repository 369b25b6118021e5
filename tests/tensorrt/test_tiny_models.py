"""The tiny ONNX models the GPU tests build engines from are valid and their NumPy references agree
with a direct computation (runs everywhere: onnx is in the environment)."""
import importlib.util
from pathlib import Path

import numpy as np
import onnx


def load_tiny():
    spec = importlib.util.spec_from_file_location("trt_tiny_models", Path(__file__).with_name("tiny_models.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_image_classifier(tmp_path):
    ref = load_tiny().image_classifier(tmp_path / "c.onnx")
    m = onnx.load(str(tmp_path / "c.onnx"))
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    w1, b1, w2, b2 = init["w1"], init["b1"], init["w2"], init["b2"]
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    # the same network with explicit loops
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((2, w1.shape[0], 5, 5))
    for i in range(5):
        for j in range(5):
            conv[:, :, i, j] = np.einsum("ncij,ocij->no", xp[:, :, i:i + 3, j:j + 3], w1) + b1
    want = np.maximum(conv, 0).mean(axis=(2, 3)) @ w2.T + b2
    y = ref(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_token_lm(tmp_path):
    ref = load_tiny().token_lm(tmp_path / "lm.onnx", vocab=32)
    m = onnx.load(str(tmp_path / "lm.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    assert ref(ids).shape == (1, 3, 32)
