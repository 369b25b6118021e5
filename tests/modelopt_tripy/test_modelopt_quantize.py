import copy
import json

import pytest
import torch

from quantization.modelopt_tripy import modelopt_quantize
from quantization.modelopt_tripy.modes import MODES
from quantization.modelopt_tripy.quantize import _disable, quant_config, quantizer_summary
from utils.errors import SuiteError

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
MAXBOUND = {"int8-weight-only": 127, "int4-weight-only": 7, "float8": 448.0}


def linears(model):
    return {f"transformer.h.{i}.{n}": model.get_submodule(f"transformer.h.{i}.{n}")
            for i in range(model.config.n_layer) for n in LINEARS}


@pytest.mark.parametrize("mode", list(MODES))
def test_quantizers_per_mode(quantized, mode):
    q = quantized(mode)
    for name, lin in linears(q).items():
        wq, iq = lin.weight_quantizer, lin.input_quantizer
        assert wq.is_enabled, name
        assert wq.maxbound == MAXBOUND[mode]
        out_f, in_f = lin.out_features, lin.in_features
        assert tuple(lin.weight.shape) == (out_f, in_f)  # Conv1D became QuantLinear with (out, in) weights
        if mode == "int8-weight-only":
            assert tuple(wq.amax.shape) == (out_f, 1)  # per output channel
            assert not iq.is_enabled and iq.pre_quant_scale is None
        elif mode == "int4-weight-only":
            assert tuple(wq.amax.shape) == (out_f * in_f // 128, 1)  # blocks of 128 along the input dim
            assert not iq.is_enabled
            assert iq.pre_quant_scale is not None and tuple(iq.pre_quant_scale.shape) == (in_f,)  # AWQ
        else:
            assert wq.amax.dim() == 0 and iq.is_enabled and iq.amax.dim() == 0 and iq.maxbound == 448.0
    summary = quantizer_summary(q)
    enabled = {k for k, v in summary.items() if v["enabled"]}
    expected = {f"{n}.weight_quantizer" for n in linears(q)}
    if mode == "float8":
        expected |= {f"{n}.input_quantizer" for n in linears(q)}
    assert enabled == expected  # nothing else: no lm_head, no LayerNorm, no attention-bmm quantizers


def test_weight_only_int8_changes_weights_but_not_much(quantized, tiny_gpt2):
    q = quantized("int8-weight-only")
    lin = q.transformer.h[0].mlp.c_fc
    with torch.no_grad(), lin.quantize_weight():
        fq = lin.weight.clone()
    raw = tiny_gpt2.transformer.h[0].mlp.c_fc.weight.t()  # HF Conv1D stores (in, out)
    assert torch.equal(lin.weight, raw)  # the raw weight is kept; quantization happens in the forward
    err = ((fq - raw).abs().max() / raw.abs().max()).detach()
    assert 0 < float(err) <= 1 / 127


def test_unknown_mode_lists_valid_modes(tiny_gpt2):
    with pytest.raises(SuiteError) as e:
        modelopt_quantize(copy.deepcopy(tiny_gpt2), "int2-everything")
    for m in MODES:
        assert m in str(e.value)


def test_configs_are_copies_and_module_presets_untouched():
    import modelopt.torch.quantization as mtq

    before = {m.modelopt_cfg: json.dumps(getattr(mtq, m.modelopt_cfg), default=str) for m in MODES.values()}
    for mode in MODES:
        cfg = quant_config(mode)
        qc = cfg["quant_cfg"]
        assert isinstance(qc, list)  # ModelOpt 0.47 format
        inputs = [e for e in qc if e.get("quantizer_name") == "*input_quantizer"]
        if MODES[mode].weight_only:
            assert inputs[-1].get("enable") is False  # the last matching entry wins
        assert cfg is not getattr(mtq, MODES[mode].modelopt_cfg)
    after = {k: json.dumps(getattr(mtq, k), default=str) for k in before}
    assert before == after


def test_dict_format_of_older_modelopt():
    cfg = {"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0}, "*input_quantizer": {"num_bits": 8}},
           "algorithm": "max"}
    _disable(cfg, "*input_quantizer")
    _disable(cfg, "*", parent_class="nn.LayerNorm")
    assert cfg["quant_cfg"]["*input_quantizer"] == {"enable": False}
    assert cfg["quant_cfg"]["nn.LayerNorm"] == {"*": {"enable": False}}
    with pytest.raises(SuiteError):
        _disable({"quant_cfg": 3}, "*")


def test_default_calibration_uses_create_forward_loop(tiny_tokenizer):
    from .conftest import make_gpt2

    model = make_gpt2(len(tiny_tokenizer), n_layer=1)
    seen = []
    model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].shape[0]), with_kwargs=True)
    q = modelopt_quantize(model, "int8-weight-only", tokenizer=tiny_tokenizer, dataset_name="embedded",
                          num_samples=6, batch_size=4)
    assert seen[:2] == [4, 2]  # 6 samples of the embedded corpus in batches of 4 (then ModelOpt's own passes)
    assert q.transformer.h[0].attn.c_attn.weight_quantizer.amax is not None
