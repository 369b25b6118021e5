"""The Tripy GPT's quantize/dequantize calls against a fake nvtripy that applies nvtripy 0.1.7's rules.

nvtripy is not installable here (NVIDIA's index, needs a GPU). The rules, from tripy-v0.1.7
nvtripy/frontend/ops/{quantize,dequantize}.py, frontend/wrappers.py and frontend/ops/utils.py:
- a scale that is not a Tensor is converted with Tensor(value) (a Python float -> float32 constant) and then
  *cast* to the dtype the op requires (quantize: input's dtype; dequantize: the target dtype);
- check_qdq_args: scale.dtype must equal that dtype, and `scale.trace_tensor.producer` must be a Constant in
  CPU memory ("`scale` argument must be a constant in CPU memory") -- a cast is not a Constant;
- per-channel (dim given): 1-D scale; block-wise: 2-D scale, int4 only; per-tensor: scalar.
Module.load_state_dict is strict (missing / unexpected keys raise).
The fake also carries values through quantize / dequantize / transpose of constants (block-wise: element
[i, j] of a (D0, D1) input uses scale[i // (D0 / S0), j]; per-channel along `dim`; per-tensor), so the QLinear
weight the Tripy model multiplies by can be compared with ModelOpt's fake-quant weight.
"""
import types

import pytest
import torch

from quantization.modelopt_tripy import tripy_model
from quantization.modelopt_tripy.modes import MODES, QUANT_LINEARS, get_mode
from quantization.modelopt_tripy.reference import GPTShape


class TripyError(Exception):
    pass


def make_fake_tp():
    tp = types.ModuleType("nvtripy")
    tp.calls = []

    class dtype:
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return f"nvtripy.{self.name}"

    for n in ("float32", "float16", "bfloat16", "int8", "int4", "float8", "int32", "int64", "bool"):
        setattr(tp, n, dtype(n))
    floats = {tp.float32, tp.float16, tp.bfloat16}
    from_torch = {torch.float32: tp.float32, torch.float16: tp.float16, torch.bfloat16: tp.bfloat16,
                  torch.int32: tp.int32, torch.int64: tp.int64, torch.int8: tp.int8}

    class Tensor:
        def __init__(self, data, dtype=None, device=None, *, _producer="constant", _shape=None):
            if isinstance(data, Tensor):
                raise TripyError("Cannot initialize Tensor with another Tensor.")
            self.producer, self.device, self.value = _producer, "cpu", None
            if _producer != "constant":
                self.dtype, self.shape, self.device = dtype, tuple(_shape), "gpu"
            elif isinstance(data, torch.Tensor):
                self.dtype, self.shape = from_torch[data.dtype], tuple(data.shape)
                self.device = "gpu" if data.is_cuda else "cpu"
                self.value = data
            else:  # Python number / (nested) list: float32 (or int32) constant, CPU
                t = torch.as_tensor(data)
                self.dtype = tp.float32 if t.is_floating_point() else tp.int32
                self.shape = tuple(t.shape)

        @property
        def rank(self):
            return len(self.shape)

        def _op(self, other=None, shape=None):
            return Tensor(None, self.dtype, _producer="op", _shape=shape if shape is not None else self.shape)

        __mul__ = __add__ = __rmul__ = __radd__ = lambda self, o: self._op()

        def __matmul__(self, o):
            return self._op(shape=(*self.shape[:-1], o.shape[-1]))

    tp.Tensor = Tensor

    def cast(t, dtype):
        return Tensor(None, dtype, _producer="cast", _shape=t.shape)

    def zeros(shape, dtype):
        return Tensor(None, dtype, _producer="fill", _shape=shape)

    def transpose(t, a, b):
        s = list(t.shape)
        s[a], s[b] = s[b], s[a]
        out = t._op(shape=s)
        out.value = None if t.value is None else t.value.transpose(a, b)
        return out

    def _as_scale(scale, required):  # wrappers.convert_input_types for convert_to_tensors={"scale"}
        if not isinstance(scale, Tensor):
            scale = Tensor(scale)
            if scale.dtype is not required:
                scale = cast(scale, required)
        return scale

    def _check(inp, scale, quant_dtype, float_dtype, dim, op):  # utils.check_qdq_args
        if scale.dtype is not float_dtype:
            raise TripyError(f"Scale dtype does not match expected dtype in {op}: should be {float_dtype}, got "
                             f"{scale.dtype}")
        if dim is not None:
            if scale.rank != 1 or scale.shape[0] != inp.shape[dim]:
                raise TripyError(f"per-channel {op}: scale {scale.shape} for input {inp.shape} dim {dim}")
        elif scale.rank == 2:
            if inp.rank != 2 or quant_dtype is not tp.int4 or inp.shape[0] % scale.shape[0] or \
                    scale.shape[1] != inp.shape[1]:
                raise TripyError(f"block-wise {op}: scale {scale.shape}, input {inp.shape}, {quant_dtype}")
        elif scale.rank != 0:
            raise TripyError(f"Scale must be a scalar tensor in per-tensor {op}.")
        if scale.producer != "constant" or scale.device != "cpu":
            raise TripyError("`scale` argument must be a constant in CPU memory.")

    def quantize(input, scale, dtype, dim=None):  # noqa: A002
        if input.dtype not in floats or dtype not in (tp.int8, tp.int4, tp.float8):
            raise TripyError("quantize: bad dtypes")
        scale = _as_scale(scale, input.dtype)
        _check(input, scale, dtype, input.dtype, dim, "quantize op")
        tp.calls.append(("quantize", scale.dtype, scale.shape, dtype))
        out = Tensor(None, dtype, _producer="op", _shape=input.shape)
        if input.value is not None and scale.value is not None:
            q = input.value.float() / _expand(scale.value.float(), input.shape, dim)
            lim = {tp.int8: (-128, 127), tp.int4: (-8, 7)}.get(dtype)
            out.value = q.round().clamp(*lim) if lim else q
        return out

    def dequantize(input, scale, dtype, dim=None):  # noqa: A002
        if input.dtype not in (tp.int8, tp.int4, tp.float8) or dtype not in floats:
            raise TripyError("dequantize: bad dtypes")
        scale = _as_scale(scale, dtype)
        _check(input, scale, input.dtype, dtype, dim, "dequantize op")
        tp.calls.append(("dequantize", scale.dtype, scale.shape, input.dtype))
        out = Tensor(None, dtype, _producer="op", _shape=input.shape)
        if input.value is not None and scale.value is not None:
            out.value = input.value * _expand(scale.value.float(), input.shape, dim)
        return out

    def _expand(scale, shape, dim):  # the scale of every element, per Tripy's per-tensor/channel/block rules
        if dim is not None:
            view = [1] * len(shape)
            view[dim] = shape[dim]
            return scale.reshape(view)
        if scale.dim() == 2:  # block-wise: blocks of D0 / S0 along dim 0
            return scale.repeat_interleave(shape[0] // scale.shape[0], dim=0)
        return scale

    class Module:
        def state_dict(self, prefix=""):
            out = {}
            for k, v in vars(self).items():
                if isinstance(v, Tensor):
                    out[prefix + k] = v
                elif isinstance(v, Module):
                    out.update(v.state_dict(f"{prefix}{k}."))
                elif isinstance(v, list):
                    for i, m in enumerate(v):
                        out.update(m.state_dict(f"{prefix}{k}.{i}."))
            return out

        def load_state_dict(self, sd, strict=True):
            expected = set(self.state_dict())
            if strict and set(sd) != expected:
                raise TripyError(f"missing {sorted(expected - set(sd))[:3]}, unexpected {sorted(set(sd) - expected)[:3]}")
            for k, v in sd.items():
                *path, leaf = k.split(".")
                m = self
                for p in path:
                    m = m[int(p)] if isinstance(m, list) else getattr(m, p)
                old = getattr(m, leaf)
                if old.shape != v.shape or old.dtype is not v.dtype:
                    raise TripyError(f"{k}: {v.shape} {v.dtype} for a parameter of {old.shape} {old.dtype}")
                setattr(m, leaf, v)

    class LayerNorm(Module):
        def __init__(self, n, dtype, eps=1e-5):
            self.weight, self.bias = zeros((n,), dtype), zeros((n,), dtype)

    class Embedding(Module):
        def __init__(self, num, dim, dtype):
            self.weight = zeros((num, dim), dtype)

    for f in (cast, zeros, transpose, quantize, dequantize):
        setattr(tp, f.__name__, f)
    tp.Module, tp.LayerNorm, tp.Embedding = Module, LayerNorm, Embedding
    return tp


SHAPE = GPTShape(n_layer=1, n_head=2, n_embd=256, n_positions=16, vocab_size=32)  # >= 2 INT4 blocks per row


def quant_linears(model):
    blk = model.transformer.h[0]
    return [blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj]


def synthetic_state_dict(model, mode):
    """Torch tensors with the shapes/dtypes build_tripy_state_dict produces (codes int8 / fp8, scales fp32)."""
    code = torch.float8_e4m3fn if mode == "float8" else torch.int8
    sd = {}
    for k, v in model.state_dict().items():
        if any(k.endswith(f".{lin}.weight") for lin in QUANT_LINEARS):
            sd[k] = torch.ones(v.shape).to(code)
        else:
            sd[k] = torch.full(v.shape, 0.5, dtype=torch.float32)
    return sd


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", list(MODES))
def test_quantize_scales_are_cpu_constants_of_the_weight_dtype(monkeypatch, mode, dtype):
    tp = make_fake_tp()
    monkeypatch.setattr(tripy_model, "import_nvtripy", lambda: tp)
    model = tripy_model.build_gpt(SHAPE, mode, dtype)
    tripy_model.load_into_tripy(model, synthetic_state_dict(model, mode), mode, dtype)
    want = getattr(tp, dtype)
    for lin in quant_linears(model):
        assert lin.weight.dtype is want and lin.weight_scale.producer == "constant"
        w = lin._weight_in_out()  # raises TripyError where nvtripy 0.1.7 would
        assert tuple(w.shape) == (lin.in_f, lin.out_f) and w.dtype is want
    assert len(tp.calls) == 8
    assert all(dt is want for _, dt, _, _ in tp.calls)  # every scale in the model's dtype


@pytest.mark.parametrize("mode", list(MODES))
def test_unit_scale_shapes_and_dtype(mode):
    m = get_mode(mode)
    u = tripy_model.unit_scale(mode, 256, 384, "float16")
    assert u.dtype == torch.float16 and u.device.type == "cpu" and bool((u == 1).all())
    assert tuple(u.shape) == {"per-channel": (384,), "block": (2, 384), "per-tensor": ()}[m.weight_scale]


def test_fake_rejects_a_cast_python_float_scale():
    """The failure this guards against: a Python float scale with a float16 input is a cast, not a constant."""
    tp = make_fake_tp()
    w = tp.Tensor(torch.zeros(4, 4, dtype=torch.float16))
    with pytest.raises(TripyError, match="constant in CPU memory"):
        tp.quantize(w, [1.0] * 4, tp.int8, dim=0)
    tp.quantize(tp.Tensor(torch.zeros(4, 4)), [1.0] * 4, tp.int8, dim=0)  # float32: no cast, accepted


def test_int4_qlinear_weight_equals_modelopt_fake_quant(monkeypatch, quantized):
    """The real state dict of the 256-wide INT4 GPT-2 loaded into the Tripy GPT (fake nvtripy with values):
    each QLinear's (in, out) weight is ModelOpt's fake-quant weight transposed, for every linear kind with
    >= 2 blocks per row. Under the upstream-style layout (codes (out, in), blocks along dim 0 = out) it is not."""
    from quantization.modelopt_tripy import build_tripy_state_dict
    from quantization.modelopt_tripy.weights import _weight_out_in

    tp = make_fake_tp()
    monkeypatch.setattr(tripy_model, "import_nvtripy", lambda: tp)
    mode = "int4-weight-only"
    q = quantized(mode)
    shape = GPTShape.from_hf(q.config)
    sd = build_tripy_state_dict(q, mode)
    model = tripy_model.build_gpt(shape, mode, "float32")
    tripy_model.load_into_tripy(model, sd, mode, "float32")
    for i, blk in enumerate(model.transformer.h):
        for lin, ql in zip(QUANT_LINEARS, (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)):
            _, fq = _weight_out_in(q.get_submodule(f"transformer.h.{i}.{lin}"))
            w = ql._weight_in_out().value
            assert ql.in_f // 128 >= 2 and w.shape == (ql.in_f, ql.out_f)
            assert torch.allclose(w, fq.t(), rtol=0, atol=1e-6 * float(fq.abs().max())), lin
            # the same codes with the scales' blocks in another order (a wrongly blocked axis) are visibly wrong
            s = ql.weight_scale.value
            ql.weight_scale = tp.Tensor(s.t().contiguous().reshape(s.shape))
            assert not torch.allclose(ql._weight_in_out().value, fq.t(), rtol=0, atol=1e-3 * float(fq.abs().max()))
            ql.weight_scale = tp.Tensor(s)
