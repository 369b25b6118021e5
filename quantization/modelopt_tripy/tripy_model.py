"""The Tripy GPT-2 (nanoGPT layout) that loads `build_tripy_state_dict`, written against nvtripy's public API.

nvtripy is imported lazily (only inside these functions): it installs from NVIDIA's package index and
needs TensorRT and a GPU, so nothing here runs on the CPU build machines -- this file has NOT been executed
yet (written from nvtripy 0.1.7's source and docs; every quantize/dequantize scale is a CPU constant of the
model's dtype, as check_qdq_args requires -- tests/modelopt_tripy/test_tripy_model_fake.py checks it with a
fake nvtripy that applies those rules). The arithmetic is the one the
reference runtime (reference.py) reproduces on CPU, which is what the tests check.

Quantized linear (`QLinear`), per mode (modes.py):
  weights arrive as float tensors holding the integer / FP8 codes (exact in float16/32); Tripy turns them
  into int8 / int4 / float8 constants with a unit-scale `tp.quantize` (exact: the values are already on the
  grid) and `tp.dequantize` applies the real scale -- per output channel (dim 0 of the (out, in) weight) for
  INT8; per block for INT4, whose weight is stored (in, out) so that Tripy's block axis (dim 0, scale shape
  (in/128, out)) is ModelOpt's input-dim block; per tensor for FP8. AWQ's pre-quant scale multiplies the
  input; FP8 inputs are quantized/dequantized with input_scale.
"""
from __future__ import annotations

import math

from quantization.modelopt_tripy.modes import INT4_BLOCK, get_mode
from utils.errors import RouteUnavailable, SuiteError

NVTRIPY_HINT = ("nvtripy is not installed: it needs NVIDIA's package index "
                "(pip install nvtripy -f https://nvidia.github.io/TensorRT-Incubator/packages.html, "
                "requirements/modelopt-tripy-gpu.txt) and a CUDA GPU")


def import_nvtripy():
    try:
        import nvtripy as tp
    except ImportError:
        raise RouteUnavailable(NVTRIPY_HINT) from None
    except Exception as exc:  # installed but TensorRT / CUDA driver missing
        raise RouteUnavailable(f"nvtripy does not import here ({type(exc).__name__}: {exc}); it needs a CUDA GPU") from None
    return tp


def torch_dtype(dtype):
    """A Tripy dtype, torch dtype or name ('float32', 'float16') -> torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = getattr(dtype, "name", dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise SuiteError(f"unsupported model dtype {dtype!r}; use float32, float16 or bfloat16")
    return getattr(torch, name)


def unit_scale(mode, in_f: int, out_f: int, dtype):
    """The unit scale QLinear quantizes its (already on-grid) weight codes with, as a CPU torch tensor of the
    model's float dtype, to wrap in tp.Tensor: nvtripy 0.1.7's quantize/dequantize require the scale to have
    the input's dtype AND to be a constant in CPU memory (frontend/ops/utils.py check_qdq_args). A Python
    float (list) becomes a float32 constant that the op wrapper casts to float16 -- a cast, no longer a
    constant -- so --tripy-dtype float16 failed. Shapes: per-channel (out,), block (in/128, out), per-tensor ()."""
    import torch

    m = get_mode(mode) if isinstance(mode, str) else mode
    shape = {"per-channel": (out_f,), "block": (in_f // INT4_BLOCK, out_f), "per-tensor": ()}[m.weight_scale]
    return torch.ones(shape, dtype=torch_dtype(dtype), device="cpu")


def build_gpt(shape, quant_mode: str | None, dtype="float32"):
    """An nvtripy GPT-2 module for `shape` (reference.GPTShape) whose parameters are the state dict names."""
    tp = import_nvtripy()
    tdt = getattr(tp, torch_dtype(dtype).__repr__().split(".")[-1])
    mode = None if quant_mode in (None, "fp32") else get_mode(quant_mode)

    class QLinear(tp.Module):
        def __init__(self, in_f: int, out_f: int):
            super().__init__()
            self.in_f, self.out_f = in_f, out_f
            if mode is None or mode.weight_layout == "out_in":
                self.weight = tp.zeros((out_f, in_f), dtype=tdt)
            else:
                self.weight = tp.zeros((in_f, out_f), dtype=tdt)
            self.bias = tp.zeros((out_f,), dtype=tdt)
            if mode is not None:
                if mode.weight_scale == "per-channel":
                    self.weight_scale = tp.zeros((out_f,), dtype=tdt)
                elif mode.weight_scale == "block":
                    self.weight_scale = tp.zeros((in_f // INT4_BLOCK, out_f), dtype=tdt)
                else:
                    self.weight_scale = tp.zeros((), dtype=tdt)
                if mode.pre_quant_scale:
                    self.pre_quant_scale = tp.zeros((in_f,), dtype=tdt)
                if mode.input_scale:
                    self.input_scale = tp.zeros((), dtype=tdt)

        def _unit(self):
            # a CPU constant of the weight's dtype (tp.quantize requires both); not a module attribute, so
            # load_state_dict (strict) does not expect it in the state dict
            return tp.Tensor(unit_scale(mode, self.in_f, self.out_f, dtype))

        def _weight_in_out(self):
            if mode is None:
                return tp.transpose(self.weight, 0, 1)
            if mode.weight_scale == "per-channel":
                q = tp.quantize(self.weight, self._unit(), tp.int8, dim=0)
                return tp.transpose(tp.dequantize(q, self.weight_scale, tdt, dim=0), 0, 1)
            if mode.weight_scale == "block":
                q = tp.quantize(self.weight, self._unit(), tp.int4)
                return tp.dequantize(q, self.weight_scale, tdt)  # already (in, out)
            q = tp.quantize(self.weight, self._unit(), tp.float8)
            return tp.transpose(tp.dequantize(q, self.weight_scale, tdt), 0, 1)

        def forward(self, x):
            if mode is not None and mode.pre_quant_scale:
                x = x * self.pre_quant_scale
            if mode is not None and mode.input_scale:
                x = tp.dequantize(tp.quantize(x, self.input_scale, tp.float8), self.input_scale, tdt)
            return x @ self._weight_in_out() + self.bias

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + tp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    class Attention(tp.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = QLinear(shape.n_embd, 3 * shape.n_embd)
            self.c_proj = QLinear(shape.n_embd, shape.n_embd)

        def forward(self, x):
            B, T = x.shape[0], x.shape[1]
            hd = shape.n_embd // shape.n_head
            q, k, v = tp.split(self.c_attn(x), 3, dim=2)
            heads = lambda t: tp.transpose(tp.reshape(t, (B, T, shape.n_head, hd)), 1, 2)  # noqa: E731
            q, k, v = heads(q), heads(k), heads(v)
            att = (q @ tp.transpose(k, -2, -1)) * (1.0 / math.sqrt(hd))
            causal = tp.tril(tp.ones((T, T), dtype=tp.int32))
            att = tp.masked_fill(att, causal == 0, float("-inf"))
            y = tp.softmax(att, dim=-1) @ v
            return self.c_proj(tp.reshape(tp.transpose(y, 1, 2), (B, T, shape.n_embd)))

    class MLP(tp.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = QLinear(shape.n_embd, 4 * shape.n_embd)
            self.c_proj = QLinear(4 * shape.n_embd, shape.n_embd)

        def forward(self, x):
            return self.c_proj(gelu_tanh(self.c_fc(x)))

    class Block(tp.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = tp.LayerNorm(shape.n_embd, dtype=tdt, eps=shape.layer_norm_epsilon)
            self.attn = Attention()
            self.ln_2 = tp.LayerNorm(shape.n_embd, dtype=tdt, eps=shape.layer_norm_epsilon)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class Transformer(tp.Module):
        def __init__(self):
            super().__init__()
            self.wte = tp.Embedding(shape.vocab_size, shape.n_embd, dtype=tdt)
            self.wpe = tp.Embedding(shape.n_positions, shape.n_embd, dtype=tdt)
            self.h = [Block() for _ in range(shape.n_layer)]
            self.ln_f = tp.LayerNorm(shape.n_embd, dtype=tdt, eps=shape.layer_norm_epsilon)

        def forward(self, idx):
            pos = tp.reshape(tp.arange(idx.shape[1], dtype=tp.int32), (1, idx.shape[1]))
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.ln_f(x)

    class GPT(tp.Module):
        def __init__(self):
            super().__init__()
            self.transformer = Transformer()
            self.lm_head = QLinearPlain(shape.n_embd, shape.vocab_size)

        def forward(self, idx):
            return self.lm_head(self.transformer(idx))

    class QLinearPlain(tp.Module):  # lm_head: never quantized (tied to wte), no bias
        def __init__(self, in_f: int, out_f: int):
            super().__init__()
            self.weight = tp.zeros((out_f, in_f), dtype=tdt)

        def forward(self, x):
            return x @ tp.transpose(self.weight, 0, 1)

    return GPT()


def tripy_tensors(sd: dict, quant_mode: str | None, dtype) -> dict:
    """torch state dict -> the float tensors the Tripy GPT holds (codes as exact floats), still torch."""
    import torch

    tdt = torch_dtype(dtype)
    out = {}
    for k, v in sd.items():
        if v.dtype in (torch.int8, torch.float8_e4m3fn):  # codes: exact in float16/32 (|q| <= 448, 3-bit mantissa)
            v = v.to(torch.float32)
        out[k] = v.to(tdt).contiguous()
    return out


def load_into_tripy(model, sd: dict, quant_mode: str | None, dtype) -> None:
    tp = import_nvtripy()
    model.load_state_dict({k: tp.Tensor(v) for k, v in tripy_tensors(sd, quant_mode, dtype).items()})


def compile_gpt(model, batch: int, seq_len: int):
    tp = import_nvtripy()
    return tp.compile(model, args=[tp.InputInfo((batch, seq_len), dtype=tp.int32)])


def run_compiled(compiled, ids):
    """ids (B, T) int NumPy/torch -> logits as a torch tensor on the GPU."""
    import numpy as np
    import torch

    tp = import_nvtripy()
    t = torch.as_tensor(np.asarray(ids), dtype=torch.int32).cuda()
    return torch.from_dlpack(compiled(tp.Tensor(t)))
