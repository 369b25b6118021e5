"""Layers, MACs and coverage on the torch side: the exported ONNX's MAC table equals torch's own FLOP count and names
the torch modules; the torch route reports the modules it quantized, honouring the declared scope."""
import numpy as np
import pytest
import torch

from tests.torch.test_torch_quant import TinyNet, _tiny_gpt2  # noqa: F401 (the same tiny real models)
from utils.registry import MODEL_DECLS

L = 16


def test_onnx_mac_table_equals_torch_flop_count_and_names_the_modules(tmp_path):
    """The suite's GPT-2 export of a tiny real GPT-2: 2 x the MACs counted from the ONNX = FlopCounterMode's count,
    and every weight layer is a torch module path of the model (the LM head, the blocks' Conv1D layers)."""
    from transformers.pytorch_utils import Conv1D

    from models.embedded import load_causal_lm
    from models.prepare import _LogitsOnly, count_flops, export_onnx
    from quantization.kit.macs import count_macs

    _tiny_gpt2().save_pretrained(tmp_path / "hf")
    m = load_causal_lm(tmp_path / "hf", attn_implementation="eager")  # as models.prepare loads it (SDPA has no FLOP count)
    wrapped = _LogitsOnly(m)
    path = tmp_path / "gpt2.onnx"
    export_onnx(wrapped, torch.zeros(2, 8, dtype=torch.long), path, "input_ids",
                {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}, finite_masks=True)
    t = count_macs(path, {"input_ids": np.zeros((1, L), np.int64)}, L, unit="token")
    assert 2 * t["total"] * L == count_flops(wrapped, torch.zeros(1, L, dtype=torch.long))
    weights = {x for x in t["layers"] if ":" not in x}
    modules = {n for n, mod in m.named_modules() if isinstance(mod, (Conv1D, torch.nn.Linear))}
    assert weights == modules and "lm_head" in weights
    assert {x for x in t["layers"] if ":" in x} == {f"transformer.h.{i}.attn:scores" for i in range(2)}


def test_fx_and_pt2e_report_the_modules_they_quantized():
    from quantization.torch.route import fx_quantized_modules, pt2e_quantized_modules, resnet_fx, resnet_pt2e

    torch.manual_seed(0)
    m = TinyNet().eval()
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()
    assert fx_quantized_modules(resnet_fx(m, x)) == ["c1", "c2", "fc"]
    # a scope that keeps the classifier: FX leaves it float, and says so
    assert fx_quantized_modules(resnet_fx(m, x, keep_modules=("fc",))) == ["c1", "c2"]
    q, _ = resnet_pt2e(m, x, latency_resolution=16)
    assert pt2e_quantized_modules(q) == ["c1", "c2", "fc"]


@pytest.mark.parametrize("scope,head", [("default", False), ("head", True)])
def test_torchao_follows_the_scope_and_reports_the_swapped_layers(tmp_path, scope, head):
    from quantization.torch.route import lm_quantized, quantized_linears

    _tiny_gpt2().save_pretrained(tmp_path)
    q, n = lm_quantized(str(tmp_path), "dynamic", keep=MODEL_DECLS["gpt2"].scope(scope).keeps)
    blocks = [f"transformer.h.{i}.{x}" for i in range(2) for x in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                      "mlp.c_proj")]
    assert quantized_linears(q) == blocks + (["lm_head"] if head else [])
