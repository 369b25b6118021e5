"""CPU reference runtime: GPT-2 computed from exactly the state dict loaded into the Tripy model.

It applies each quantized linear the way the Tripy model does (see tripy_model.py and nvtripy's
quantize/dequantize semantics): dequantized weight = codes * scale (per output channel for INT8; per
block of 128 input channels, Tripy's dim-0 blocks of the (in, out) weight, for INT4; one scalar for FP8),
input * pre_quant_scale (AWQ), FP8 input quantize-dequantize with input_scale. Its logits are compared
with ModelOpt's fake-quant Hugging Face model (tests/modelopt_tripy/test_reference_runtime.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from quantization.modelopt_tripy.modes import INT4_BLOCK, QUANT_LINEARS, get_mode
from utils.errors import SuiteError


@dataclass(frozen=True)
class GPTShape:
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"

    @classmethod
    def from_hf(cls, config) -> "GPTShape":
        act = getattr(config, "activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise SuiteError(f"unsupported GPT-2 activation {act!r}")
        return cls(int(config.n_layer), int(config.n_head), int(config.n_embd), int(config.n_positions),
                   int(config.vocab_size), float(config.layer_norm_epsilon), act)


def fp8_qdq(x, scale):
    """Quantize to float8 e4m3 with `scale` (x * (1/scale), saturating at 448, round to nearest) and dequantize."""
    import torch

    return (x * (1.0 / scale)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(torch.float32) * scale


def dequantize_weight_in_out(p: dict, quant_mode: str | None):
    """The (in, out) float32 matrix a linear multiplies its input by."""
    import torch

    w = p["weight"]
    if quant_mode is None:
        return w.float().t()
    mode = get_mode(quant_mode)
    s = p["weight_scale"].float()
    if mode.weight_scale == "per-channel":  # codes (out, in), scale (out,)
        return (w.to(torch.float32) * s[:, None]).t()
    if mode.weight_scale == "block":  # codes (in, out), scale (in/B, out): element [i, o] uses scale[i // B, o]
        if w.shape[0] != s.shape[0] * INT4_BLOCK or w.shape[1] != s.shape[1]:
            raise SuiteError(f"int4 codes {tuple(w.shape)} do not match block scales {tuple(s.shape)}")
        return w.to(torch.float32) * s.repeat_interleave(INT4_BLOCK, dim=0)
    return (w.to(torch.float32) * s).t()  # fp8 codes (out, in), scalar scale


class ReferenceGPT:
    """GPT-2 forward in torch (float32) over a `build_tripy_state_dict` (or `fp32_state_dict`) dict."""

    def __init__(self, shape: GPTShape, quant_mode: str | None = None):
        self.shape = shape
        self.quant_mode = None if quant_mode in (None, "fp32") else get_mode(quant_mode).name
        self.sd: dict = {}
        self._w: dict = {}

    def load_state_dict(self, sd: dict) -> None:
        missing = [f"transformer.h.{i}.{lin}.weight" for i in range(self.shape.n_layer) for lin in QUANT_LINEARS
                   if f"transformer.h.{i}.{lin}.weight" not in sd]
        if missing or "transformer.wte.weight" not in sd:
            raise SuiteError(f"state dict lacks {(missing or ['transformer.wte.weight'])[0]}")
        self.sd = dict(sd)
        self._w = {}  # dequantized (in, out) weights, computed once

    def _linear(self, x, name: str):
        import torch.nn.functional as F

        p = {k[len(name) + 1:]: v for k, v in self.sd.items() if k.startswith(name + ".")}
        if name not in self._w:  # dequantized weight as (out, in) for F.linear (the same kernel HF's model runs)
            self._w[name] = dequantize_weight_in_out(p, self.quant_mode).t().contiguous()
        if self.quant_mode is not None:
            if "pre_quant_scale" in p:
                x = x * p["pre_quant_scale"]
            if "input_scale" in p:
                x = fp8_qdq(x, p["input_scale"])
        return F.linear(x, self._w[name], p.get("bias"))

    def __call__(self, ids):
        return self.forward(ids)

    def forward(self, ids):
        """ids (B, T) int64 (torch or NumPy) -> logits (B, T, V) float32 torch tensor.

        The float arithmetic mirrors Hugging Face's GPT-2 (SDPA causal attention, tanh GELU written out,
        F.linear), so that FP8 activation rounding sees the same inputs as ModelOpt's fake-quant model.
        """
        import numpy as np
        import torch
        import torch.nn.functional as F

        if isinstance(ids, np.ndarray):
            ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        c, sd = self.shape, self.sd
        B, T = ids.shape
        if T > c.n_positions:
            raise SuiteError(f"sequence of {T} tokens is longer than the context {c.n_positions}")
        hd = c.n_embd // c.n_head
        eps = c.layer_norm_epsilon
        ln = lambda x, n: F.layer_norm(x, (c.n_embd,), sd[n + ".weight"], sd[n + ".bias"], eps)  # noqa: E731
        with torch.no_grad():
            x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][torch.arange(T)][None]
            for i in range(c.n_layer):
                h = f"transformer.h.{i}"
                q, k, v = self._linear(ln(x, h + ".ln_1"), h + ".attn.c_attn").split(c.n_embd, dim=2)
                q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=hd ** -0.5)
                y = y.transpose(1, 2).reshape(B, T, -1).contiguous()
                x = self._linear(y, h + ".attn.c_proj") + x
                m = _gelu(self._linear(ln(x, h + ".ln_2"), h + ".mlp.c_fc"), c.activation)
                x = x + self._linear(m, h + ".mlp.c_proj")
            x = ln(x, "transformer.ln_f")
            return F.linear(x, sd["lm_head.weight"].float())


def _gelu(x, activation: str):
    import torch
    import torch.nn.functional as F

    if activation == "gelu":
        return F.gelu(x)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def max_relative_error(reference, other) -> float:
    """max |ref - other| / max |ref| (elementwise worst case, normalised by the logits' range)."""
    import torch

    ref = torch.as_tensor(reference, dtype=torch.float64)
    oth = torch.as_tensor(other, dtype=torch.float64)
    return float((ref - oth).abs().max() / ref.abs().max().clamp_min(1e-30))
