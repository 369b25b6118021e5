"""OpenVINO + NNCF route: the manifest's FP32 ONNX read by OpenVINO, NNCF post-training INT8 quantization and
NNCF weight-only compression, compiled for the OpenVINO CPU plugin.

    python -m quantization.openvino --model gpt2 --methods fp32,int8,int8-wo,int4-wo

Rows (utils/registry.py declares them):
  fp32     the FP32 ONNX as OpenVINO's ONNX frontend reads it (INFERENCE_PRECISION_HINT=f32: no silent bf16)
  int8     nncf.quantize on the shared calibration subset (preset performance; GPT-2 with model_type=transformer),
           the layers its quantization scope keeps (utils/registry.py: GPT-2's LM head and attention MatMuls) in
           NNCF's ignored scope
  int8+head  the same with GPT-2's "head" scope (the LM head quantized too)
  int8-wo  nncf.compress_weights INT8_ASYM (GPT-2; data-free, activations stay float)
  int4-wo  nncf.compress_weights INT4_SYM, group 128, ratio 1.0 (GPT-2; NNCF keeps the embedding and the LM head
           in INT8_ASYM); `--int4-mode int4_asym` for the asymmetric variant
Quantized models are cached as OpenVINO IR (.xml + .bin, FP32 weights not squeezed to FP16) under
`<model cache>/openvino/`, named by the hash of everything that made them and verified on reuse.
Every row's compute precision is read from the kernels the CPU plugin really ran (`ov.runtime_precisions`); for the
weight-only rows, whose kernel names read f32 whether or not the plugin quantizes their activations on the fly, it
comes from an experiment (`ov.dq_account`): the same IR compiled with DYNAMIC_QUANTIZATION_GROUP_SIZE=0 is timed
before the row's own compile, and a clearly slower run means the row's matmuls ran integer (compute precision int8).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantization.kit import Built, Calibration, ModelContext, Route, calibration_batches, main_for, unavailable_import
from quantization.kit import cache
from quantization.kit import onnx as onnx_kit
from quantization.kit.tasks import file_size_mb
from quantization.openvino import ov as ov_calls
from utils import artifacts
from utils.errors import SuiteError

log = logging.getLogger(__name__)

TOOLCHAIN = "openvino"
PTQ = ("int8", "int8+head")
WEIGHT_ONLY = {"int8-wo": "int8_asym", "int4-wo": None}  # None: --int4-mode
FLOAT_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass(frozen=True)
class Options:
    preset: str = "performance"
    fast_bias_correction: bool = True
    int4_mode: str = "int4_sym"
    group_size: int = 128
    ratio: float = 1.0
    pin: bool = False
    dq_probe: bool = True

    def __post_init__(self) -> None:
        if self.preset not in ov_calls.PRESETS:
            raise SuiteError(f"--preset must be one of {', '.join(ov_calls.PRESETS)} (got {self.preset!r})")
        if self.int4_mode not in ("int4_sym", "int4_asym"):
            raise SuiteError(f"--int4-mode must be int4_sym or int4_asym (got {self.int4_mode!r})")
        if self.group_size < 1 and self.group_size != -1:
            raise SuiteError(f"--group-size must be >= 1, or -1 for per-channel (got {self.group_size})")
        if not 0.0 < self.ratio <= 1.0:
            raise SuiteError(f"--ratio must be in (0, 1] (got {self.ratio})")


def versions() -> dict:
    import nncf
    import openvino as ov

    return {"openvino": ov.get_version(), "nncf": nncf.__version__}


# ------------------------------------------------------------------------------ artifacts

def ignored_names(ctx: ModelContext, method: str) -> tuple[str, list[str]]:
    """(scope name, NNCF ignored-scope names): the friendly names of the OpenVINO model's MatMul/convolution ops whose
    layer the variant's quantization scope keeps in the higher precision. OpenVINO's ONNX frontend names an op after
    its ONNX node ('/m/.../c_attn/Gemm/WithoutBiases') or the graph output it makes ('logits': GPT-2's LM head);
    kit.macs maps both back to the FP32 ONNX's nodes."""
    from quantization.kit.macs import node_of

    name, scope = ctx.scope_for(method)
    if not scope.keep:
        return name, []
    table = ctx.macs
    out = []
    for op in ov_calls.mac_op_names(ov_calls.read_onnx(ctx.state["src"][0])):
        node = node_of(table, op)
        if node is not None and scope.keeps(table["nodes"][node]["layer"]):
            out.append(op)
    return name, out


def make_ir(ctx: ModelContext, method: str, opts: Options) -> tuple[Path, dict, bool]:
    """The quantized / weight-compressed IR of `method` (made, or reused when its files match their hashes)."""
    src, src_sha = ctx.state["src"]
    lm = ctx.task.kind == "language-model"
    if method in PTQ:
        scope, ignored = ignored_names(ctx, method)
        settings = {"kind": "ptq", "preset": opts.preset, "model_type": "transformer" if lm else None,
                    "fast_bias_correction": opts.fast_bias_correction, "scope": scope, "ignored": ignored,
                    **onnx_kit.calib_key(ctx)}
    elif method in WEIGHT_ONLY:
        mode = WEIGHT_ONLY[method] or opts.int4_mode
        int4 = mode.startswith("int4")
        settings = {"kind": "compress_weights", "mode": mode, "group_size": opts.group_size if int4 else None,
                    "ratio": opts.ratio if int4 else None}
    else:
        raise SuiteError(f"unknown openvino method {method!r}")
    key = {"src": src_sha, "method": method, **settings, **versions()}
    out = cache.artifact_path(ctx.cache_dir, method, key, suffix=".xml")

    def make(tmp_out: Path) -> dict:
        model = ov_calls.read_onnx(src)
        if settings["kind"] == "ptq":
            batches = calibration_batches(ctx)
            model, info = ov_calls.ptq_int8(model, batches, model_type=settings["model_type"], preset=opts.preset,
                                            subset_size=len(batches), fast_bias_correction=opts.fast_bias_correction,
                                            ignored_scope=({"names": settings["ignored"]} if settings["ignored"]
                                                           else None))
        else:
            model, info = ov_calls.compress_weights(model, settings["mode"], group_size=opts.group_size,
                                                    ratio=opts.ratio)
        ov_calls.save_model(model, tmp_out)
        return {"settings": settings, "info": info, "src_sha": src_sha, **versions()}

    return cache.cached_artifact(out, make, companions=(".bin",))


def compute_precision(rp: dict) -> str:
    """The row's compute precision from the kernels that ran: int8 when integer kernels did the
    multiply-accumulate work, else the float type of the kernels (f32 -> fp32)."""
    if rp["int_compute"]:
        return "int8"
    floats = [FLOAT_NAMES.get(p, p) for p in rp["compute_precision"].split("+")]
    return "+".join(floats) if floats != ["none"] else "unknown"


def precision_note(rp: dict) -> str:
    kernels = ", ".join(f"{k} x{n}" for v in rp["kernels"].values() for k, n in sorted(v.items()))
    return (f"kernel names in the CPU plugin's runtime model: {rp['int_compute']} integer / {rp['float_compute']} "
            f"float multiply-accumulate layers ({kernels or 'none'})")


# ------------------------------------------------------------------------------ the route

class OpenVinoRoute(Route):
    toolchain = TOOLCHAIN
    description = ("OpenVINO + NNCF on the CPU plugin: FP32 ONNX baseline, NNCF post-training INT8 quantization, "
                   "NNCF weight-only INT8/INT4 compression (GPT-2).")
    Options = Options

    def add_options(self, ap: argparse.ArgumentParser) -> None:
        g = ap.add_argument_group("OpenVINO / NNCF")
        g.add_argument("--preset", default="performance", choices=ov_calls.PRESETS,
                       help="NNCF quantization preset (performance: symmetric activations and weights)")
        g.add_argument("--fast-bias-correction", default=True, action=argparse.BooleanOptionalAction,
                       help="NNCF FastBiasCorrection after quantization (off: no bias correction)")
        g.add_argument("--int4-mode", default="int4_sym", choices=("int4_sym", "int4_asym"),
                       help="nncf.compress_weights mode of the int4-wo rows")
        g.add_argument("--group-size", type=int, default=128, help="int4-wo: weights per quantization group")
        g.add_argument("--ratio", type=float, default=1.0,
                       help="int4-wo: share of the compressible layers in int4 (the rest int8_asym)")
        g.add_argument("--pin", default=False, action=argparse.BooleanOptionalAction,
                       help="ENABLE_CPU_PINNING (off by default: the other routes do not pin threads)")
        g.add_argument("--dq-probe", default=True, action=argparse.BooleanOptionalAction,
                       help="weight-only rows: time the IR with DYNAMIC_QUANTIZATION_GROUP_SIZE=0 too, to tell whether "
                            "the plugin's dynamic quantization ran (its kernel names do not say)")

    def unavailable(self, opts) -> str | None:
        return unavailable_import("openvino", "nncf", "onnx",
                                  hint="create the environment with `python3 -m evaluation.launch.envs openvino`")

    def open(self, ctx: ModelContext) -> None:
        # corrupt/missing FP32 ONNX -> one-line error before any row
        ctx.state["src"] = onnx_kit.source_onnx(ctx.manifest)

    def build(self, ctx: ModelContext, method: str, precision: str, device: str) -> Built:
        opts: Options = ctx.opts
        src, _ = ctx.state["src"]
        notes: list[str] = []
        calibration = None
        extra: dict = {"versions": versions()}
        if method == "fp32":
            model = ov_calls.read_onnx(src)
            size_mb, artifact = file_size_mb(src), src
            notes.append("FP32 ONNX from models.prepare read by OpenVINO's ONNX frontend")
        else:
            xml, meta, reused = make_ir(ctx, method, opts)
            model, size_mb, artifact = ov_calls.load_model(xml), ov_calls.model_size_mb(xml), xml
            info, settings = meta["info"], meta["settings"]
            if settings["kind"] == "ptq":
                notes.append(f"NNCF quantize: preset {settings['preset']}, model_type "
                             f"{settings['model_type'] or 'default'}, fast_bias_correction "
                             f"{settings['fast_bias_correction']}, target_device CPU, subset_size "
                             f"{info['subset_size']} batches ({info['samples_fed']} samples); quantization scope "
                             f"'{settings.get('scope')}': {len(settings.get('ignored') or [])} MatMul/convolution "
                             "ops in NNCF's ignored scope")
                calibration = Calibration(info["samples_fed"], info["seconds"], "nncf-minmax")
            else:
                int4 = settings["mode"].startswith("int4")
                notes.append(f"NNCF compress_weights {settings['mode'].upper()}"
                             + (f", group_size {settings['group_size']}, ratio {settings['ratio']} (embedding and "
                                "LM head INT8_ASYM, NNCF's default)" if int4 else "")
                             + "; data-free, activations float")
                calibration = Calibration(0, info["seconds"], "data-free")
                extra["weights_after"] = info.get("weights_after")
            notes.append("IR (.xml + .bin) cached" + (" and reused (quantization seconds from the run that made it)"
                                                      if reused else ""))
            extra["nncf"] = {k: v for k, v in info.items() if k not in ("weights_before", "weights_after")}
        x1 = ctx.task.latency_input(1, ctx.manifest, ctx.data).x
        off = None
        if method in WEIGHT_ONLY and opts.dq_probe:  # before the row's own compile: one compiled copy at a time
            off_compiled, _ = ov_calls.compile_cpu(model, ctx.cfg.threads, latency=True, pin=opts.pin,
                                                   inference_precision="f32", dynamic_quantization_group_size=0)
            off = ov_calls.timed_run(off_compiled, x1)
            del off_compiled
        compiled, props = ov_calls.compile_cpu(model, ctx.cfg.threads, latency=True, pin=opts.pin,
                                               inference_precision="f32")
        notes.append("OpenVINO CPU properties set: " + ", ".join(f"{k}={v}" for k, v in props["set"].items()))
        if props["mismatch"]:
            notes.append("read back differently: " + ", ".join(f"{k}={props['read'].get(k)}" for k in props["mismatch"]))
        dq = props["read"].get("DYNAMIC_QUANTIZATION_GROUP_SIZE")
        if dq is not None:
            notes.append(f"plugin default kept: DYNAMIC_QUANTIZATION_GROUP_SIZE={dq}")
        predict = ov_calls.predict_fn(compiled)
        predict(x1)  # kernels are picked at the first inference
        rp = ov_calls.runtime_precisions(compiled)
        reduced = ov_calls.reduced_original_names(compiled) if method != "fp32" else None
        compute = compute_precision(rp)
        notes.append(precision_note(rp))
        if off is not None:
            acc = ov_calls.dq_account(off, ov_calls.timed_run(compiled, x1))
            extra["dynamic_quantization"] = acc
            notes.append(ov_calls.dq_note(acc))
            if acc["active"]:  # the weight-compressed layers multiply in integers: they count in the coverage
                compute = "int8"
                reduced = list(dict.fromkeys((reduced or []) + ov_calls.weight_compressed_original_names(compiled)))
        extra.update(openvino_properties=props, runtime_precisions={k: rp[k] for k in (
            "compute", "runtime", "kernels", "int_compute", "float_compute", "executed")},
            artifact=artifacts.relative_to(ctx.source.cache_dir, artifact))
        request = compiled.create_infer_request()
        in_type = compiled.inputs[0].get_element_type().to_dtype()

        def timed(x: np.ndarray):
            x = np.ascontiguousarray(x, dtype=in_type)
            return lambda: request.infer(x, share_inputs=True, share_outputs=True)

        notes.append("timed: one InferRequest.infer per call (inputs shared, output left in the plugin's buffer)")
        return Built(predict, size_mb=round(size_mb, 3), compute_precision=compute, calibration=calibration,
                     notes=notes, extra=extra, timed=timed, handle=compiled, artifact=Path(artifact),
                     reduced_nodes=reduced, coverage_source="the CPU plugin's runtime model (kernel precision of "
                                                            "each layer, its originalLayersNames)" + (
                         "; and its weight-compressed layers, whose activations the plugin quantizes on the fly (the "
                         "on/off timing measured it active)" if (extra.get("dynamic_quantization") or {}).get("active")
                         else ""))


ROUTE = OpenVinoRoute()
main = main_for(ROUTE)

if __name__ == "__main__":
    raise SystemExit(main())
