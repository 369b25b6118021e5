"""`python -m quantization.modelopt_tripy`: the ModelOpt -> Tripy route's rows for GPT-2.

CPU (here): for fp32 and each mode, perplexity of ModelOpt's fake-quant HF model (the row's value) and of
the reference runtime fed the exact Tripy state dict (extra.reference_ppl, extra.reference_max_rel_err).
No CPU latency is recorded: ModelOpt's fake quant is an accuracy emulation, not a deployment runtime.
CUDA (only where nvtripy and a GPU exist): Tripy compile + perplexity + latency per batch; elsewhere
`skipped` rows saying why.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np

from dataclasses import dataclass

from quantization.kit import Built, Calibration, ModelContext, Route, SkipVariant, main_for, unavailable_import
from quantization.modelopt_tripy.modes import FP32, MODES, get_mode
from utils.errors import RouteUnavailable, SuiteError
from utils.specs import RANDOM_REASON

log = logging.getLogger(__name__)
TOOLCHAIN = "modelopt-tripy"
CHECK_WINDOWS = 8  # evaluation windows whose logits are compared element by element (reference vs fake quant)


@dataclass(frozen=True)
class Options:
    calib_batch: int = 8
    tripy_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.calib_batch < 1:
            raise SuiteError("--calib-batch must be >= 1")


def _hf_logits_fn(model):
    import torch

    def fn(ids):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(np.ascontiguousarray(ids))).logits.float().numpy()
    return fn


def _ref_logits_fn(ref):
    return lambda ids: ref(ids).numpy()


def check_windows(val_ids: np.ndarray, seq_len: int, n: int = CHECK_WINDOWS) -> np.ndarray:
    k = min(n, val_ids.size // seq_len)
    if k < 1:  # a short --eval-limit: compare on what there is
        return np.asarray(val_ids, dtype=np.int64)[None, :]
    return val_ids[:k * seq_len].reshape(k, seq_len)


def compare(fq_model, ref, windows: np.ndarray) -> dict:
    """max relative error (max|d| / max|ref|) and Frobenius relative error of reference vs fake-quant logits."""
    from utils.metrics import relative_error
    from quantization.modelopt_tripy.reference import max_relative_error

    a = _hf_logits_fn(fq_model)(windows)
    b = ref(windows).numpy()
    return {"reference_max_rel_err": max_relative_error(a, b), "reference_frobenius_rel_err": relative_error(a, b),
            "reference_check_tokens": int(windows.size)}


def tripy_status() -> str | None:
    """None when Tripy rows can run here, else the reason they are skipped."""
    from quantization.modelopt_tripy.tripy_model import import_nvtripy

    try:
        import_nvtripy()
    except RouteUnavailable as exc:
        return str(exc)
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (nvtripy compiles through TensorRT on an NVIDIA GPU)"
    return None


def build_cpu(ctx: ModelContext, method: str) -> Built:
    """ModelOpt fake quant on CPU (the row's value) plus the reference runtime fed the exact Tripy state dict."""
    from quantization.modelopt_tripy.calibration import ids_forward_loop
    from quantization.modelopt_tripy.quantize import modelopt_quantize
    from quantization.modelopt_tripy.reference import GPTShape, ReferenceGPT
    from quantization.modelopt_tripy.weights import build_tripy_state_dict, deploy_size_mb, fp32_state_dict, load_hf
    from utils.metrics import strided_perplexity

    if "hf_fp32" not in ctx.state:
        ctx.state["hf_fp32"], _ = load_hf(ctx.manifest["hf_dir"])
        ctx.state["shape"] = GPTShape.from_hf(ctx.state["hf_fp32"].config)
        ctx.state["states"] = {}
    hf_fp32, shape, data = ctx.state["hf_fp32"], ctx.state["shape"], ctx.data
    t0 = time.perf_counter()
    calib_s, fq = None, hf_fp32
    if method == FP32:
        sd = fp32_state_dict(hf_fp32)
    else:
        loop = ids_forward_loop(data.calib, ctx.opts.calib_batch)
        fq = modelopt_quantize(copy.deepcopy(hf_fp32), method, forward_loop=loop)
        calib_s = time.perf_counter() - t0
        sd = build_tripy_state_dict(fq, method)
    ctx.state["states"][method] = sd
    ref = ReferenceGPT(shape, None if method == FP32 else method)
    ref.load_state_dict(sd)
    ppl_ref = strided_perplexity(_ref_logits_fn(ref), data.val_ids, max_length=data.seq_len, stride=data.stride)
    cmp = compare(fq, ref, check_windows(data.val_ids, data.seq_len))
    extra = {"reference_ppl": ppl_ref.ppl, **cmp,
             "tripy_state_dict": {k: [list(v.shape), str(v.dtype).replace("torch.", "")]
                                  for k, v in sd.items() if ".h.0." in k or not k.startswith("transformer.h.")}}
    if method != FP32:
        mode = get_mode(method)
        extra.update(modelopt_config=mode.modelopt_cfg, weight_scale_layout=mode.weight_scale,
                     weight_layout=mode.weight_layout, calib_batch=ctx.opts.calib_batch)
    notes = (f"value: ModelOpt fake-quant HF model on CPU; reference runtime on the Tripy state dict: ppl "
             f"{ppl_ref.ppl:.4f}, max rel logit err {cmp['reference_max_rel_err']:.2e}; no CPU latency "
             f"(fake quant is not a deployment runtime)")
    cal = None if method == FP32 else Calibration(int(data.calib.shape[0]), calib_s,
                                                  "awq_lite" if method == "int4-weight-only" else "max")
    return Built(_hf_logits_fn(fq), size_mb=deploy_size_mb(sd, None if method == FP32 else method),
                 compute_precision="fp32", calibration=cal, notes=[notes], extra=extra, batches=(),
                 reduced_layers=[], coverage_source="ModelOpt fake quantization (quantize-dequantize in float, every "
                                                    "multiply in fp32)")


def build_tripy(ctx: ModelContext, method: str, precision: str) -> Built:
    """GPU only (never run on the build machines): the Tripy GPT compiled per batch, scored at batch 1."""
    import torch

    from quantization.modelopt_tripy.tripy_model import build_gpt, compile_gpt, load_into_tripy, run_compiled

    sd = ctx.state.get("states", {}).get(method)
    if sd is None:
        raise RuntimeError("the CPU stage of this variant failed")
    dtype, seq_len = ctx.opts.tripy_dtype, ctx.data.seq_len
    mode = None if method == FP32 else method
    model = build_gpt(ctx.state["shape"], mode, dtype)
    load_into_tripy(model, sd, mode, dtype)
    compiled: dict[int, object] = {}
    compile_s: dict[int, float] = {}

    def for_batch(batch: int):
        if batch not in compiled:
            t0 = time.perf_counter()
            compiled[batch] = compile_gpt(model, batch, seq_len)
            compile_s[batch] = round(time.perf_counter() - t0, 2)
        return compiled[batch]

    def predict(ids):  # compiled shapes are static: windows right-padded to seq_len
        return _padded(for_batch(1), ids, seq_len)

    def timed(ids):
        c = for_batch(ids.shape[0])
        return lambda: run_compiled(c, ids)

    return Built(predict, compute_precision=precision, notes=[f"nvtripy {dtype}; compile seconds per batch in extra"],
                 extra={"compile_seconds": compile_s}, timed=timed, sync=torch.cuda.synchronize)


class TripyRoute(Route):
    toolchain = TOOLCHAIN
    description = ("ModelOpt PTQ of GPT-2 (int8/int4-AWQ weight-only, fp8), scales loaded into a Tripy GPT; "
                   "CPU reference runtime checks the loaded state dict numerically.")
    Options = Options

    def add_options(self, ap) -> None:
        g = ap.add_argument_group("ModelOpt -> Tripy")
        g.add_argument("--calib-batch", type=int, default=8, help="calibration batch size")
        g.add_argument("--tripy-dtype", default="float32", choices=("float32", "float16"),
                       help="dtype of the Tripy model's float tensors (GPU rows)")

    def unavailable(self, opts) -> str | None:
        return unavailable_import("torch", "modelopt.torch.quantization", "transformers")

    def device_unavailable(self, device: str, opts) -> str | None:
        if device == "cuda":
            why = tripy_status()
            return f"Tripy rows: {why}" if why else None
        return None

    def open(self, ctx: ModelContext) -> None:
        import torch

        torch.set_num_threads(ctx.cfg.threads)

    def build(self, ctx: ModelContext, method: str, precision: str, device: str) -> Built:
        if device == "cpu" and ctx.source.weights == "random":  # nothing to measure: no accuracy, no CPU latency
            raise SkipVariant(f"{RANDOM_REASON}, and this route's CPU rows are accuracy only (ModelOpt fake quant "
                              "and the reference runtime); its latency is Tripy's, on a GPU")
        return build_cpu(ctx, method) if device == "cpu" else build_tripy(ctx, method, precision)


def _padded(compiled, ids, seq_len):
    """Run a (1, seq_len)-compiled model on a shorter window: right-pad (causal, so logits are unaffected)."""
    from quantization.modelopt_tripy.tripy_model import run_compiled

    n = ids.shape[1]
    if n < seq_len:
        ids = np.concatenate([ids, np.zeros((1, seq_len - n), dtype=ids.dtype)], axis=1)
    return run_compiled(compiled, ids).float().cpu().numpy()[:, :n]


ROUTE = TripyRoute()
main = main_for(ROUTE)

__all__ = ["main", "MODES", "ROUTE"]
