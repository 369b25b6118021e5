"""NaN-safe code check, deploy size with the tied embedding / LM head counted once, UnknownMode."""
import copy

import pytest
import torch

from quantization.modelopt_tripy.modes import UnknownMode, get_mode
from quantization.modelopt_tripy.weights import (_check_codes, build_tripy_state_dict, deploy_size_mb,
                                                 fp32_state_dict, quantized_linear_params)
from utils.errors import SuiteError


# ------------------------------------------------------------------ NaN-safe code check

def test_check_codes_rejects_nan():
    fq = torch.zeros(4, 8)
    _check_codes("ok", fq.clone(), fq)
    nan = torch.full((4, 8), float("nan"))
    with pytest.raises(SuiteError, match="not finite"):
        _check_codes("lin", nan, fq)
    with pytest.raises(SuiteError, match="not finite"):
        _check_codes("lin", torch.full((4, 8), float("inf")), fq)
    with pytest.raises(SuiteError, match="scale layout mismatch"):
        _check_codes("lin", torch.ones(4, 8), fq)


def test_zero_amax_channel_is_an_error_not_garbage_int8(quantized):
    q = copy.deepcopy(quantized("int8-weight-only"))
    lin = q.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        lin.weight[5].zero_()  # an all-zero output channel: amax 0 -> scale 0 -> codes 0/0 = NaN
        amax = lin.weight_quantizer.amax.clone()
        amax[5] = 0
        lin.weight_quantizer.amax = amax
    with pytest.raises(SuiteError, match="not finite"):
        quantized_linear_params("transformer.h.0.mlp.c_fc", lin, "int8-weight-only")


# ------------------------------------------------------------------ deploy size

def nbytes(t, b):
    return t.numel() * b


def test_deploy_size_counts_the_tied_lm_head_once(tiny_gpt2):
    sd = fp32_state_dict(tiny_gpt2)
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()  # tied in GPT-2
    distinct = {id(v): v for k, v in sd.items() if k != "lm_head.weight"}
    assert deploy_size_mb(sd, None) == pytest.approx(sum(v.numel() * 4 for v in distinct.values()) / 1e6)
    # a copy of the tied tensor (another storage) is still the tie
    sd2 = dict(sd, **{"lm_head.weight": sd["transformer.wte.weight"].clone()})
    assert deploy_size_mb(sd2, None) == pytest.approx(deploy_size_mb(sd, None))
    # an untied head really is a second tensor
    sd3 = dict(sd, **{"lm_head.weight": torch.randn_like(sd["transformer.wte.weight"])})
    assert deploy_size_mb(sd3, None) == pytest.approx(deploy_size_mb(sd, None) + sd3["lm_head.weight"].numel() * 4 / 1e6)


@pytest.mark.parametrize("mode,code_bytes", [("int8-weight-only", 1.0), ("int4-weight-only", 0.5), ("float8", 1.0)])
def test_deploy_size_of_quantized_state_dicts(quantized, mode, code_bytes):
    sd = build_tripy_state_dict(quantized(mode), mode)
    codes = sum(v.numel() for k, v in sd.items() if v.dtype in (torch.int8, torch.float8_e4m3fn))
    floats = sum(v.numel() for k, v in sd.items() if v.dtype == torch.float32 and k != "lm_head.weight")
    assert deploy_size_mb(sd, mode) == pytest.approx((codes * code_bytes + floats * 4) / 1e6)
    half = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in sd.items()}
    assert deploy_size_mb(half, mode) == pytest.approx((codes * code_bytes + floats * 2) / 1e6)


# ------------------------------------------------------------------ unknown mode

def test_unknown_mode_is_suite_error_and_not_implemented(tiny_gpt2):
    from quantization.modelopt_tripy import modelopt_quantize

    for exc in (UnknownMode, SuiteError, NotImplementedError):
        with pytest.raises(exc, match="unknown quant_mode 'int2'"):
            get_mode("int2")
    with pytest.raises(NotImplementedError):
        modelopt_quantize(copy.deepcopy(tiny_gpt2), "int3")
