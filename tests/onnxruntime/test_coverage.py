"""MACs per layer counted from ONNX graphs (quantization/kit/macs.py) and the coverage ORT's runtime achieves under a
quantization scope: exact counts on tiny graphs, names mapped back from what ORT executed, default scope vs +head."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from quantization.kit import macs
from quantization.kit import onnx as oc
from quantization.onnxruntime import route

L = 16  # tokens of the tiny LM's latency input


def _lm_table(path):
    return macs.count_macs(path, {"input_ids": np.zeros((1, L), np.int64)}, L, unit="token")


def test_macs_of_the_tiny_lm_are_exact(lm_path):
    t = _lm_table(lm_path)
    # dim 32, vocab 64, L 16; per token: proj 32x32, scores q.k^T L x 32, context probs.v L x 32 (K = L), head 32 x 64
    assert t["layers"] == {"proj": 1024.0, "attn_qk:scores": 512.0, "attn_av:scores": 512.0, "lm_head": 2048.0}
    assert t["total"] == 4096.0 and t["items"] == L and t["unit"] == "token"
    assert [n for n, r in t["nodes"].items() if not r["weighted"]] == ["attn_qk", "attn_av"]  # act x act
    assert t["outputs"]["logits"] == "lm_head"


def test_macs_of_the_tiny_convnet_are_exact(convnet_path):
    t = macs.count_macs(convnet_path, {"input": np.zeros((1, 3, 32, 32), np.float32)}, 1, unit="image")
    # conv1: 8 x 32 x 32 outputs x (3 x 3 x 3); conv2 (stride 2): 16 x 16 x 16 x (8 x 3 x 3); fc Gemm(transB): 10 x 16
    assert t["layers"] == {"conv1": 8 * 32 * 32 * 27.0, "conv2": 16 * 16 * 16 * 72.0, "fc": 160.0}
    # per item: a batch of 2 gives the same numbers per image
    t2 = macs.count_macs(convnet_path, {"input": np.zeros((2, 3, 32, 32), np.float32)}, 2)
    assert t2["layers"] == t["layers"]


@pytest.mark.parametrize("name,weighted,layer", [
    ("/m/transformer/h.0/attn/c_attn/Gemm", True, "transformer.h.0.attn.c_attn"),
    ("/m/transformer/h.11/attn/MatMul_1", False, "transformer.h.11.attn:scores"),
    ("/m/lm_head/MatMul", True, "lm_head"),
    ("/layer1/layer1.0/downsample/downsample.0/Conv", True, "layer1.0.downsample.0"),
    ("/layer4/layer4.2/conv3/Conv", True, "layer4.2.conv3"),
    ("/fc/Gemm", True, "fc"),
    ("proj", True, "proj"),
])
def test_layer_names_are_the_torch_module_paths(name, weighted, layer):
    assert macs.node_layer(name, weighted) == layer


def test_runtime_names_map_back_to_their_nodes():
    nodes = {n: {"layer": macs.node_layer(n, w), "weighted": w, "macs": 1.0, "op": "MatMul"} for n, w in (
        ("/m/transformer/h.0/attn/MatMul", False), ("/m/transformer/h.0/attn/MatMul_1", False),
        ("/m/transformer/h.0/attn/c_attn/Gemm", True), ("/m/lm_head/MatMul", True))}
    t = {"nodes": nodes, "outputs": {"logits": "/m/lm_head/MatMul"}}
    assert macs.node_of(t, "/m/transformer/h.0/attn/MatMul/MatMulScaleFusion/") == "/m/transformer/h.0/attn/MatMul"
    assert macs.node_of(t, "/m/transformer/h.0/attn/MatMul_1") == "/m/transformer/h.0/attn/MatMul_1"
    assert macs.node_of(t, "/m/transformer/h.0/attn/c_attn/Gemm/WithoutBiases") == "/m/transformer/h.0/attn/c_attn/Gemm"
    assert macs.node_of(t, "logits") == "/m/lm_head/MatMul"  # OpenVINO names the last node after the graph output
    assert macs.node_of(t, "logits/DequantizationSubtract") == "/m/lm_head/MatMul"
    assert macs.node_of(t, "/m/transformer/h.0/attn/c_attn/Reshape_output_0_QuantizeLinear") is None
    assert macs.layers_of(t, ["logits", "/m/transformer/h.0/attn/c_attn/Gemm"]) == ["transformer.h.0.attn.c_attn",
                                                                                    "lm_head"]


def test_coverage_and_what_differs_from_the_scope():
    t = {"layers": {"a": 60.0, "b:scores": 10.0, "lm_head": 30.0}, "total": 100.0, "unit": "token"}

    def keeps(x):
        return x == "lm_head" or x.endswith(":scores")

    assert macs.coverage(t, ["a"], keeps) == {
        "coverage_pct": 60.0, "reduced_layers": 1, "layers": 3, "macs_per_item": 100.0, "unit": "token",
        "scope_pct": 60.0, "missed": [], "extra": [], "missed_pct": 0.0, "extra_pct": 0.0}
    c = macs.coverage(t, ["lm_head", "nope"], keeps)
    assert c["coverage_pct"] == 30.0 and c["missed"] == ["a"] and c["extra"] == ["lm_head"]
    assert c["unknown_layers"] == ["nope"]
    assert macs.coverage(t, macs.ALL_LAYERS)["coverage_pct"] == 100.0
    note = macs.coverage_note(c, "default", "test")
    assert "; " not in note and "differs from the 'default' quantization scope (60.0 %)" in note


def test_ort_quantizes_what_the_scope_leaves(lm_path, tmp_path):
    """The scope reaches quantize_static: the default keeps the LM head (and the act x act MatMuls) float; the
    head scope quantizes it; what ORT then executes in integer is read back from its profile."""
    from utils.registry import MODEL_DECLS

    model = onnx.load(str(lm_path))
    x = np.random.default_rng(0).integers(0, 64, (8, L), dtype=np.int64)
    t = _lm_table(lm_path)
    cov = {}
    for scope in ("default", "head"):
        out = tmp_path / f"{scope}.onnx"
        keep = MODEL_DECLS["gpt2"].scope(scope).keeps
        assert route.kept_nodes(model, keep, "language-model") == (
            ["attn_qk", "attn_av", "lm_head"] if scope == "default" else ["attn_qk", "attn_av"])
        info = route.quantize_static_onnx(lm_path, out, oc.ArrayCalibrationReader("input_ids", [x]), method="minmax",
                                          task_kind="language-model", keep=keep)
        assert info["lm_head"] == ("fp32" if scope == "default" else "int8")
        rec = oc.provider_record(out, 1, [oc.CPU_EP], {"input_ids": x[:1]})
        cov[scope] = macs.coverage(t, macs.layers_of(t, rec.reduced_nodes()), keep)
    assert cov["default"]["coverage_pct"] == 25.0 and cov["default"]["missed"] == cov["default"]["extra"] == []
    assert cov["head"]["coverage_pct"] == 75.0 and cov["head"]["missed"] == cov["head"]["extra"] == []


def test_route_rows_carry_the_coverage_of_both_scopes(tmp_path, h):
    """End to end: the route's minmax (default scope) and minmax+head rows on the tiny LM (64 tokens: per token proj
    1024, scores 2048 + 2048, head 2048 MACs), the table cached beside the manifest."""
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    d = h.fake_gpt2_cache(cache)
    args = ["--model", "gpt2", "--methods", "fp32,minmax,minmax+head", "--runs-dir", str(runs), "--batches", "1",
            "--min-time", "0.01", "--min-iters", "2", "--calib-samples", "16", "--devices", "cpu"]
    r = h.run_route("quantization.onnxruntime.route", args, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["method"]: x for x in (json.loads(p.read_text()) for p in runs.glob("*.json"))}
    assert rows["fp32"]["coverage_pct"] is None  # an FP32 row has no coverage
    assert rows["minmax"]["coverage_pct"] == pytest.approx(100 * 1024 / 7168, abs=0.01)
    assert rows["minmax+head"]["coverage_pct"] == pytest.approx(100 * 3072 / 7168, abs=0.01)
    for m, scope in (("minmax", "default"), ("minmax+head", "head")):
        c = rows[m]["extra"]["coverage"]
        assert c["scope"] == scope and c["missed"] == [] and c["extra"] == [] and "profile" in c["source"]
        assert f"as the '{scope}' quantization scope says" in rows[m]["notes"]
    side = list(d.glob("layer_macs-*.json"))  # an old manifest (no table): counted once, cached beside it
    assert len(side) == 1 and json.loads(side[0].read_text())["total"] == 7168.0
