"""`modelopt_quantize`: ModelOpt PTQ (fake quant) of a Hugging Face GPT-2 in one of the route's modes."""
from __future__ import annotations

import copy
import logging
from typing import Callable

from quantization.modelopt_tripy.modes import get_mode
from utils.errors import SuiteError

log = logging.getLogger(__name__)

DEFAULT_CALIB_DATASET = "embedded"  # offline default; "cnn_dailymail" when HF datasets can reach it
DEFAULT_CALIB_SAMPLES = 64
DEFAULT_CALIB_BATCH = 8


def _disable(cfg: dict, pattern: str, parent_class: str | None = None) -> None:
    """Append/set `pattern: disabled` in either ModelOpt config format (0.47 list, <=0.41 dict)."""
    qc = cfg["quant_cfg"]
    if isinstance(qc, list):  # 0.47: entries are matched in order, the last match wins
        entry = {"quantizer_name": pattern, "enable": False}
        if parent_class:
            entry["parent_class"] = parent_class
        qc.append(entry)
    elif isinstance(qc, dict):  # 0.41: wildcard pattern -> attributes; module class -> {pattern: attributes}
        if parent_class:
            qc[parent_class] = {pattern: {"enable": False}}
        else:
            qc[pattern] = {"enable": False}
    else:
        raise SuiteError(f"unsupported ModelOpt quant_cfg format: {type(qc).__name__}")


def quant_config(quant_mode: str) -> dict:
    """A deep copy of ModelOpt's preset for `quant_mode`, input quantizers disabled for weight-only modes."""
    mode = get_mode(quant_mode)
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(getattr(mtq, mode.modelopt_cfg))  # never mutate ModelOpt's module-level dicts
    if mode.weight_only:
        _disable(cfg, "*input_quantizer")
    _disable(cfg, "*lm_head*")  # tied to the embedding; every preset already excludes it, keep that explicit
    # 0.47's FP8 preset also fake-quantizes LayerNorm inputs (QuantLayerNorm); the Tripy GPT quantizes the
    # linears only (as TensorRT-Incubator's nanoGPT does), so the calibrated model must not either.
    _disable(cfg, "*", parent_class="nn.LayerNorm")
    return cfg


def _default_loop(model_hf, num_samples: int, batch_size: int, dataset_name: str, tokenizer) -> Callable:
    from quantization.modelopt_tripy.calibration import create_forward_loop

    if tokenizer is None:
        from transformers import AutoTokenizer

        src = getattr(model_hf.config, "_name_or_path", "") or ""
        if not src:
            raise SuiteError("modelopt_quantize needs a tokenizer (or forward_loop=) for a model without a source path")
        tokenizer = AutoTokenizer.from_pretrained(src)
    device = next(model_hf.parameters()).device
    return create_forward_loop(model_hf, dataset_name, tokenizer, device, batch_size, num_samples)


def modelopt_quantize(model_hf, quant_mode, *, forward_loop: Callable | None = None, tokenizer=None,
                      dataset_name: str = DEFAULT_CALIB_DATASET, num_samples: int = DEFAULT_CALIB_SAMPLES,
                      batch_size: int = DEFAULT_CALIB_BATCH):
    """Quantize and calibrate `model_hf` in place with ModelOpt; returns the fake-quant model.

    quant_mode: "int8-weight-only" (INT8 per-channel weights, inputs fp), "int4-weight-only" (INT4_AWQ_CFG:
    AWQ-lite, blocks of 128 along the input dim, inputs fp after AWQ's pre-quant scale), "float8"
    (FP8_DEFAULT_CFG: per-tensor E4M3 weights and inputs). Calibration: `forward_loop` if given (the route
    passes the suite's shared windows), else `create_forward_loop(model, dataset_name, tokenizer, ...)`.
    """
    cfg = quant_config(quant_mode)  # validates the mode before anything expensive
    import modelopt.torch.quantization as mtq

    model_hf.eval()
    if forward_loop is None:
        forward_loop = _default_loop(model_hf, num_samples, batch_size, dataset_name, tokenizer)
    model_hf = mtq.quantize(model_hf, cfg, forward_loop)
    model_hf.eval()
    return model_hf


def quantizer_summary(model) -> dict[str, dict]:
    """name -> {enabled, maxbound, amax shape, pre_quant_scale} for every ModelOpt TensorQuantizer."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer):
            amax = getattr(m, "_amax", None)
            out[name] = {"enabled": bool(m.is_enabled), "maxbound": m.maxbound if m.is_enabled else None,
                         "amax_shape": tuple(amax.shape) if amax is not None else None,
                         "pre_quant_scale": getattr(m, "pre_quant_scale", None) is not None}
    return out
