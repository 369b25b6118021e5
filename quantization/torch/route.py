"""Torch route: FX graph-mode and torchao pt2e INT8 for ResNet50; torchao INT8 for GPT-2 (torch env).

    python -m quantization.torch --model resnet50 --methods eager,fx
    python -m quantization.torch --model gpt2

ResNet50: `eager` FP32, `fx` INT8 (prepare_fx/convert_fx, x86 qconfig mapping; deprecated in
torch 2.13 but still working), `inductor` FP32 and `pt2e` INT8 (torchao 0.18
X86InductorQuantizer on a torch.export graph, both run through torch.compile with freezing, so
pt2e is compared with FP32 under the same compiler). GPT-2: `eager` FP32, `weight-only` and
`dynamic` INT8 (torchao) of the transformer blocks' linear layers: HF GPT-2 implements them as
`Conv1D` (weight stored (in, out)), so they are first converted to equivalent `nn.Linear`
(weight transposed) that torchao can quantize. The LM head (tied to the embedding) stays FP32.

Both models also have `eager-fp16`/`eager-bf16` (the module cast to that dtype) and `inductor-fp16`/
`inductor-bf16` (the same, through torch.compile); GPT-2 has `inductor` (FP32 compiled) too. The GPU fast paths
(opt-in on the CPU): `inductor-cl[-fp16]` (ResNet50, channels-last + cudnn.benchmark; cuda only), `inductor-max[-fp16]`
(torch.compile mode="max-autotune": autotuned kernels, CUDA graphs on cuda) and GPT-2 `fp8` (torchao float8 dynamic
activations and weights; cuda with compute capability >= 8.9). Every compiled variant is a `Compiled`: its own
TorchDynamo cache, fullgraph, and each first call of a shape checked, so a row that fell back to eager fails
(`CompileFallback`) instead of being printed as compiled. Devices
(`--devices`, default auto: cpu and cuda; cuda rows skipped with the reason without CUDA): on cuda the inputs are
resident on the GPU and each timed call is bracketed by CUDA events (latency_kind "cuda-events");
fx and pt2e are CPU-only (x86 backend); a half-precision variant runs on the CPU only where oneDNN
reports native support for that dtype (AVX512-BF16 here: bf16 runs, fp16 is skipped; `device_plan`).
"""
from __future__ import annotations

import copy
import io
import itertools
import logging
import re
import time
import types
import warnings
from typing import Callable

import numpy as np

from quantization.kit import Built, Calibration, ModelContext, Route, SkipVariant, main_for, unavailable_import
from utils.registry import TOOLCHAINS
from utils.torchvision_compat import import_torchvision

log = logging.getLogger("quantization.torch.route")
TOOLCHAIN = "torch"


# ------------------------------------------------------------------------------ helpers

def state_size_mb(obj) -> float:
    """Serialized size of a state dict (what a deployment would store)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell() / 1e6


def graph_tensor_mb(gm) -> float:
    """Bytes of the tensors a converted GraphModule's graph actually reads (get_attr nodes with users):
    INT8 weights folded as constants, FP32 biases, scales. Left-over FP32 originals are not counted."""
    import torch

    seen, total = set(), 0
    tensors = []
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            obj = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                tensors.append(obj)
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total / 1e6


def torch_predict(model, device: str = "cpu", dtype=None, channels_last: bool = False
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """NumPy batch -> logits (float32 NumPy): the input moved to `device` (and cast to `dtype`) first."""
    import torch

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(_to_device(torch.from_numpy(x), device, dtype, channels_last)).float().cpu().numpy()

    return fn


def _to_device(t, device: str, dtype=None, channels_last: bool = False):
    import torch

    if device != "cpu" or dtype is not None:
        t = t.to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def cuda_event_timer(torch_module=None) -> Callable[[Callable[[], object]], float]:
    """`timer(fn) -> ms` for the harness: fn bracketed by a pair of CUDA events on the current stream,
    the end event synchronised before reading (the GPU time of the queued work, not the host's)."""
    def timer(fn: Callable[[], object]) -> float:
        torch = torch_module or __import__("torch")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return timer


def timing_plug(device: str) -> dict:
    """Built fields for timing on `device`: CUDA events on cuda, the host wall clock on cpu."""
    if device == "cuda":
        return dict(timer=cuda_event_timer(), latency_kind="cuda-events")
    return {}


def device_timed(model, device: str, dtype=None, channels_last: bool = False, call=None):
    """Built.timed: the latency input is moved to the device (and cast) once, untimed; the timed call runs the
    model on it and leaves the output where it is (no copy back)."""
    import torch

    fast = _fast(model)  # a compiled model: its first timed call checked (`Compiled.proven`), the rest straight

    def timed(x: np.ndarray):
        xt = _to_device(torch.from_numpy(x), device, dtype, channels_last)

        def once():
            with torch.inference_mode():
                return call(fast, xt) if call is not None else fast(xt)

        return _proven(model, once)

    return timed


def host_timed(predict_of, model):
    """Built.timed on the CPU for a compiled model: the same work as timing `predict` (the input converted from NumPy
    and the logits back inside the timed call), through the unchecked callable after a checked first call."""
    fast = predict_of(_fast(model))
    return lambda x: _proven(model, lambda: fast(x))


SCORE_BATCH = 120  # classification scoring batch; padded so compiled models see one shape


# ------------------------------------------------------------------------------ ResNet50

def resnet_fx(model, calib: np.ndarray, keep_modules: tuple[str, ...] = ()):
    """FX INT8 (x86 qconfig mapping); `keep_modules`: module paths the quantization scope leaves FP32."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    mapping = get_default_qconfig_mapping("x86")
    for name in keep_modules:
        mapping = mapping.set_module_name(name, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, mapping, (torch.from_numpy(calib[:2]),))
        with torch.inference_mode():
            for i in range(0, len(calib), 32):
                prepared(torch.from_numpy(calib[i:i + 32]))
        return convert_fx(prepared)


# ------------------------------------------------------------------------------ compiled variants, proven compiled

class CompileFallback(RuntimeError):
    """A compiled variant did not run as one compiled graph (TorchDynamo fell back to eager, hit its recompile limit
    or broke the graph): its rows fail with this reason instead of reporting eager time as a compiled row."""


_COMPILED_IDS = itertools.count()


def _own_code(model, label: str):
    """A function calling `model` whose code object belongs to this variant alone.

    TorchDynamo keeps compiled graphs, and counts recompilations against `config.recompile_limit` (8), per code
    object, and every nn.Module handed to torch.compile enters through one shared frame: the compiled variants of a
    process, and each input shape they see, fill one cache, and past the limit the later ones run eager without an
    error (seen on an H200: an inductor-bf16 row that took the eager time). With its own code object each variant
    has its own cache and its own limit, whatever else the process compiled before or compiles after it."""
    def call(*args, **kwargs):
        return model(*args, **kwargs)

    name = f"compiled_{re.sub(r'[^0-9A-Za-z_]', '_', label)}_{next(_COMPILED_IDS)}"
    code = call.__code__.replace(co_name=name)
    return types.FunctionType(code, call.__globals__, name, call.__defaults__, call.__closure__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cache_entries(code) -> int | None:
    """Compiled graphs TorchDynamo holds for `code` (None where this torch does not expose them)."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    except ImportError:
        return None
    return len(_debug_get_cache_entry_list(code))


def dynamo_counts() -> dict:
    """Process-wide TorchDynamo counters the compile proof compares before and after a call: graph breaks, recompile
    limit hits (each a fallback to eager), graphs compiled."""
    from torch._dynamo.utils import counters

    unimpl = counters["unimplemented"]
    return {"graph_breaks": sum(counters["graph_break"].values()),
            "limit_hits": sum(v for k, v in unimpl.items() if "recompile limit" in k.lower()),
            "unique_graphs": counters["stats"].get("unique_graphs", 0)}


class Compiled:
    """torch.compile of one variant (inductor, freezing, static shapes), proven to run compiled.

    - `torch._dynamo.reset()` first: the compile caches start empty for each variant, so the order of the variants in
      a process changes nothing (variants built earlier lose their graphs and compile again at their next call: the
      kit builds and scores each variant, then times them all, so what is dropped is their scoring shape's);
    - its own code object (`_own_code`): its own cache and recompile limit while all variants stay alive to be timed
      in interleaved trials;
    - `fullgraph=True`: a graph break or a recompile-limit hit raises at compile time instead of running eager;
    - every checked call (each scoring call, the first call of each timed callable: `proven`) compares TorchDynamo's
      counters and this variant's compiled graphs before and after it, records them in `stats` (the rows'
      extra["compile"]) and raises CompileFallback when the call ran eager or broke the graph.

    `mode`: torch.compile's mode (None: default; "max-autotune": Triton/template autotuning and, on cuda, CUDA graphs);
    `cudnn_benchmark`: torch.backends.cudnn.benchmark on around each call (`with_cudnn_benchmark`).
    """

    def __init__(self, model, label: str, mode: str | None = None, device: str = "cpu", cudnn_benchmark: bool = False):
        import torch
        import torch._inductor.config as inductor_config

        torch._dynamo.reset()
        inductor_config.freezing = True
        self.model, self.label, self.mode, self.device = model, label, mode, device
        self.fn = _own_code(model, label)
        self.run = torch.compile(self.fn, fullgraph=True, dynamic=False, **({"mode": mode} if mode else {}))
        self.cudnn_benchmark = cudnn_benchmark
        if cudnn_benchmark:
            self.run = with_cudnn_benchmark(self.run)
        # CUDA graphs (max-autotune / reduce-overhead on cuda) replay into static outputs: each call starts a new step
        self.cudagraph_steps = device == "cuda" and mode in CUDA_GRAPH_MODES
        self.stats = {"frames": 0, "recompiles": 0, "graph_breaks": 0, "fallbacks": 0, "checked_calls": 0,
                      "mode": mode or "default", "fullgraph": True, "code": self.fn.__code__.co_name}

    def step(self) -> None:
        """Before each call of a CUDA-graph variant: torch.compiler.cudagraph_mark_step_begin (inference loop)."""
        import torch

        torch.compiler.cudagraph_mark_step_begin()

    def __call__(self, *args, **kwargs):
        """A checked call (scoring): compiled, or CompileFallback."""
        return self.checked(self.call, *args, **kwargs)

    def call(self, *args, **kwargs):
        """An unchecked call (the timed path after its first, checked call)."""
        if self.cudagraph_steps:
            self.step()
        return self.run(*args, **kwargs)

    def checked(self, fn, *args, **kwargs):
        import torch

        exc_types = tuple(t for t in (getattr(torch._dynamo.exc, "Unsupported", None),
                                      getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)) if t)
        st = self.stats
        n0, c0 = _cache_entries(self.fn.__code__), dynamo_counts()
        try:
            out = fn(*args, **kwargs)
        except exc_types as exc:  # fullgraph=True: what would have been a graph break or a silent fallback
            st["fallbacks"] += 1
            limit = "recompile" in f"{type(exc).__name__} {exc}".lower()
            if not limit:
                st["graph_breaks"] += 1
            what = "hit its recompile limit" if limit else "could not capture it as one graph (a graph break)"
            raise CompileFallback(f"{self.label}: TorchDynamo {what} (fullgraph=True): {_first_line(exc)}") from exc
        except RuntimeError as exc:
            if "no compiled frames" not in str(exc):  # torch's own words when dynamo ran nothing (e.g. disabled)
                raise
            st["fallbacks"] += 1
            raise CompileFallback(f"{self.label}: torch.compile ran it eager: {_first_line(exc)}") from exc
        n1, c1 = _cache_entries(self.fn.__code__), dynamo_counts()
        st["checked_calls"] += 1
        new = (n1 - n0) if n0 is not None and n1 is not None else c1["unique_graphs"] - c0["unique_graphs"]
        st["frames"] += max(0, new)
        st["recompiles"] = max(0, st["frames"] - 1)
        breaks, hits = c1["graph_breaks"] - c0["graph_breaks"], c1["limit_hits"] - c0["limit_hits"]
        st["graph_breaks"] += breaks
        if hits:
            st["fallbacks"] += hits
            raise CompileFallback(f"{self.label}: TorchDynamo hit its recompile limit "
                                  f"({torch._dynamo.config.recompile_limit}) and ran the call eager")
        if breaks:
            raise CompileFallback(f"{self.label}: the graph broke {breaks} time(s) in one call (part of it ran eager)")
        if n1 == 0 or (n1 is None and st["frames"] == 0):
            st["fallbacks"] += 1
            raise CompileFallback(f"{self.label}: torch.compile ran it eager (TorchDynamo holds no compiled graph for "
                                  "it after the call)")
        return out

    def proven(self, once: Callable[[], object]) -> Callable[[], object]:
        """A timed zero-argument callable whose first call is checked (it compiles the new shape: first_call_ms) and
        whose later calls run straight."""
        done = [False]

        def call():
            if done[0]:
                return once()
            done[0] = True
            return self.checked(once)

        return call


CUDA_GRAPH_MODES = ("max-autotune", "reduce-overhead")


def with_cudnn_benchmark(fn):
    """fn with torch.backends.cudnn.benchmark on around each call and restored after: the flag is process-wide, and
    the variants timed beside this one keep the default (off)."""
    import torch

    cudnn = torch.backends.cudnn

    def call(*args, **kwargs):
        prev = cudnn.benchmark
        cudnn.benchmark = True
        try:
            return fn(*args, **kwargs)
        finally:
            cudnn.benchmark = prev

    return call


def _fast(model):
    """The unchecked callable of a model (a Compiled's plain call; any other model itself)."""
    return model.call if isinstance(model, Compiled) else model


def _proven(model, once):
    return model.proven(once) if isinstance(model, Compiled) else once


def compile_extra(*compiled: Compiled) -> dict:
    """extra["compile"] of a row: the proof of its (first) compiled callable; with a second one (pt2e times a graph
    of its own), both."""
    if len(compiled) == 1:
        return {"compile": compiled[0].stats}
    return {"compile": compiled[0].stats, "compile_timed": compiled[1].stats}


def _pt2e_prepared(model, example):
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86_quantizer
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    # batch dynamic; spatial dims static (at 16x16 the last stages are 1x1, which export specialises)
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
                             strict=True)
    # the documented x86 defaults, spelled out: static PTQ, full-range u8 activations (VNNI: no reduce_range)
    config = x86_quantizer.get_default_x86_inductor_quantization_config(is_qat=False, is_dynamic=False,
                                                                         reduce_range=False)
    quantizer = x86_quantizer.X86InductorQuantizer().set_global(config)
    return prepare_pt2e(ep.module(), quantizer)


def qparams(gm) -> list[tuple]:
    """(scale, zero_point) of every quantize/dequantize node, in graph order."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and "quantize_per_tensor" in str(n.target):
            out.append(tuple(a for a in n.args[1:3] if isinstance(a, (int, float))))
    return out


def resnet_pt2e(model, calib: np.ndarray, latency_resolution: int | None = None):
    """torchao pt2e INT8: calibrate at the data's resolution; returns (scored model, timed model).

    torch.export specialises spatial sizes, so the graph timed at 224x224 is a second export of the
    same FP32 model whose observers receive the calibrated statistics of the first (state-dict copy);
    both converted graphs then carry identical quantization parameters (checked).
    """
    import copy

    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = _pt2e_prepared(copy.deepcopy(model), torch.from_numpy(calib[:2]))
    with torch.inference_mode():
        for i in range(0, len(calib), 32):
            prepared(torch.from_numpy(calib[i:i + 32]))
    timed = None
    if latency_resolution and latency_resolution != calib.shape[-1]:
        other = _pt2e_prepared(copy.deepcopy(model), torch.zeros(2, 3, latency_resolution, latency_resolution))
        other.load_state_dict(prepared.state_dict(), strict=True)
        timed = convert_pt2e(other)
    scored = convert_pt2e(prepared)
    if timed is not None and qparams(timed) != qparams(scored):
        raise RuntimeError("pt2e graphs for scoring and timing ended with different quantization parameters")
    return scored, timed if timed is not None else scored


QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def fx_quantized_modules(gm) -> list[str]:
    """Module paths of a converted FX model's quantized convolution/linear modules (fbgemm/oneDNN INT8 kernels; a
    fused conv+relu keeps the conv's path)."""
    return [name for name, m in gm.named_modules()
            if type(m).__module__.startswith(QUANTIZED_MODULES) and "Packed" not in type(m).__name__
            and ("Conv" in type(m).__name__ or "Linear" in type(m).__name__)]


def pt2e_quantized_modules(gm) -> list[str]:
    """Module paths (torch.export's nn_module_stack) of a converted pt2e graph's convolutions/linears whose activation
    and weight both come through a dequantize node: the dequantize -> conv/linear -> quantize patterns inductor's x86
    lowering fuses into oneDNN INT8 kernels."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or not any(k in str(n.target) for k in ("conv", "linear")) or len(n.args) < 2:
            continue
        if all("dequantize" in str(getattr(a, "target", "")) for a in n.args[:2]):
            stack = n.meta.get("nn_module_stack") or {}
            if stack:
                out.append(str(list(stack.values())[-1][0]))
    return list(dict.fromkeys(out))


def kept_modules(ctx: ModelContext, method: str) -> tuple[str, ...]:
    """Module paths of the MAC layers the variant's quantization scope keeps in the higher precision."""
    _, scope = ctx.scope_for(method)
    if not scope.keep:
        return ()
    return tuple(x for x in ctx.macs["layers"] if ":" not in x and scope.keeps(x))


def _classifier(ctx: ModelContext):
    from models.embedded import load_manifest_classifier

    return load_manifest_classifier(ctx.manifest)


def _calibration(ctx: ModelContext, seconds: float, method: str = "minmax+histogram (x86 default)") -> Calibration:
    return Calibration(len(ctx.task.calib_array(ctx.data)), seconds, method)


# method suffix -> (torch dtype name, precision label); no suffix: FP32
HALF = {"fp16": "float16", "bf16": "bfloat16"}


def split_method(method: str) -> tuple[str, str]:
    """'eager-bf16' -> ('eager', 'bf16'); 'inductor' -> ('inductor', 'fp32')."""
    base, _, suffix = method.rpartition("-")
    return (base, suffix) if base and suffix in HALF else (method, "fp32")


def _dtype(prec: str):
    import torch

    return getattr(torch, HALF[prec]) if prec in HALF else None


def _device_notes(device: str, prec: str) -> list[str]:
    notes = []
    if prec != "fp32":
        notes.append(f"module and inputs cast to {HALF[prec]}; logits scored in float32")
    if device == "cuda":
        notes.append("cuda: input resident on the GPU, output left there; timed with CUDA events")
    return notes


# CPU fast path (docs/routes/torch.md "Fast-path settings"): channels-last (NHWC) weights and inputs let oneDNN
# run ResNet50's convolutions without reordering to its blocked layout on every call; measured faster for eager
# FP32 on the 2-core build machine, no gain for inductor (freezing already picks layouts) or FX INT8 (its
# quantized kernels reorder internally)
CPU_CHANNELS_LAST = ("eager",)
CHANNELS_LAST_NOTE = "channels_last memory format (weights and input, converted in the timed call)"


# the GPU fast paths of PyTorch's performance guide for inference, as variants on cuda (each one change from the
# inductor row): channels-last weights and input (cuDNN's NHWC tensor-core kernels) with cudnn.benchmark (each
# convolution's algorithm picked by timing them at a shape's first call), and torch.compile's max-autotune mode
# (autotuned kernels and, on cuda, CUDA graphs: one graph launch instead of a kernel launch per op)
COMPILE_MODES = {"inductor": None, "inductor-cl": None, "inductor-max": "max-autotune"}
CUDA_CHANNELS_LAST_NOTE = "channels_last memory format (weights and input; the input converted once, outside the timed call)"
CUDNN_BENCHMARK_NOTE = ("cudnn.benchmark on around each of its calls (cuDNN times the convolution algorithms at a "
                        "shape's first call and keeps the fastest); the other rows keep the default (off)")


def compile_note(base: str, device: str) -> str:
    mode = COMPILE_MODES[base]
    what = f"mode={mode}: autotuned kernels" + ("; CUDA graphs" if device == "cuda" and mode in CUDA_GRAPH_MODES
                                                 else "") if mode else "default mode"
    return (f"torch.compile (inductor, {what}, freezing, static shapes, fullgraph; every compiled call checked: "
            "extra.compile); compile time in first_call_ms")


def _cast_coverage(prec: str) -> dict:
    """A module cast to fp16/bf16 runs every multiply-accumulate (weights and activations) in that type."""
    if prec == "fp32":
        return {}
    from quantization.kit.macs import ALL_LAYERS

    return {"reduced_layers": ALL_LAYERS, "coverage_source": f"the module and its inputs cast to {HALF[prec]}"}


def _build_image(method: str):
    """eager / inductor (default, channels-last + cudnn.benchmark, max-autotune), FP32 or cast to fp16/bf16, on cpu
    or cuda."""
    base, prec = split_method(method)

    def build(ctx: ModelContext, device: str) -> Built:
        import torch

        dtype = _dtype(prec)
        model = _classifier(ctx).to(device=device, dtype=dtype)
        size = state_size_mb(model.state_dict())  # in the variant's dtype
        notes = _device_notes(device, prec)
        cl = (device == "cpu" and base in CPU_CHANNELS_LAST) or base == "inductor-cl"
        if cl:
            model = model.to(memory_format=torch.channels_last)
            notes.insert(0, CHANNELS_LAST_NOTE if device == "cpu" else CUDA_CHANNELS_LAST_NOTE)
        extra = {}
        if base != "eager":
            model = Compiled(model, method, COMPILE_MODES[base], device, cudnn_benchmark=base == "inductor-cl")
            notes.insert(0, compile_note(base, device))
            if base == "inductor-cl":
                notes.insert(2, CUDNN_BENCHMARK_NOTE)
            extra.update(compile_extra(model))
        kw = dict(score_batch=SCORE_BATCH, score_pad=True, notes=notes, extra=extra, **timing_plug(device))
        if device != "cpu":
            kw["timed"] = device_timed(model, device, dtype, channels_last=cl)
        elif isinstance(model, Compiled):
            kw["timed"] = host_timed(lambda m: torch_predict(m, device, dtype, channels_last=cl), model)
        return Built(torch_predict(model, device, dtype, channels_last=cl), size_mb=size, compute_precision=prec,
                     handle=model, **_cast_coverage(prec), **kw)

    return build


def build_fx(ctx: ModelContext, device: str = "cpu") -> Built:
    t0 = time.time()
    model = resnet_fx(_classifier(ctx), ctx.task.calib_array(ctx.data), kept_modules(ctx, "fx"))
    calib_s = time.time() - t0
    # a converted FX model that first ran at 16x16 stays ~5x slower at 224x224 (kernel state kept from the
    # first shape); the timed copy has only ever seen the latency shape. Both run as frozen TorchScript
    # (torch.jit.trace + torch.jit.freeze: constants folded, ~10% faster at batch 1; same kernels and outputs)
    size = state_size_mb(model.state_dict())
    timed = torch_predict(jit_frozen(copy.deepcopy(model)))
    return Built(torch_predict(jit_frozen(model)), size_mb=size, compute_precision="int8",
                 calibration=_calibration(ctx, calib_s), score_batch=SCORE_BATCH, score_pad=True,
                 timed=lambda x: (lambda: timed(x)), handle=model, reduced_layers=fx_quantized_modules(model),
                 coverage_source="the quantized modules convert_fx swapped in",
                 notes=["FX graph mode (deprecated API), x86 qconfig mapping, fbgemm/onednn kernels",
                        "run as frozen TorchScript (torch.jit.trace + torch.jit.freeze)",
                        "below the INT8 GEMM ceiling because FX runs the 16 residual add-ReLUs as separate "
                        "requantizing elementwise kernels (quantized::add_relu) between the INT8 convolutions, whose "
                        "own rate is under the GEMM's (profile: results/profile_torch_fx_resnet50_b32.csv)"])


def jit_frozen(model):
    """torch.jit.trace (example 1x3x224x224; ResNet50 has no shape-dependent control flow) + torch.jit.freeze."""
    import torch

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(model.eval(), torch.zeros(1, 3, 224, 224)))


def build_pt2e(ctx: ModelContext, device: str = "cpu") -> Built:
    t0 = time.time()
    q, q_timed = resnet_pt2e(_classifier(ctx), ctx.task.calib_array(ctx.data),
                             latency_resolution=int(ctx.manifest.get("latency_resolution", 224)))
    calib_s, size = time.time() - t0, graph_tensor_mb(q)
    scored, timed = Compiled(q, "pt2e"), Compiled(q_timed, "pt2e-timed")
    return Built(torch_predict(scored), size_mb=size, compute_precision="int8",
                 calibration=_calibration(ctx, calib_s), score_batch=SCORE_BATCH, score_pad=True,
                 timed=host_timed(torch_predict, timed),
                 extra={"n_qparams": len(qparams(q)), "compile": timed.stats, "compile_scoring": scored.stats},
                 reduced_layers=pt2e_quantized_modules(q_timed),
                 coverage_source="the converted pt2e graph (dequantize -> conv/linear patterns inductor lowers to "
                                 "oneDNN INT8)",
                 notes=["torchao pt2e X86InductorQuantizer + torch.compile (inductor, freezing, fullgraph; every "
                        "compiled call checked: extra.compile); compare with "
                        "the inductor FP32 row; the 224x224 graph carries the same calibrated qparams",
                        "its efficiency is the oneDNN INT8 convolution kernels' own rate (residual adds fused as "
                        "post-ops; almost all of the time is qconv: results/profile_torch_pt2e_resnet50_b32.csv)"])


# ------------------------------------------------------------------------------ GPT-2

def conv1d_to_linear(model) -> int:
    """Replace every HF Conv1D (y = x @ W + b, W: (in, out)) with the equal nn.Linear (W.T). Returns count."""
    import torch

    import_torchvision()
    from transformers.pytorch_utils import Conv1D

    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = torch.nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.weight.t())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        setattr(parent, child, lin)
    return len(targets)


TORCHAO_CONFIGS = {"weight-only": "Int8WeightOnlyConfig", "dynamic": "Int8DynamicActivationInt8WeightConfig",
                   "fp8": "Float8DynamicActivationFloat8WeightConfig"}


def torchao_config(method: str):
    """The torchao config of a method, with set_inductor_config=False: by default torchao sets process-wide inductor
    options (coordinate-descent tuning, ...) when it quantizes, which every variant compiled later in the process
    would then inherit; these models run eager."""
    import torchao.quantization as torchao_quantization

    return getattr(torchao_quantization, TORCHAO_CONFIGS[method])(set_inductor_config=False)


def lm_quantized(hf_dir: str, method: str, device: str = "cpu", keep=None):
    """torchao quantization of a causal LM's linear layers (GPT-2's HF Conv1D converted to nn.Linear first); `keep(module
    path) -> bool`: the quantization scope's layers left FP32 (default: the output embedding, i.e. the LM head).
    Returns (model, linear layers)."""
    import torch
    from torchao.quantization import quantize_

    from models.embedded import load_causal_lm

    model = load_causal_lm(hf_dir)
    conv1d_to_linear(model)
    n = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    model = model.to(device)
    if keep is None:
        head = model.get_output_embeddings()
        keep = lambda fqn: model.get_submodule(fqn) is head  # noqa: E731
    quantize_(model, torchao_config(method), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and not keep(fqn))
    return model.eval(), n


def quantized_linears(model) -> list[str]:
    """Module paths of the linear layers whose weight torchao replaced by a quantized tensor subclass."""
    import torch

    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and type(m.weight.data if isinstance(m.weight, torch.nn.Parameter) else m.weight) is not torch.Tensor]


def _lm_call(model, ids):
    return model(ids, use_cache=False).logits


def lm_logits(model, device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _lm_call(model, _to_device(torch.from_numpy(ids), device)).float().cpu().numpy()

    return fn


def lm_generate(model, device: str = "cpu"):
    """Built.generate: one step of Hugging Face's own cached decoding (a DynamicCache carried as the state, positions
    continuing from it), computing only the last position's logits."""
    import torch

    def step(ids: np.ndarray, state):
        with torch.inference_mode():
            out = model(input_ids=_to_device(torch.from_numpy(np.ascontiguousarray(ids)), device),
                        past_key_values=state, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().cpu().numpy(), out.past_key_values

    return step


def _lm_timing(model, device: str) -> dict:
    if device == "cpu":
        return {"timed": host_timed(lambda m: lm_logits(m, "cpu"), model)} if isinstance(model, Compiled) else {}
    return dict(timed=device_timed(model, device, call=_lm_call), **timing_plug(device))


def _build_lm(method: str):
    """eager / inductor GPT-2, FP32 or cast to fp16/bf16, on cpu or cuda."""
    base, prec = split_method(method)

    def build(ctx: ModelContext, device: str) -> Built:
        from models.embedded import load_causal_lm

        model = load_causal_lm(ctx.manifest["hf_dir"]).to(device=device, dtype=_dtype(prec))
        size = state_size_mb(model.state_dict())  # in the variant's dtype
        notes = [f"HF {type(model).__name__} (sdpa attention)"] + _device_notes(device, prec)
        extra = {}
        if base != "eager":
            model = Compiled(model, method, COMPILE_MODES[base], device)
            notes.insert(1, compile_note(base, device))
            extra.update(compile_extra(model))
        # inductor compiles for static shapes: a growing KV cache would recompile per token, so no decode rows
        gen = lm_generate(model, device) if base == "eager" else None
        return Built(lm_logits(model, device), size_mb=size, compute_precision=prec, notes=notes, handle=model,
                     generate=gen, extra=extra, **_cast_coverage(prec), **_lm_timing(model, device))

    return build


def _build_torchao_lm(method: str):
    def build(ctx: ModelContext, device: str = "cpu") -> Built:
        t0 = time.time()
        scope_name, scope = ctx.scope_for(method)
        model, n = lm_quantized(ctx.manifest["hf_dir"], method, device, keep=scope.keeps)
        prep_s = time.time() - t0
        swapped = quantized_linears(model)
        scheme = {"weight-only": "weights: per-channel INT8", "dynamic": "weights: per-channel INT8; activations: "
                  "per-token dynamic INT8", "fp8": "weights and activations float8_e4m3fn, per-tensor scales, "
                  "activations scaled dynamically; FP8 matmuls (torch._scaled_mm)"}[method]
        notes = (f"torchao {TORCHAO_CONFIGS[method]} on {len(swapped)} of {n} linear layers (quantization "
                 f"scope '{scope_name}'); no calibration ({scheme}); run eager")
        dynamic = method in ("dynamic", "fp8")  # the matmuls themselves run int8 / fp8
        return Built(lm_logits(model, device), size_mb=state_size_mb(model.state_dict()),
                     compute_precision={"dynamic": "int8", "fp8": "fp8"}.get(method, "fp32"),
                     calibration=Calibration(0, prep_s, None),
                     notes=[notes] + _device_notes(device, "fp32"), handle=model, generate=lm_generate(model, device),
                     reduced_layers=swapped if dynamic else [],
                     coverage_source=(f"the linear layers whose weights torchao swapped "
                                      f"({'fp8 x fp8' if method == 'fp8' else 'int8 x int8'} matmuls)" if dynamic
                                      else "weight-only: int8 weights dequantized inside float matmuls "
                                           "(no layer multiplies in integer)"),
                     **_lm_timing(model, device))
    return build


# ------------------------------------------------------------------------------ the route

_HALF_METHODS = ("eager-fp16", "eager-bf16", "inductor-fp16", "inductor-bf16")
_GPU_IMAGE = ("inductor-cl", "inductor-cl-fp16", "inductor-max", "inductor-max-fp16")
_GPU_LM = ("inductor-max", "inductor-max-fp16")

# (task kind, method) -> builder(ctx, device): adding a method is one builder and one declared variant, no if/elif
BUILDERS: dict[tuple[str, str], Callable[[ModelContext, str], Built]] = {
    ("image-classification", "fx"): build_fx,
    ("image-classification", "pt2e"): build_pt2e,
    **{("image-classification", m): _build_image(m) for m in ("eager", "inductor", *_HALF_METHODS, *_GPU_IMAGE)},
    **{("language-model", m): _build_lm(m) for m in ("eager", "inductor", *_HALF_METHODS, *_GPU_LM)},
    **{("language-model", m): _build_torchao_lm(m) for m in TORCHAO_CONFIGS},
}


FP8_CAPABILITY = (8, 9)  # torch._scaled_mm's FP8 tensor cores: Ada (8.9) and Hopper (9.0) and later


def device_plan(method: str, device: str, caps: dict) -> str | None:
    """Why `method` cannot run on `device` here (a skipped row), or None. `caps`: what this machine offers,
    {"cpu_fp16", "cpu_bf16", "cuda_bf16", "cuda_fp8"} -> bool, "cuda_capability" -> (major, minor) or None,
    "cuda_name" (from `capabilities()`)."""
    if method in TOOLCHAINS[TOOLCHAIN].unsupported.get(device, {}):  # declared (the plan skips it without a build)
        return TOOLCHAINS[TOOLCHAIN].unsupported[device][method]
    if method == "fp8" and device == "cuda" and not caps.get("cuda_fp8"):
        cc = caps.get("cuda_capability")
        have = f"compute capability {cc[0]}.{cc[1]}" if cc else "an unknown compute capability"
        return (f"fp8 on cuda: this GPU ({caps.get('cuda_name') or 'unnamed'}) has {have}; FP8 matmuls "
                f"(torch._scaled_mm, torchao float8) need >= {FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]} "
                "(Ada, Hopper: L4/L40, H100/H200, and later)")
    _, prec = split_method(method)
    if device == "cpu" and prec in HALF and not caps.get(f"cpu_{prec}"):
        return (f"{prec} on the CPU: oneDNN reports no native {prec.upper()} support on this CPU "
                f"({'AVX512-FP16/AMX-FP16' if prec == 'fp16' else 'AVX512-BF16/AMX-BF16'} absent), so torch would "
                f"run emulated kernels that say nothing about {prec} inference; the {prec} rows run on cuda")
    if device == "cuda" and prec == "bf16" and not caps.get("cuda_bf16"):
        return "bf16 on cuda: this GPU does not support bfloat16 (torch.cuda.is_bf16_supported() is False)"
    return None


def capabilities() -> dict:
    """What `device_plan` needs to know about this machine (torch imported)."""
    import torch

    mk = torch.ops.mkldnn
    caps = {"cpu_fp16": bool(getattr(mk, "_is_mkldnn_fp16_supported", lambda: False)()),
            "cpu_bf16": bool(getattr(mk, "_is_mkldnn_bf16_supported", lambda: False)()),
            "cuda_bf16": False, "cuda_fp8": False, "cuda_capability": None, "cuda_name": None}
    if torch.cuda.is_available():
        cc = tuple(torch.cuda.get_device_capability(0))
        caps.update(cuda_bf16=bool(torch.cuda.is_bf16_supported()), cuda_capability=cc,
                    cuda_fp8=cc >= FP8_CAPABILITY, cuda_name=torch.cuda.get_device_name(0))
    return caps


def torch_settings(device: str, built: Built) -> dict:
    """The backend settings a row ran under (recorded in its extra): threads, oneDNN, inductor, quantized engine."""
    import torch
    import torch._inductor.config as inductor_config

    handle = built.handle
    out = {"threads": torch.get_num_threads(), "inductor_freezing": bool(inductor_config.freezing),
           "channels_last": CHANNELS_LAST_NOTE in built.notes or CUDA_CHANNELS_LAST_NOTE in built.notes,
           "compile_mode": handle.stats["mode"] if isinstance(handle, Compiled) else None}
    if device == "cpu":
        out.update(mkldnn=bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
                   quantized_engine=torch.backends.quantized.engine)
    else:
        out.update(cudnn=bool(torch.backends.cudnn.enabled),
                   cudnn_benchmark=bool(torch.backends.cudnn.benchmark) or (isinstance(handle, Compiled)
                                                                            and handle.cudnn_benchmark),
                   cuda_graphs=isinstance(handle, Compiled) and handle.cudagraph_steps,
                   matmul_tf32=bool(torch.backends.cuda.matmul.allow_tf32), cudnn_tf32=bool(torch.backends.cudnn.allow_tf32))
    return out


def cuda_unavailable() -> str | None:
    """Why torch cannot use CUDA here, or None."""
    try:
        import torch
    except ImportError as exc:
        return f"CUDA: torch cannot be imported ({exc})"
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"CUDA is not available: torch {torch.__version__} is a CPU-only build (install the CUDA wheel)"
    return f"CUDA is not available: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU or driver"


class TorchRoute(Route):
    toolchain = TOOLCHAIN
    description = __doc__.split("\n\n")[0]

    def unavailable(self, opts) -> str | None:
        return unavailable_import("torch", "torchao")

    def device_unavailable(self, device: str, opts) -> str | None:
        return cuda_unavailable() if device == "cuda" else None

    def environment(self, device: str, opts) -> dict:
        if device != "cuda" or cuda_unavailable():
            return {}
        import torch

        return {"gpu": torch.cuda.get_device_name(0), "cuda_runtime": torch.version.cuda}

    def open(self, ctx: ModelContext) -> None:
        import torch

        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's enum-registration chatter
        torch.set_num_threads(ctx.cfg.threads)
        torch.manual_seed(0)

    def build(self, ctx: ModelContext, method: str, precision: str, device: str) -> Built:
        caps = ctx.state.get("caps")
        if caps is None:
            caps = ctx.state["caps"] = capabilities()
        why = device_plan(method, device, caps)
        if why:
            raise SkipVariant(why)
        gpu_before = None
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            gpu_before = torch.cuda.memory_allocated()
        built = BUILDERS[(ctx.task.kind, method)](ctx, device)
        built.extra.setdefault("torch_settings", torch_settings(device, built))
        if gpu_before is not None:
            def gpu_peak(before=gpu_before) -> float:
                import torch

                return (torch.cuda.max_memory_allocated() - before) / 2**20

            built.gpu_peak_mb = gpu_peak
        return built


ROUTE = TorchRoute()
main = main_for(ROUTE)

if __name__ == "__main__":
    raise SystemExit(main())
