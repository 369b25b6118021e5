"""The quantization modes of the route and the layout of each mode's Tripy parameters (no torch import).

One table, read by the quantizer, the weight converter, the reference runtime and the Tripy model,
so the four can never disagree about which scale goes where.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.errors import SuiteError

INT4_BLOCK = 128  # ModelOpt INT4_AWQ_CFG: blocks of 128 along the last (input) dimension of the weight
QUANT_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the quantized linears of each GPT-2 block


@dataclass(frozen=True)
class Mode:
    name: str  # route method name (utils.registry)
    precision: str  # row precision
    modelopt_cfg: str  # attribute of modelopt.torch.quantization holding the base config
    maxbound: float  # largest representable magnitude of the quantized type
    code_dtype: str  # torch dtype name of the stored weight codes
    weight_layout: str  # "out_in" (like nvtripy.Linear) or "in_out" (int4: Tripy blocks run along dim 0)
    weight_scale: str  # "per-channel" (out,), "block" (in/B, out), "per-tensor" ()
    input_scale: bool  # FP8 activations: quant-dequant the input with a per-tensor scale
    pre_quant_scale: bool  # AWQ: the input is multiplied by a per-input-channel scale first
    weight_only: bool  # input quantizers disabled


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("int8-weight-only", "int8", "INT8_DEFAULT_CFG", 127.0, "int8", "out_in", "per-channel", False, False, True),
        Mode("int4-weight-only", "int4", "INT4_AWQ_CFG", 7.0, "int8", "in_out", "block", False, True, True),
        Mode("float8", "fp8", "FP8_DEFAULT_CFG", 448.0, "float8_e4m3fn", "out_in", "per-tensor", True, False, False),
    )
}
FP32 = "fp32"  # the unquantized method of the route


class UnknownMode(SuiteError, NotImplementedError):
    """An unsupported quant_mode: a SuiteError for the CLI (one line, exit 2) and a NotImplementedError for
    the specification's callers (modelopt_quantize / load_quant_weights_from_hf)."""


def get_mode(quant_mode: str) -> Mode:
    try:
        return MODES[quant_mode]
    except (KeyError, TypeError):
        raise UnknownMode(f"unknown quant_mode {quant_mode!r}; valid: {', '.join(MODES)}") from None
