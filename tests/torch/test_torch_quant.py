"""Torch route pieces on tiny models: real FX / torchao quantization, numbers asserted."""
import pytest
import torch

from utils.metrics import relative_error, sqnr_db


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(16)
        self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = TinyNet().eval()
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()
    return m, x


def test_fx_int8_outputs_close_to_fp32(tiny):
    from quantization.torch.route import resnet_fx

    m, x = tiny
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    q = resnet_fx(m, x[:32])
    with torch.no_grad():
        out = q(torch.from_numpy(x)).numpy()
    # INT8 per-channel weights / per-tensor activations on a 3-layer net: SQNR well above 20 dB
    assert sqnr_db(ref, out) > 20.0
    assert relative_error(ref, out) < 0.1
    names = {type(mod).__name__ for mod in q.modules()}
    assert any("Quantized" in n or n in ("ConvReLU2d", "Conv2d") for n in names)
    assert any(type(mod).__module__.startswith("torch.ao.nn.quantized") for mod in q.modules())


def test_pt2e_int8_outputs_close_to_fp32(tiny):
    from quantization.torch.route import resnet_pt2e

    m, x = tiny
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    from quantization.torch.route import qparams

    q, q_big = resnet_pt2e(m, x[:32], latency_resolution=32)
    with torch.no_grad():
        out = q(torch.from_numpy(x)).numpy()
        big = q_big(torch.randn(3, 3, 32, 32))
    assert sqnr_db(ref, out) > 20.0
    assert big.shape == (3, 10)
    targets = {str(n.target) for n in q.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets) and any("dequantize" in t for t in targets)
    # the graph exported for timing at another size carries exactly the calibrated parameters
    assert len(qparams(q)) >= 3 and qparams(q) == qparams(q_big)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()


def test_conv1d_to_linear_is_exact():
    from transformers.pytorch_utils import Conv1D

    from quantization.torch.route import conv1d_to_linear

    m = _tiny_gpt2()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(ids).logits
    n = conv1d_to_linear(m)
    assert n == 2 * 4  # c_attn, c_proj (attn), c_fc, c_proj (mlp) per block
    assert not any(isinstance(x, Conv1D) for x in m.modules())
    assert tuple(m.transformer.h[0].attn.c_attn.weight.shape) == (96, 32)  # (out, in) = (3 * n_embd, n_embd)
    with torch.no_grad():
        out = m(ids).logits
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("method,bound", [("weight-only", 0.02), ("dynamic", 0.05)])
def test_gpt2_torchao_int8_relative_error(tmp_path, method, bound):
    from quantization.torch.route import lm_quantized

    m = _tiny_gpt2()
    m.save_pretrained(tmp_path)
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(ids).logits.numpy()
    q, n = lm_quantized(str(tmp_path), method)
    with torch.no_grad():
        out = q(ids, use_cache=False).logits.numpy()
    assert n == 9  # the blocks' 8 Conv1D layers (now nn.Linear) and the LM head
    err = relative_error(ref, out)
    assert 0 < err < bound  # quantized (not identical) yet close
    wt = q.transformer.h[0].mlp.c_fc.weight
    assert "Int8" in type(wt).__name__ or "Affine" in type(wt).__name__  # torchao tensor subclass
    assert q.lm_head.weight.dtype == torch.float32 and type(q.lm_head.weight).__name__ == "Parameter"


def test_flop_counter_counts_a_linear_layer():
    from models.prepare import count_flops

    lin = torch.nn.Linear(64, 32, bias=False)
    assert count_flops(lin, torch.zeros(5, 64)) == 2 * 5 * 64 * 32


@pytest.mark.parametrize("method", ["fp32", "weight-only"])
def test_cached_generation_equals_hf_generate(tmp_path, method):
    """The route's KV-cache step (Built.generate) under the kit's greedy loop gives Hugging Face generate()'s greedy
    tokens, for the FP32 model and a torchao-quantized one."""
    from models.embedded import load_causal_lm
    from quantization.kit import greedy
    from quantization.torch.route import lm_quantized, lm_generate

    m = _tiny_gpt2()
    m.save_pretrained(tmp_path)
    model = load_causal_lm(tmp_path) if method == "fp32" else lm_quantized(str(tmp_path), method)[0]
    prompt = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False,
                             pad_token_id=0)[:, 7:].numpy()
    toks, ttft, per = greedy(lm_generate(model), prompt.numpy(), 9)
    assert (toks == ref).all() and len(per) == 8 and ttft > 0
