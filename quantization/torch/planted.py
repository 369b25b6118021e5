"""The torch toolchain's planted faults (Toolchain.tools["planted"]; evaluation/analysis/planted.py runs them).

The FX INT8 ResNet50 (the route's `resnet_fx`, default calibration subset) is corrupted after conversion
(quantization/torch/layer_report.py: `int<b>:<layer>` = that layer's weights become symmetric per-tensor b-bit
values; `act-x<f>` = every activation quantizer's scale x f), and compared with the fused FP32 model layer by layer
on the test split in the same pass that gives its outputs.
"""
from __future__ import annotations

MODEL = "resnet50"
BASELINE = "eager"  # the FP32 variant the faults are measured against
QUANTIZED = "fx"  # the variant the faults are planted in
LABEL = "FX INT8"
CALIB_METHOD = "minmax+histogram (x86 default)"
FIDELITY_VS = "torch/eager (fused FP32)"
DEFAULT_PLANTS = "int2:fc,int3:conv1,int4:layer2.0.downsample.0,int4:fc,act-x4,act-x16"


def check(spec: str) -> None:
    """A bad plant spec -> SuiteError (one line), before anything slow runs."""
    from quantization.torch.layer_report import parse_plant

    parse_plant(spec)


def corrupt(fp32, qmodel, x, spec: str) -> dict:
    """A copy of `qmodel` with `spec` planted ("" = none), compared layer by layer with `fp32` on x: {slug (None when
    clean), description, info, layers (the per-layer report rows, worst first), outputs ({fp32, quantized})}."""
    import copy

    from quantization.torch.layer_report import apply_plant, layer_errors, parse_plant

    plant = parse_plant(spec)
    q = copy.deepcopy(qmodel)
    info = apply_plant(q, plant)
    outputs: dict = {}
    layers = layer_errors(fp32, q, x, planted=plant.layer if plant else None, outputs=outputs)
    return {"slug": plant.slug if plant else None, "description": plant.describe() if plant else None, "info": info,
            "layers": layers, "outputs": outputs}
