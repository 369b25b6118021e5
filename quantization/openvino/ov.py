"""OpenVINO + NNCF calls as pure functions (the route wraps them into rows).

openvino and nncf are imported inside the functions, so importing this module needs only numpy.
Every failure a user can cause (missing or corrupt model file) is a one-line SuiteError.

Pitfalls these functions guard against (docs/routes/openvino.md has the full list):
- The CPU plugin's default INFERENCE_PRECISION_HINT is bf16 on CPUs with AVX512_BF16/AMX, so an
  "FP32" row would silently compute in bf16: `compile_cpu` sets f32 and reads it back.
- `ov.save_model` compresses FP32 weights to FP16 by default: `save_model` passes compress_to_fp16=False.
- ENABLE_CPU_PINNING defaults to True in OpenVINO; the ORT route (explicit intra_op_num_threads) and the
  torch routes (torch.set_num_threads) do not pin threads, so `compile_cpu` turns pinning off unless asked.
- A weight-compressed (int8/int4 weight-only) layer reports its WEIGHT type as runtimePrecision (u8/i4), and its
  kernel name (primitiveType, e.g. brgemm_avx512_f32) is the same whether the plugin's dynamic quantization
  (DYNAMIC_QUANTIZATION_GROUP_SIZE: activations quantized to int8 per group on the fly, integer matmuls) runs or
  not: neither field tells which arithmetic ran. `timed_run` + `dq_account` tell it by experiment: the same IR
  compiled with the setting at 0 and at the plugin's value, timed on the same input.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from utils.errors import SuiteError, failure_reason

PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
WEIGHT_MODES = ("int8_asym", "int8_sym", "int4_sym", "int4_asym")
# Runtime layer types (CPU plugin names after its fusions) that do the model's multiply-accumulate work.
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm",
                  "FullyConnectedCompressed")
INT_PRECISIONS = ("u8", "i8", "u4", "i4", "i32")


@functools.lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


# ------------------------------------------------------------------------------ files

def read_onnx(path: Path | str):
    """ONNX file -> ov.Model (the OpenVINO ONNX frontend). Missing/corrupt file -> one-line SuiteError."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path} does not exist (prepare the model first: python -m models.prepare)")
    try:
        return _core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError/OpConversionFailure/...
        raise SuiteError(f"OpenVINO cannot read {path} ({failure_reason(exc, 240)})") from None


def save_model(model, path: Path | str) -> Path:
    """Write `model` as OpenVINO IR `path` (.xml) + its .bin, atomically enough for a cache.

    Both files are written into a temporary folder beside `path`, then moved in: the .bin first and the
    .xml last, so an .xml that exists always has its complete .bin. Weights are stored as they are
    (compress_to_fp16=False: ov.save_model's default would halve FP32 weights to FP16)."""
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise SuiteError(f"an OpenVINO IR path ends with .xml, not {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp"))
    try:
        ov.save_model(model, str(tmp / path.name), compress_to_fp16=False)
        path.unlink(missing_ok=True)  # never leave an old .xml beside a new .bin
        os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_model(path: Path | str):
    """OpenVINO IR (.xml with its .bin) -> ov.Model; missing/corrupt -> one-line SuiteError."""
    path = Path(path)
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise SuiteError(f"{path} (or its .bin) does not exist")
    try:
        return _core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001
        raise SuiteError(f"OpenVINO cannot read {path} ({failure_reason(exc, 240)})") from None


def model_size_mb(path_xml: Path | str) -> float:
    """Bytes of the IR on disk (.xml + .bin) in MB (1e6, like quantization.common.file_size_mb)."""
    p = Path(path_xml)
    return (p.stat().st_size + p.with_suffix(".bin").stat().st_size) / 1e6


# ------------------------------------------------------------------------------ quantization

def _leading_dim(item: Any) -> int:
    first = next(iter(item.values())) if isinstance(item, dict) else item
    shape = np.shape(first)
    return int(shape[0]) if shape else 1


def ptq_int8(model, calib_batches: Sequence[dict | np.ndarray], *, model_type: str | None = None,
             preset: str = "performance", subset_size: int | None = None, fast_bias_correction: bool = True,
             ignored_scope: dict | None = None) -> tuple[Any, dict]:
    """NNCF post-training INT8 quantization (static, min-max style statistics + bias correction).

    calib_batches: the calibration feed, each item one inference (an array for a single-input model or a
    {input name: array} dict); a batched item counts its leading dimension as samples.
    subset_size: how many ITEMS NNCF reads (NNCF counts dataset items; default all of them).
    model_type: "transformer" (GPT-2: keeps softmax/layernorm paths in float, NNCF's transformer patterns).
    ignored_scope: kwargs of nncf.IgnoredScope (names=[...], types=[...], patterns=[...]).
    Returns (quantized ov.Model, info) with info = items_fed (distinct items NNCF pulled), samples_fed,
    transform_calls (all pulls, passes included), seconds, preset, model_type, subset_size, fast_bias_correction.
    """
    import nncf

    if preset not in PRESETS:
        raise SuiteError(f"preset must be one of {PRESETS}, not {preset!r}")
    if model_type not in MODEL_TYPES:
        raise SuiteError(f"model_type must be one of {MODEL_TYPES}, not {model_type!r}")
    items = list(calib_batches)
    if not items:
        raise SuiteError("NNCF quantization needs at least one calibration batch")
    subset = len(items) if subset_size is None else int(subset_size)
    if subset < 1:
        raise SuiteError("subset_size must be >= 1")

    seen: set[int] = set()
    calls = 0

    def transform(pair):
        nonlocal calls
        idx, item = pair
        calls += 1
        seen.add(idx)
        return item

    dataset = nncf.Dataset(list(enumerate(items)), transform)
    kwargs: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=subset, fast_bias_correction=bool(fast_bias_correction),
        target_device=nncf.TargetDevice.CPU)
    if model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if ignored_scope:
        kwargs["ignored_scope"] = nncf.IgnoredScope(**ignored_scope)
    t0 = time.perf_counter()
    try:
        quantized = nncf.quantize(model, dataset, **kwargs)
    except Exception as exc:  # noqa: BLE001 - nncf raises ValidationError/InternalError/RuntimeError
        raise SuiteError(f"NNCF quantization failed ({failure_reason(exc, 240)})") from None
    seconds = time.perf_counter() - t0
    info = {"items_fed": len(seen), "samples_fed": sum(_leading_dim(items[i]) for i in seen),
            "transform_calls": calls, "seconds": round(seconds, 3), "preset": preset, "model_type": model_type,
            "subset_size": subset, "fast_bias_correction": bool(fast_bias_correction),
            "ignored_scope": ignored_scope or None, "nncf": nncf.__version__}
    return quantized, info


def weight_precisions(model) -> dict[str, int]:
    """Element types of the model's Constant nodes with >= 2 dims (the weights), counted by elements."""
    out: Counter = Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and len(op.get_output_partial_shape(0)) >= 2:
            shape = op.get_output_shape(0)
            out[op.get_output_element_type(0).get_type_name()] += int(np.prod(shape))
    return dict(out)


def compress_weights(model, mode: str = "int8_asym", *, group_size: int = 128, ratio: float = 1.0,
                     all_layers: bool | None = None) -> tuple[Any, dict]:
    """NNCF data-free weight-only compression: weights stored in int8/int4, activations stay float
    (the CPU plugin may still quantize activations on the fly, see runtime_precisions).

    group_size and ratio apply to the int4 modes only (NNCF rejects them for int8). For int4 NNCF keeps
    the embedding and last layer in int8_asym unless all_layers=True. Returns (model, info) with info =
    mode, group_size, ratio, all_layers, seconds, weight element counts by type before/after."""
    import nncf

    if mode not in WEIGHT_MODES:
        raise SuiteError(f"weight compression mode must be one of {WEIGHT_MODES}, not {mode!r}")
    before = weight_precisions(model)
    kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode(mode)}
    int4 = mode.startswith("int4")
    if int4:
        kwargs.update(group_size=int(group_size), ratio=float(ratio))
        if all_layers is not None:
            kwargs["all_layers"] = bool(all_layers)
    t0 = time.perf_counter()
    try:
        out = nncf.compress_weights(model, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise SuiteError(f"NNCF weight compression ({mode}) failed ({failure_reason(exc, 240)})") from None
    info = {"mode": mode, "group_size": int(group_size) if int4 else None, "ratio": float(ratio) if int4 else None,
            "all_layers": all_layers if int4 else None, "seconds": round(time.perf_counter() - t0, 3),
            "weights_before": before, "weights_after": weight_precisions(out), "nncf": nncf.__version__}
    return out, info


# ------------------------------------------------------------------------------ runtime

def compile_cpu(model, threads: int, *, latency: bool = True, pin: bool = False,
                inference_precision: str | None = "f32",
                dynamic_quantization_group_size: int | None = None) -> tuple[Any, dict]:
    """Compile for the CPU plugin with the suite's thread settings; returns (compiled, properties).

    Set: PERFORMANCE_HINT=LATENCY (or THROUGHPUT), NUM_STREAMS=1, INFERENCE_NUM_THREADS=threads,
    ENABLE_CPU_PINNING=pin (False by default: the other routes do not pin threads), and
    INFERENCE_PRECISION_HINT=f32 (the plugin's default is bf16 where the CPU has it, which would turn FP32
    rows into bf16 ones; for INT8 models it is the precision of the layers left in float).
    DYNAMIC_QUANTIZATION_GROUP_SIZE is set only when given (0 turns off on-the-fly activation quantization).
    properties = {"set": {key: value}, "read": {key: value read back from the compiled model},
    "mismatch": [keys whose read-back differs from what was set]}; values as strings.
    """
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    if int(threads) < 1:
        raise SuiteError("threads must be >= 1")
    mode = hints.PerformanceMode.LATENCY if latency else hints.PerformanceMode.THROUGHPUT
    config: dict[str, Any] = {
        hints.performance_mode(): mode,
        props.num_streams(): 1,
        props.inference_num_threads(): int(threads),
        hints.enable_cpu_pinning(): bool(pin),
    }
    if inference_precision is not None:
        config[hints.inference_precision()] = _ov_type(inference_precision)
    if dynamic_quantization_group_size is not None:
        config[hints.dynamic_quantization_group_size()] = int(dynamic_quantization_group_size)
    try:
        compiled = _core().compile_model(model, "CPU", config)
    except Exception as exc:  # noqa: BLE001
        raise SuiteError(f"OpenVINO CPU compile failed ({failure_reason(exc, 240)})") from None
    read_keys = list(config) + [k for k in (hints.inference_precision(), hints.dynamic_quantization_group_size(),
                                            "EXECUTION_DEVICES", hints.execution_mode(),
                                            "OPTIMAL_NUMBER_OF_INFER_REQUESTS") if k not in config]
    read: dict[str, str] = {}
    for key in read_keys:
        try:
            read[key] = _prop_str(compiled.get_property(key))
        except Exception as exc:  # noqa: BLE001 - a key this plugin version does not report
            read[key] = f"unavailable ({exc.__class__.__name__})"
    set_ = {k: _prop_str(v) for k, v in config.items()}
    mismatch = [k for k, v in set_.items() if read.get(k) != v]
    return compiled, {"set": set_, "read": read, "mismatch": mismatch}


def _prop_str(value: Any) -> str:
    """One spelling for a property value whether it comes from our config or from get_property."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_prop_str(v) for v in value)
    name = getattr(value, "name", None)  # enums (PerformanceMode.LATENCY -> LATENCY)
    if isinstance(name, str) and not hasattr(value, "get_type_name"):
        return name
    if hasattr(value, "get_type_name"):  # ov.Type -> f32
        return value.get_type_name()
    return str(value)


def predict_fn(compiled) -> Callable[[np.ndarray | dict], np.ndarray]:
    """A fast single-request predictor: one InferRequest reused, inputs shared (no copy when the array is
    C-contiguous with the model's dtype), only the first output copied out. Not thread-safe."""
    request = compiled.create_infer_request()
    in_types = [p.get_element_type().to_dtype() for p in compiled.inputs]

    def predict(x: np.ndarray | dict) -> np.ndarray:
        if isinstance(x, dict):
            feed: Any = {k: np.ascontiguousarray(v) for k, v in x.items()}
        else:
            feed = np.ascontiguousarray(x, dtype=in_types[0])
        request.infer(feed, share_inputs=True, share_outputs=True)
        return np.array(request.get_output_tensor(0).data, copy=True)

    return predict


def runtime_precisions(compiled) -> dict:
    """Which precisions the executed graph ran in, from the CPU plugin's runtime model (after its fusions).

    For each multiply-accumulate layer (COMPUTE_LAYERS) two rt_info fields are read:
    - primitiveType, the kernel that runs (e.g. brgemm_avx512_i8, gemm_mlas_f32, brgemm_avx512_bf16): its
      last token is the COMPUTE precision. With dynamic shapes the kernel is picked at the first inference
      ("undef_<type>" before that), so call this after one predict; `executed` says whether it was.
    - runtimePrecision: for a quantized (FakeQuantize) layer the integer type, for a weight-compressed layer
      the WEIGHT storage type (u8/i8/u4/i4) while its kernel may still compute in f32 (weights decompressed
      on the fly) - so weight-only int4/int8 rows are not integer compute unless the kernel says so.
    Returns {"compute": {layerType: {kernel precision: n}}, "runtime": {layerType: {runtimePrecision: n}},
    "kernels": {layerType: {primitiveType: n}}, "int_compute": n, "float_compute": n,
    "compute_precision": "int8" | "mixed" | "<float type>[+...]" | "none", "executed": bool,
    "all": {layerType: {runtimePrecision: n}} for every node}."""
    runtime = compiled.get_runtime_model()
    every: dict[str, Counter] = {}
    compute: dict[str, Counter] = {}
    runtime_prec: dict[str, Counter] = {}
    kernels: dict[str, Counter] = {}
    executed = True
    for op in runtime.get_ordered_ops():
        rt = op.get_rt_info()
        layer = _rt_str(rt, "layerType") or op.get_type_name()
        prec = _rt_str(rt, "runtimePrecision") or "?"
        every.setdefault(layer, Counter())[prec] += 1
        if layer not in COMPUTE_LAYERS:
            continue
        kernel = _rt_str(rt, "primitiveType") or f"undef_{prec}"
        executed = executed and not kernel.startswith("undef")
        kernel_prec = kernel.rsplit("_", 1)[-1].lower() if "_" in kernel else prec
        compute.setdefault(layer, Counter())[kernel_prec] += 1
        runtime_prec.setdefault(layer, Counter())[prec] += 1
        kernels.setdefault(layer, Counter())[kernel] += 1
    n_int = sum(c for v in compute.values() for p, c in v.items() if p in INT_PRECISIONS)
    n_float = sum(c for v in compute.values() for p, c in v.items() if p not in INT_PRECISIONS)
    float_types = sorted({p for v in compute.values() for p in v if p not in INT_PRECISIONS})
    if n_int and not n_float:
        label = "int8"
    elif n_int:
        label = "mixed"
    else:
        label = "+".join(float_types) or "none"

    def plain(d):
        return {k: dict(v) for k, v in d.items()}

    return {"compute": plain(compute), "runtime": plain(runtime_prec), "kernels": plain(kernels), "int_compute": n_int,
            "float_compute": n_float, "compute_precision": label, "executed": executed, "all": plain(every)}


# kernel precisions that multiply in a reduced type (a row's coverage); f32 kernels of weight-compressed layers are not
REDUCED_TYPES = ("u8", "i8", "u4", "i4", "bf16", "f16", "f8e4m3", "f8e5m2")
# runtime layer types whose kernels hold the model's MatMuls: the compute layers and the CPU plugin's fused subgraphs
# (attention MatMuls run inside a Subgraph or ScaledDotProductAttention node)
MAC_HOLDERS = COMPUTE_LAYERS + ("Subgraph", "ScaledDotProductAttention")


def reduced_original_names(compiled) -> list[str]:
    """The original (ONNX-derived) layer names, from `originalLayersNames`, of every runtime layer holding MatMuls or
    convolutions whose kernel (primitiveType's last token, else runtimePrecision) runs in a reduced type. Call after
    one inference (kernels of dynamic shapes are picked then)."""
    out: list[str] = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if (_rt_str(rt, "layerType") or op.get_type_name()) not in MAC_HOLDERS:
            continue
        kernel = _rt_str(rt, "primitiveType") or ""
        prec = kernel.rsplit("_", 1)[-1].lower() if "_" in kernel and not kernel.startswith("undef") else \
            (_rt_str(rt, "runtimePrecision") or "").lower()
        if prec in REDUCED_TYPES:
            out += [n for n in (_rt_str(rt, "originalLayersNames") or "").split(",") if n]
    return out


COMPRESSED_WEIGHT_TYPES = ("u8", "i8", "u4", "i4", "nf4")


def weight_compressed_original_names(compiled) -> list[str]:
    """The original layer names of every runtime layer holding MatMuls whose weights are stored compressed
    (runtimePrecision u8/i8/u4/i4) while its kernel name reads float: what the plugin's dynamic quantization makes
    integer when it is active (which only the on/off timing can tell: `dq_account`)."""
    out: list[str] = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if (_rt_str(rt, "layerType") or op.get_type_name()) not in MAC_HOLDERS:
            continue
        if (_rt_str(rt, "runtimePrecision") or "").lower() in COMPRESSED_WEIGHT_TYPES:
            out += [n for n in (_rt_str(rt, "originalLayersNames") or "").split(",") if n]
    return out


def mac_op_names(model) -> list[str]:
    """Friendly names of the ov.Model's MatMul/convolution ops (what NNCF's ignored scope names)."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData")]


def _rt_str(rt, key: str) -> str | None:
    if key not in rt:
        return None
    value = rt[key]
    value = value.astype(str) if hasattr(value, "astype") else value
    return str(value)


def _ov_type(name: str):
    import openvino as ov

    types = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}
    if name not in types:
        raise SuiteError(f"inference_precision must be one of {sorted(types)}, not {name!r}")
    return types[name]


# ------------------------------------------------------------------------------ dynamic quantization, by experiment

DQ_ACTIVE_RATIO = 1.2  # off/on CPU-time ratio (best call and median call both) above which dynamic quantization ran


def fc_record(compiled) -> dict:
    """The runtime model's FullyConnected layers (the plugin's matmuls after its fusions): {"layers": n,
    "runtime": {runtimePrecision: n}, "kernels": {primitiveType: n}, "weight_compressed": n} where a weight-compressed
    layer is one whose runtimePrecision is an integer type (its stored weights) while its kernel name reads float."""
    runtime: Counter = Counter()
    kernels: Counter = Counter()
    compressed = n = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if (_rt_str(rt, "layerType") or op.get_type_name()) not in ("FullyConnected", "FullyConnectedCompressed"):
            continue
        n += 1
        prec = _rt_str(rt, "runtimePrecision") or "?"
        kernel = _rt_str(rt, "primitiveType") or f"undef_{prec}"
        runtime[prec] += 1
        kernels[kernel] += 1
        kernel_prec = kernel.rsplit("_", 1)[-1].lower() if "_" in kernel else prec
        compressed += prec in INT_PRECISIONS and kernel_prec not in INT_PRECISIONS
    return {"layers": n, "runtime": dict(runtime), "kernels": dict(kernels), "weight_compressed": compressed}


def timed_run(compiled, x: np.ndarray | dict, *, budget_s: float = 0.5, min_calls: int = 5,
              max_calls: int = 50) -> dict:
    """One warm-up inference (the plugin picks its kernels), the FullyConnected record, then back-to-back timed
    inferences of `x` (at least min_calls, more while budget_s lasts, at most max_calls), each timed by the wall clock
    and by this process's CPU time (all its threads: the work the call did, which other load on a shared machine
    stretches far less than the wall time): {"ms": [...], "min_ms", "median_ms", "cpu_ms": [...], "cpu_min_ms",
    "cpu_median_ms", "calls", "fc": fc_record, "dq_group_size": the compiled model's setting}."""
    request = compiled.create_infer_request()
    feed: Any = ({k: np.ascontiguousarray(v) for k, v in x.items()} if isinstance(x, dict)
                 else np.ascontiguousarray(x, dtype=compiled.inputs[0].get_element_type().to_dtype()))
    request.infer(feed, share_inputs=True, share_outputs=True)
    ms: list[float] = []
    cpu: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(ms) < min_calls or (time.perf_counter() < t_end and len(ms) < max_calls):
        t, c = time.perf_counter(), time.process_time()
        request.infer(feed, share_inputs=True, share_outputs=True)
        ms.append((time.perf_counter() - t) * 1000.0)
        cpu.append((time.process_time() - c) * 1000.0)
    try:
        group = int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    except Exception:  # noqa: BLE001 - a plugin version without the property
        group = None
    return {"ms": [round(v, 4) for v in ms], "min_ms": round(min(ms), 4), "median_ms": round(float(np.median(ms)), 4),
            "cpu_ms": [round(v, 4) for v in cpu], "cpu_min_ms": round(min(cpu), 4),
            "cpu_median_ms": round(float(np.median(cpu)), 4), "calls": len(ms), "fc": fc_record(compiled),
            "dq_group_size": group}


def dq_account(off: dict, on: dict) -> dict:
    """Did the plugin's dynamic quantization run? From two timed_run records of the same IR on the same input, one
    compiled with DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (`off`), one with the plugin's value (`on`). Active when the
    setting is on, the IR has weight-compressed FullyConnected layers, and the off/on time ratio of both the best and
    the median call reaches DQ_ACTIVE_RATIO, in CPU time (wall time where a record has none; both are kept);
    `kernel_names_differ` records whether the runtime model's kernel names changed with the setting (on this plugin
    they do not, which is why the timing decides)."""
    clock = "cpu" if off.get("cpu_min_ms") and on.get("cpu_min_ms") else "wall"
    pre = "cpu_" if clock == "cpu" else ""
    ratio_min = off[f"{pre}min_ms"] / on[f"{pre}min_ms"]
    ratio_median = off[f"{pre}median_ms"] / on[f"{pre}median_ms"]
    compressed = on["fc"]["weight_compressed"]
    active = bool((on.get("dq_group_size") or 0) > 0 and compressed and ratio_min >= DQ_ACTIVE_RATIO
                  and ratio_median >= DQ_ACTIVE_RATIO)
    keys = ("min_ms", "median_ms", "cpu_min_ms", "cpu_median_ms", "calls")
    return {"group_size": on.get("dq_group_size"), "active": active, "clock": clock,
            "off_over_on_min": round(ratio_min, 3), "off_over_on_median": round(ratio_median, 3),
            "wall_off_over_on_min": round(off["min_ms"] / on["min_ms"], 3),
            "wall_off_over_on_median": round(off["median_ms"] / on["median_ms"], 3), "threshold": DQ_ACTIVE_RATIO,
            "on": {k: on[k] for k in keys if k in on}, "off": {k: off[k] for k in keys if k in off},
            "fc_runtime_precision": on["fc"]["runtime"], "fc_kernels_on": on["fc"]["kernels"],
            "fc_kernels_off": off["fc"]["kernels"], "weight_compressed_layers": compressed,
            "kernel_names_differ": on["fc"]["kernels"] != off["fc"]["kernels"],
            "rule": (f"active when DYNAMIC_QUANTIZATION_GROUP_SIZE > 0, the IR has weight-compressed FullyConnected "
                     f"layers and the same IR compiled with 0 takes >= {DQ_ACTIVE_RATIO}x the {clock} time (best and "
                     "median call)")}


def dq_note(acc: dict) -> str:
    """One sentence of a row's notes: what the on/off experiment measured."""
    kernels = ", ".join(f"{k} x{n}" for k, n in sorted(acc["fc_kernels_on"].items()))
    runtime = ", ".join(f"{k} x{n}" for k, n in sorted(acc["fc_runtime_precision"].items()))
    same = "the same names" if not acc["kernel_names_differ"] else \
        "names " + ", ".join(f"{k} x{n}" for k, n in sorted(acc["fc_kernels_off"].items()))
    verdict = ("dynamic quantization ran: activations quantized to int8 per group of "
               f"{acc['group_size']} on the fly, integer matmuls (compute precision int8)" if acc["active"] else
               f"no difference of {acc['threshold']}x or more, so no evidence of integer matmuls (compute precision "
               "from the kernel names, float)")
    pre = "cpu_" if acc.get("clock") == "cpu" else ""
    return (f"weight-compressed matmuls: runtimePrecision {runtime}, kernel names {kernels} with "
            f"DYNAMIC_QUANTIZATION_GROUP_SIZE={acc['group_size']} and {same} with 0; the same IR with 0 takes "
            f"{acc['off_over_on_min']:.2f}x the {acc.get('clock', 'wall')} time (best call "
            f"{acc['off'][pre + 'min_ms']:.2f} vs {acc['on'][pre + 'min_ms']:.2f} ms, median "
            f"x{acc['off_over_on_median']:.2f}; wall time x{acc['wall_off_over_on_min']:.2f}; latency input at batch "
            f"1): {verdict}")

