"""From a ModelOpt-quantized HF GPT-2 to the Tripy model's parameters.

Everything here is plain torch and tested on CPU; only `load_quant_weights_from_hf`'s last step touches
nvtripy (lazily, in quantization.modelopt_tripy.tripy_model).

The state dict (`build_tripy_state_dict`) per quantized linear `<p>` (transformer.h.<i>.attn.c_attn,
attn.c_proj, mlp.c_fc, mlp.c_proj):
  int8-weight-only  <p>.weight int8 codes (out, in), <p>.weight_scale float32 (out,)  [per output channel]
  int4-weight-only  <p>.weight int4 codes held in int8 (in, out), <p>.weight_scale float32 (in/128, out),
                    <p>.pre_quant_scale float32 (in,)  [blocks of 128 along the input dim = Tripy dim 0]
  float8            <p>.weight float8_e4m3fn codes (out, in), <p>.weight_scale float32 (), <p>.input_scale ()
plus <p>.bias, and the unquantized embeddings, layer norms and lm_head (tied to wte) in float32.
The dequantized weight is codes * scale; the weight codes are taken from ModelOpt's own fake-quantized
weight (so the rounding is ModelOpt's) and checked to reproduce it.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from quantization.modelopt_tripy.modes import INT4_BLOCK, QUANT_LINEARS, get_mode
from utils.errors import SuiteError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
CODE_TOLERANCE = 1e-4  # max |codes*scale - fake_quant_weight| relative to max |weight|


def convert_to_scale(amax, maxbound):
    """ModelOpt amax -> quantization scale: amax / maxbound as float32, size-1 dims squeezed."""
    import torch

    if not isinstance(amax, torch.Tensor):
        amax = torch.as_tensor(amax)
    if float(maxbound) <= 0:
        raise SuiteError(f"maxbound must be > 0 (got {maxbound})")
    return (amax.detach().to(torch.float32) / float(maxbound)).squeeze()


def modelopt_fp8_scale(amax):
    """amax / 448 rounded the way ModelOpt's FP8 fake quant rounds it: 1 / (448 / amax) in float32.

    Equal to convert_to_scale(amax, 448) within one float32 ulp. FP8 activation rounding turns that ulp
    into occasional one-step flips (a 1/16 change of an activation) that grow through the layers; with
    this rounding the reference runtime reproduces ModelOpt's fake-quant logits bit for bit in float32.
    """
    import torch

    return (1.0 / (448.0 / torch.as_tensor(amax).detach().to(torch.float32))).squeeze()


def get_submodule(module, attr_name):
    """`module.a.0.b`-style lookup through attributes, ModuleList/Sequential indices and ModuleDict keys."""
    import torch

    cur, walked = module, []
    for part in str(attr_name).split("."):
        where = ".".join(walked) or "<root>"
        try:
            if isinstance(cur, (torch.nn.ModuleList, torch.nn.Sequential, list, tuple)):
                cur = cur[int(part)]
            elif isinstance(cur, (torch.nn.ModuleDict, dict)):
                cur = cur[part]
            else:
                cur = getattr(cur, part)
        except (AttributeError, KeyError, IndexError, ValueError, TypeError):
            raise SuiteError(f"get_submodule({attr_name!r}): no {part!r} in {where} ({type(cur).__name__})") from None
        walked.append(part)
    return cur


# ------------------------------------------------------------------------------------ HF side

def hf_model_dir(model_type: str) -> str:
    """'embedded' -> the suite's embedded GPT-2 HF dir (manifest); else a hub id or local directory."""
    if model_type == EMBEDDED:
        from utils.specs import ModelSource

        return ModelSource("gpt2").load_manifest()["hf_dir"]
    return str(model_type)


def load_hf(model_type: str):
    """(GPT2LMHeadModel in float32 eval mode, tokenizer) from a hub id, local dir or 'embedded'."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    src = hf_model_dir(model_type)
    try:
        model = GPT2LMHeadModel.from_pretrained(src, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as exc:
        hint = " (offline: HF_HUB_OFFLINE=1; use a local directory or --weights embedded)" if not Path(src).exists() else ""
        raise SuiteError(f"cannot load GPT-2 from {src!r}{hint}: {str(exc).splitlines()[0]}") from None
    return model, tok


def _linear_names(model_hf) -> list[str]:
    n_layer = int(model_hf.config.n_layer)
    return [f"transformer.h.{i}.{lin}" for i in range(n_layer) for lin in QUANT_LINEARS]


def _weight_out_in(module):
    """(raw weight (out, in), fake-quant weight (out, in)) of a ModelOpt QuantLinear (or a Conv1D it wraps)."""
    import torch

    raw = module.weight
    with torch.no_grad(), module.quantize_weight():
        fq = module.weight
    return _out_in(module, raw).detach().float().contiguous(), _out_in(module, fq).detach().float().contiguous()


def _out_in(module, w):
    """A linear's weight as (out, in): HF Conv1D stores (in, out); ModelOpt's QuantLinear (which replaces
    GPT-2's Conv1D, checked with 0.47) and nn.Linear store (out, in)."""
    from transformers.pytorch_utils import Conv1D

    if w.dim() != 2:
        raise SuiteError(f"expected a 2-D weight, got {tuple(w.shape)}")
    if isinstance(module, Conv1D):
        return w.t()
    shape = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if tuple(w.shape) != shape:
        raise SuiteError(f"{type(module).__name__} weight {tuple(w.shape)} is not (out, in) = {shape}")
    return w


def _check_codes(name: str, deq, fq) -> None:
    """codes * scale must reproduce ModelOpt's fake-quant weight. NaN-safe: a zero amax makes 0/0 = NaN
    codes (garbage once cast to int8) and a NaN error, which `err > tol` would let through."""
    import math

    import torch

    if not bool(torch.isfinite(deq).all()):
        bad = int((~torch.isfinite(deq)).sum())
        raise SuiteError(f"{name}: {bad} dequantized weights are not finite (a zero or non-finite amax?)")
    err = float((deq - fq).abs().max())
    ref = float(fq.abs().max()) or 1.0
    if not (math.isfinite(err) and err <= CODE_TOLERANCE * ref):
        raise SuiteError(f"{name}: codes*scale differ from ModelOpt's fake-quant weight by {err:.3g} "
                         f"(max |w| {ref:.3g}); scale layout mismatch")


def quantized_linear_params(name: str, module, quant_mode: str) -> dict:
    """Tripy parameters of one ModelOpt QuantLinear (suffix -> tensor), per the module docstring."""
    import torch

    mode = get_mode(quant_mode)
    wq, iq = module.weight_quantizer, module.input_quantizer
    if not wq.is_enabled:
        raise SuiteError(f"{name}: weight quantizer is disabled (was the model quantized with {quant_mode}?)")
    if float(wq.maxbound) != mode.maxbound:
        raise SuiteError(f"{name}: weight quantizer maxbound {wq.maxbound} != {mode.maxbound} for {quant_mode}")
    if mode.weight_only and iq.is_enabled:
        raise SuiteError(f"{name}: input quantizer is enabled in weight-only mode {quant_mode}")
    _, fq = _weight_out_in(module)
    out_f, in_f = fq.shape
    scale = convert_to_scale(wq.amax, mode.maxbound)
    p = {}
    if mode.weight_scale == "per-channel":
        if scale.shape != (out_f,):
            raise SuiteError(f"{name}: int8 scale shape {tuple(scale.shape)} != ({out_f},)")
        codes = torch.round(fq / scale[:, None]).clamp(-128, 127)
        _check_codes(name, codes * scale[:, None], fq)
        p["weight"], p["weight_scale"] = codes.to(torch.int8), scale.contiguous()
    elif mode.weight_scale == "block":
        if in_f % INT4_BLOCK:
            raise SuiteError(f"{name}: in_features {in_f} is not a multiple of the INT4 block {INT4_BLOCK}")
        nb = in_f // INT4_BLOCK
        if scale.numel() != out_f * nb:
            raise SuiteError(f"{name}: int4 amax has {scale.numel()} blocks, expected {out_f}*{nb}")
        # ModelOpt: weight (out, in) viewed as (out*in/128, 128), one amax per row -> row-major (out, in/128)
        s_oi = scale.reshape(out_f, nb)
        codes = torch.round(fq.reshape(out_f, nb, INT4_BLOCK) / s_oi[..., None]).clamp(-8, 7)
        _check_codes(name, (codes * s_oi[..., None]).reshape(out_f, in_f), fq)
        # Tripy block quantization blocks along dim 0 of a 2-D tensor: store W^T (in, out), scales (in/128, out)
        p["weight"] = codes.reshape(out_f, in_f).t().contiguous().to(torch.int8)
        p["weight_scale"] = s_oi.t().contiguous()
        pqs = iq.pre_quant_scale
        p["pre_quant_scale"] = (pqs.detach().float().reshape(-1).contiguous() if pqs is not None
                                else torch.ones(in_f, dtype=torch.float32))
        if p["pre_quant_scale"].shape != (in_f,):
            raise SuiteError(f"{name}: pre_quant_scale shape {tuple(p['pre_quant_scale'].shape)} != ({in_f},)")
    else:  # per-tensor fp8
        scale = modelopt_fp8_scale(wq.amax)
        if scale.dim() != 0:
            raise SuiteError(f"{name}: fp8 weight scale must be a scalar, got {tuple(scale.shape)}")
        codes = (fq / scale).clamp(-mode.maxbound, mode.maxbound).to(torch.float8_e4m3fn)
        _check_codes(name, codes.float() * scale, fq)
        p["weight"], p["weight_scale"] = codes, scale
        if mode.input_scale:
            if not iq.is_enabled:
                raise SuiteError(f"{name}: float8 needs an enabled input quantizer")
            p["input_scale"] = modelopt_fp8_scale(iq.amax)
    if module.bias is not None:
        p["bias"] = module.bias.detach().float().contiguous()
    return p


def _check_all_quantizers_used(model_hf, used: set[str]) -> None:
    from modelopt.torch.quantization.nn import TensorQuantizer

    extra = [n for n, m in model_hf.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled and n not in used]
    if extra:
        raise SuiteError(f"enabled ModelOpt quantizers the Tripy model has no place for: {', '.join(extra[:5])}")


def build_tripy_state_dict(quantized_hf_model, quant_mode) -> dict:
    """name -> torch.Tensor: everything the Tripy GPT (and the reference runtime) loads, per the module doc."""
    import torch

    mode = get_mode(quant_mode)
    model_hf = quantized_hf_model
    sd = {}
    hf = {k: v for k, v in model_hf.state_dict().items()}
    plain = re.compile(r"^transformer\.(wte|wpe|ln_f|h\.\d+\.ln_[12])\.(weight|bias)$")
    for k, v in hf.items():
        if plain.match(k):
            sd[k] = v.detach().float().contiguous()
    sd["lm_head.weight"] = model_hf.lm_head.weight.detach().float().contiguous()  # tied to wte in GPT-2
    used = set()
    for name in _linear_names(model_hf):
        module = get_submodule(model_hf, name)
        for suffix, t in quantized_linear_params(name, module, mode.name).items():
            sd[f"{name}.{suffix}"] = t
        used.add(f"{name}.weight_quantizer")
        if mode.input_scale:
            used.add(f"{name}.input_quantizer")
    _check_all_quantizers_used(model_hf, used)
    return sd


def fp32_state_dict(model_hf) -> dict:
    """The unquantized GPT-2 in the same naming (linears (out, in) float32), for the fp32 rows."""
    sd = {}
    for k, v in model_hf.state_dict().items():
        if k.endswith((".attn.bias", ".attn.masked_bias")) or "_quantizer" in k:
            continue
        sd[k] = v.detach().float().contiguous()
    for name in _linear_names(model_hf):
        module = get_submodule(model_hf, name)
        sd[f"{name}.weight"] = _out_in(module, module.weight.detach().float()).contiguous()
    sd["lm_head.weight"] = model_hf.lm_head.weight.detach().float().contiguous()
    return sd


BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int8": 1.0, "float8_e4m3fn": 1.0}
TIED = (("lm_head.weight", "transformer.wte.weight"),)  # GPT-2's LM head is the token embedding


def deploy_size_mb(sd: dict, quant_mode: str | None, tied=TIED) -> float:
    """MB (1e6 bytes) of the state dict as deployed: int8/fp8 codes 1 byte, int4 codes 0.5 byte (stored one per
    int8), float16/bfloat16 2, float32 4. A tensor is counted once however many names it has: names sharing
    memory (same storage, offset, shape, stride and dtype) and the known ties `tied` (name pairs counted once
    when both hold equal tensors, e.g. copies of the tied wte / lm_head)."""
    import torch

    seen, total = set(), 0.0
    skip = set()
    for a, b in tied:
        if a in sd and b in sd and sd[a].shape == sd[b].shape and sd[a].dtype == sd[b].dtype and torch.equal(sd[a], sd[b]):
            skip.add(a)
    for k, v in sd.items():
        if k in skip:
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and ident[0] and ident in seen:
            continue
        seen.add(ident)
        dt = str(v.dtype).replace("torch.", "")
        b = BYTES.get(dt, 4.0)
        if quant_mode == "int4-weight-only" and dt == "int8" and k.endswith(".weight"):
            b = 0.5
        total += b * v.numel()
    return total / 1e6


def state_dict_summary(sd: dict) -> dict:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()}


def load_quant_weights_from_hf(model, model_type, dtype, quant_mode, **quantize_kwargs):
    """Quantize the HF GPT-2 `model_type` with ModelOpt, convert amax -> scales and load them into `model`.

    model: the Tripy GPT (quantization.modelopt_tripy.tripy_model.build_gpt) or the CPU reference runtime
    (quantization.modelopt_tripy.reference.ReferenceGPT), both consume `build_tripy_state_dict`'s names.
    model_type: hub id, local HF directory or "embedded". dtype: Tripy dtype (or torch dtype / name) of
    the model's float tensors. Extra keyword arguments go to `modelopt_quantize` (forward_loop, dataset_name,
    num_samples, batch_size). Returns `model`.
    """
    from quantization.modelopt_tripy.quantize import modelopt_quantize

    get_mode(quant_mode)
    model_hf, tok = load_hf(model_type)
    quantize_kwargs.setdefault("tokenizer", tok)
    model_hf = modelopt_quantize(model_hf, quant_mode, **quantize_kwargs)
    sd = build_tripy_state_dict(model_hf, quant_mode)
    log.info("loading %d tensors (%s) into %s", len(sd), quant_mode, type(model).__name__)
    from quantization.modelopt_tripy.reference import ReferenceGPT

    if isinstance(model, ReferenceGPT):
        model.load_state_dict(sd)
    else:  # the Tripy GPT: convert to nvtripy tensors in its dtype (the only nvtripy-dependent step)
        from quantization.modelopt_tripy.tripy_model import load_into_tripy

        load_into_tripy(model, sd, quant_mode, dtype)
    return model
