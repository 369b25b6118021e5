"""The torch toolchain's vendor recipes (Toolchain.tools["vendor"]; evaluation/analysis/vendor.py times them beside
the route's variants in the same interleaved trials).

PyTorch's documented minimal paths, nothing of the suite's own tuning:
  fx       prepare_fx(model, get_default_qconfig_mapping("x86"), example) -> calibrate -> convert_fx, eager
  pt2e     torch.export (dynamic batch) -> prepare_pt2e(X86InductorQuantizer default config) -> calibrate ->
           convert_pt2e -> torch.compile with inductor freezing
  dynamic  torchao quantize_(model, Int8DynamicActivationInt8WeightConfig()) on the scope's linear layers (GPT-2's
           Conv1D layers made nn.Linear first: torchao quantizes nn.Linear), called as model(input_ids)

Module-level names are plain data (the stdlib launcher reads them); the libraries are imported by `recipe` only.
"""
from __future__ import annotations

from models.catalog import CAUSAL_LM, CLASSIFIER

# task -> the route's methods compared with their recipe
PAIRS = {CLASSIFIER: ("fx", "pt2e"), CAUSAL_LM: ("dynamic",)}
RECIPE = {
    "fx": "prepare_fx/convert_fx (x86 qconfig mapping), GraphModule called eagerly",
    "pt2e": "torchao pt2e X86InductorQuantizer + torch.compile (freezing)",
    "dynamic": "torchao quantize_ Int8DynamicActivationInt8WeightConfig, model(input_ids)",
}
# what the route's deployment does beyond the recipe (said in every row; the reason when a ratio is outside 10 %)
DIFFERENCES = {
    "fx": "route: the converted model traced and frozen as TorchScript (torch.jit.trace + freeze)",
    "pt2e": "route: the same recipe, spatial dims exported at the latency resolution from the calibrated "
            "graph's state",
    "dynamic": "route: logits only (use_cache=False), Conv1D made nn.Linear the same way",
}


def _torch_scope_modules(ctx, method: str) -> tuple[str, ...]:
    from quantization.kit.analysis import scope_kept

    scope, _ = scope_kept(ctx, method)
    return tuple(x for x in ctx.macs["layers"] if ":" not in x and scope.keeps(x)) if scope.keep else ()


def _quantized_module_paths(gm) -> list[str]:
    return [n for n, m in gm.named_modules() if type(m).__module__.startswith(("torch.ao.nn.quantized",
                                                                              "torch.ao.nn.intrinsic.quantized"))
            and "Packed" not in type(m).__name__ and ("Conv" in type(m).__name__ or "Linear" in type(m).__name__)]


def recipe(ctx, method: str, threads: int):
    """The recipe of `method` applied to the variant's FP32 model (the same checkpoint), calibration samples and
    scope."""
    import numpy as np
    import torch

    from quantization.kit.analysis import Recipe

    torch.set_num_threads(threads)
    calib = ctx.task.calib_array(ctx.data)
    if method == "dynamic":
        return _torchao_dynamic(ctx, method)
    from models.embedded import load_manifest_classifier

    model = load_manifest_classifier(ctx.manifest).eval()
    if method == "fx":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        mapping = get_default_qconfig_mapping("x86")
        for name in _torch_scope_modules(ctx, method):
            mapping = mapping.set_module_name(name, None)
        prepared = prepare_fx(model, mapping, (torch.from_numpy(calib[:1]),))
        with torch.no_grad():
            for i in range(0, len(calib), 32):
                prepared(torch.from_numpy(calib[i:i + 32]))
        q = convert_fx(prepared)
        reduced = _quantized_module_paths(q)
    else:  # pt2e
        import torch._inductor.config as inductor_config
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86_quantizer
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        res = int(ctx.manifest.get("latency_resolution", 224))
        if calib.shape[-1] != res:  # the export's spatial size is static: calibrate at the timed resolution
            calib = torch.nn.functional.interpolate(torch.from_numpy(calib), size=(res, res), mode="bilinear").numpy()
        example = (torch.from_numpy(np.ascontiguousarray(calib[:2])),)
        ep = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                 strict=True)
        quantizer = x86_quantizer.X86InductorQuantizer().set_global(
            x86_quantizer.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(ep.module(), quantizer)
        for i in range(0, len(calib), 32):
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + 32])))
        converted = convert_pt2e(prepared)
        reduced = []
        for n in converted.graph.nodes:
            if n.op == "call_function" and any(k in str(n.target) for k in ("conv", "linear")) and len(n.args) > 1 \
                    and all("dequantize" in str(getattr(a, "target", "")) for a in n.args[:2]):
                stack = n.meta.get("nn_module_stack") or {}
                if stack:
                    reduced.append(str(list(stack.values())[-1][0]))
        inductor_config.freezing = True
        q = torch.compile(converted)

    def timed(x):
        xt = torch.from_numpy(x)

        def once():
            with torch.no_grad():
                return q(xt)

        return once

    return Recipe(timed, reduced_layers=list(dict.fromkeys(reduced)))


def _torchao_dynamic(ctx, method: str):
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from models.embedded import load_causal_lm
    from quantization.kit.analysis import Recipe, scope_kept
    from utils.torchvision_compat import import_torchvision

    import_torchvision()
    from transformers.pytorch_utils import Conv1D

    model = load_causal_lm(ctx.manifest["hf_dir"]).eval()
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]:
        parent, _, child = name.rpartition(".")
        lin = torch.nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.weight.t())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        setattr(model.get_submodule(parent) if parent else model, child, lin)
    scope, _ = scope_kept(ctx, method)
    quantize_(model, Int8DynamicActivationInt8WeightConfig(),
              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and not scope.keeps(fqn))
    reduced = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and type(m.weight.data) is not torch.Tensor]

    def timed(x):
        ids = torch.from_numpy(x)

        def once():
            with torch.no_grad():
                return model(ids)

        return once

    return Recipe(timed, reduced_layers=reduced)
