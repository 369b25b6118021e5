"""The torch toolchain's per-layer report (Toolchain.tools["layer_report"]) and its planted faults (torch env).

For the Torch.FX INT8 ResNet50 (the route's own `resnet_fx`, same calibration subset), every quantized
module of the converted GraphModule (quantized Conv2d / ConvReLU2d / Linear: conv+BN(+ReLU) fused) is
compared with the module of the same qualified name in the FP32 model fused the same way
(`fuse_fx`, eval mode: BN folded into the conv), on the evaluation samples (the test split; nothing
here sees calibration data). Two numbers per layer, both over all samples (energy-weighted):

- `local`: the quantized module's own error. Its (dequantized) INT8 input is fed to the FP32 fused
  module, and that output is compared with the module's dequantized INT8 output. Upstream error is the
  same on both sides, so this isolates what *this* layer's weight and output quantization cost. The
  report is sorted by local SQNR, worst first: a single bad layer ranks first even though every layer
  after it also sees its damage.
- `accumulated`: the module's dequantized output vs the FP32 model's output at that layer on the same
  image (end-to-end drift up to that point; grows with depth and is not used for the ranking).

Planted faults (`--plant`, and evaluation/analysis/planted.py through quantization/torch/planted.py) corrupt the
converted model on purpose: `int4:<layer>` (or `int2:<layer>`) makes one layer's weights per-tensor INT4 (INT2)
values, `act-x4` scales every activation quantizer's range by 4.
"""
from __future__ import annotations

import copy
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass

import numpy as np

from utils.errors import SuiteError

log = logging.getLogger(__name__)
METHOD = "fx"  # the quantized variant the report reads (the route's FX INT8 model)

# ------------------------------------------------------------------------------ planting faults

@dataclass(frozen=True)
class Plant:
    """What to corrupt: one layer's weights to `bits`-bit per-tensor values, and/or every activation range."""

    layer: str | None = None
    bits: int | None = None
    act_scale: float | None = None

    @property
    def slug(self) -> str:
        parts = []
        if self.layer:
            parts.append(f"int{self.bits}-{self.layer}")
        if self.act_scale:
            parts.append(f"act-x{self.act_scale:g}")
        return "_".join(parts) or "none"

    def describe(self) -> str:
        parts = []
        if self.layer:
            parts.append(f"{self.layer}: weights forced to per-tensor symmetric INT{self.bits} values "
                         f"({2 ** self.bits - 1} levels) instead of per-channel INT8")
        if self.act_scale:
            parts.append(f"every activation quantizer's range x{self.act_scale:g} (scales x{self.act_scale:g}, "
                         f"same zero points)")
        return "; ".join(parts) or "no fault"


def parse_plant(text: str | None) -> Plant | None:
    """'int4:layer3.0.conv2', 'int2:fc', 'act-x4', or both comma-separated."""
    if not text:
        return None
    layer = bits = scale = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"int([2-7]):(.+)", part)
        a = re.fullmatch(r"act-x([0-9.]+)", part)
        if m:
            bits, layer = int(m.group(1)), m.group(2)
        elif a:
            scale = float(a.group(1))
            if scale <= 0:
                raise SuiteError(f"--plant act-x<factor> needs a positive factor, got {part!r}")
        else:
            raise SuiteError(f"--plant: cannot read {part!r}; use int4:<layer>, int2:<layer> and/or act-x4")
    return Plant(layer, bits, scale)


def quantized_layers(qmodel) -> dict:
    """Qualified name -> quantized Conv/Linear module of a converted FX model."""
    import torch.ao.nn.quantized as nnq

    return {n: m for n, m in qmodel.named_modules() if isinstance(m, (nnq.Conv2d, nnq.Linear))}


def plant_weight_bits(qmodel, layer: str, bits: int) -> dict:
    """Replace `layer`'s INT8 per-channel weight by symmetric per-tensor `bits`-bit values (held in qint8)."""
    import torch

    layers = quantized_layers(qmodel)
    if layer not in layers:
        raise SuiteError(f"--plant: {layer!r} is not a quantized layer of the model; e.g. "
                         f"{', '.join(list(layers)[:4])}, ..., {list(layers)[-1]}")
    mod = layers[layer]
    w = mod.weight().dequantize()
    bias = mod.bias() if callable(getattr(mod, "bias", None)) else None
    qmax = 2 ** (bits - 1) - 1
    scale = float(w.abs().max()) / max(qmax, 1)
    q = torch.quantize_per_tensor(torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale, scale, 0, torch.qint8)
    mod.set_weight_bias(q, bias)
    levels = int(torch.unique(q.int_repr()).numel())
    return {"layer": layer, "bits": bits, "scale": scale, "levels_used": levels,
            "weight_rel_err": float((q.dequantize() - w).norm() / w.norm())}


def plant_activation_range(qmodel, factor: float) -> int:
    """Multiply every activation quantization scale of a converted FX model by `factor`. Returns how many."""
    import torch

    n = 0
    for mod in qmodel.modules():  # quantized modules' output scales
        if hasattr(mod, "scale") and hasattr(mod, "zero_point") and not isinstance(getattr(mod, "scale"), torch.Tensor):
            mod.scale = float(mod.scale) * factor
            n += 1
    for name, buf in qmodel.named_buffers():
        if re.search(r"_scale_\d+$", name):
            buf.mul_(factor)  # quantize_per_tensor inputs and quantized add/add_relu outputs
            n += 1
    return n


def apply_plant(qmodel, plant: Plant | None) -> dict:
    info: dict = {}
    if plant is None:
        return info
    if plant.layer:
        info["weights"] = plant_weight_bits(qmodel, plant.layer, plant.bits)
    if plant.act_scale:
        info["act_scales_changed"] = plant_activation_range(qmodel, plant.act_scale)
    info["plant"] = plant.describe()
    return info


# ------------------------------------------------------------------------------ the report

def fused_reference(fp32_model):
    """The FP32 model fused like FX prepare does (conv+bn(+relu), eval mode): same qualified names."""
    from torch.ao.quantization.quantize_fx import fuse_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fuse_fx(copy.deepcopy(fp32_model).eval())


def layer_errors(fp32_model, qmodel, x: np.ndarray, *, batch: int = 64, planted: str | None = None,
                 outputs: dict | None = None) -> list[dict]:
    """Per quantized layer: local and accumulated SQNR / relative error over x, sorted worst local SQNR first.

    `outputs`, when given, receives the final outputs of both models on x ('fp32': the fused FP32
    reference, 'quantized'), so a caller can score accuracy from the same pass.
    """
    import torch

    ref_model = fused_reference(fp32_model)
    ref_mods = dict(ref_model.named_modules())
    layers = {n: m for n, m in quantized_layers(qmodel).items() if n in ref_mods}
    if not layers:
        raise SuiteError("no quantized Conv/Linear layer of the model matches a module of the FP32 model")
    acc = {n: np.zeros(4) for n in layers}  # local: sum ref^2, sum noise^2; accumulated: same
    shapes: dict[str, tuple] = {}
    ref_out: dict[str, torch.Tensor] = {}
    handles = []
    capture = [True]  # off while a reference module is re-run on the quantized model's input

    def ref_hook(name):
        def hook(_m, _inp, out):
            if capture[0]:
                ref_out[name] = out.detach().float()
        return hook

    def q_hook(name):
        def hook(_m, inp, out):
            xin = inp[0].dequantize() if inp[0].is_quantized else inp[0]
            yq = (out.dequantize() if out.is_quantized else out).float()
            capture[0] = False
            try:
                local_ref = ref_mods[name](xin).float()
            finally:
                capture[0] = True
            a = acc[name]
            a[0] += float((local_ref.double() ** 2).sum())
            a[1] += float(((local_ref.double() - yq.double()) ** 2).sum())
            r = ref_out[name].double()
            a[2] += float((r ** 2).sum())
            a[3] += float(((r - yq.double()) ** 2).sum())
            shapes[name] = tuple(yq.shape[1:])
        return hook

    for n in layers:
        handles.append(ref_mods[n].register_forward_hook(ref_hook(n)))
        handles.append(layers[n].register_forward_hook(q_hook(n)))
    outs: dict[str, list] = {"fp32": [], "quantized": []}
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
                ref_out.clear()
                outs["fp32"].append(ref_model(xb).float().numpy())
                yq = qmodel(xb)
                outs["quantized"].append((yq.dequantize() if yq.is_quantized else yq).float().numpy())
    finally:
        for h in handles:
            h.remove()
    if outputs is not None:
        outputs.update({k: np.concatenate(v) for k, v in outs.items()})

    def db(sig, noise):
        return math.inf if noise == 0 else 10 * math.log10(sig / noise) if sig > 0 else -math.inf

    rows = []
    for n, m in layers.items():
        s_l, n_l, s_a, n_a = acc[n]
        w = m.weight()
        scheme = str(w.qscheme()).replace("torch.", "")
        rows.append(dict(layer=n, kind=type(m).__name__, local_sqnr_db=db(s_l, n_l),
                         local_rel_err=math.sqrt(n_l / s_l) if s_l else math.nan,
                         accum_sqnr_db=db(s_a, n_a), accum_rel_err=math.sqrt(n_a / s_a) if s_a else math.nan,
                         weight_qscheme=scheme, weight_levels=int(torch.unique(w.int_repr()).numel()),
                         out_scale=float(m.scale), out_shape="x".join(map(str, shapes.get(n, ()))),
                         planted=bool(planted and n == planted)))
    rows.sort(key=lambda r: (r["local_sqnr_db"], r["layer"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


# ------------------------------------------------------------------------------ the models, built by the route

def fx_setup(model: str, calib_samples: int = 128, eval_limit: int | None = None, threads: int = 2,
             baseline: str = "eager"):
    """(context, the FP32 `baseline` Built, the clean FX INT8 Built; `.handle` is each torch model) for the prepared
    model, built by the torch route through the kit's public build API (the same models the bench scores)."""
    from quantization.kit import build_variant
    from quantization.kit.analysis import route_argv

    argv = route_argv(calib_samples, threads, eval_limit)
    t0 = time.time()
    ctx, fp32 = build_variant("torch", model, baseline, argv=argv)
    _, q = build_variant("torch", model, METHOD, argv=argv)
    log.info("FX INT8 %s calibrated on %d train samples in %.1f s", model, len(ctx.data.calib), time.time() - t0)
    return ctx, fp32, q


def report(model: str, method: str | None = None, *, plant: str | None = None, calib_samples: int = 128,
           eval_limit: int | None = None, threads: int = 2):
    """The layer_report analysis: the FX INT8 model (optionally with planted faults) against the fused FP32 model."""
    from quantization.kit.analysis import LayerReport

    if method not in (None, METHOD):
        raise SuiteError(f"the torch layer report reads the {METHOD} variant; got --method {method}")
    planted = parse_plant(plant)
    ctx, fp32_built, q_built = fx_setup(model, calib_samples, eval_limit, threads)
    data, fp32, q = ctx.data, fp32_built.handle, q_built.handle
    info = apply_plant(q, planted)
    if info:
        log.info("planted: %s", info)
    t0 = time.time()
    rows = layer_errors(fp32, q, data.test.x, planted=planted.layer if planted else None)
    log.info("%d layers compared on %d test samples in %.1f s", len(rows), len(data.test), time.time() - t0)
    return LayerReport(rows, f"layer_report_torch_{model}" + (f"_{planted.slug}" if planted else ""),
                       f"{model} Torch FX INT8 vs FP32, per layer, {len(data.test)} test samples"
                       + (f"\nplanted: {planted.describe()}" if planted else ""))
