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

from quantization.common import RouteConfig, RowWriter, load_data, route_parser
from quantization.modelopt_tripy.modes import FP32, MODES, get_mode
from utils.errors import RouteUnavailable, SuiteError, cli_main, setup_logging

log = logging.getLogger(__name__)
TOOLCHAIN = "modelopt-tripy"
CHECK_WINDOWS = 8  # evaluation windows whose logits are compared element by element (reference vs fake quant)
BYTES = {"float32": 4.0, "int8": 1.0, "float8_e4m3fn": 1.0}


def parser():
    ap = route_parser(TOOLCHAIN, "ModelOpt PTQ of GPT-2 (int8/int4-AWQ weight-only, fp8), scales loaded into a "
                                 "Tripy GPT; CPU reference runtime checks the loaded state dict numerically.")
    ap.add_argument("--calib-batch", type=int, default=8, help="calibration batch size")
    ap.add_argument("--tripy-dtype", default="float32", choices=("float32", "float16"),
                    help="dtype of the Tripy model's float tensors (GPU rows)")
    return ap


def deploy_size_mb(sd: dict, quant_mode: str | None) -> float:
    """Bytes of the loaded tensors as deployed: int8/fp8 codes 1 byte, int4 codes 0.5 byte, floats 4 bytes."""
    total = 0.0
    for k, v in sd.items():
        dt = str(v.dtype).replace("torch.", "")
        b = BYTES.get(dt, 4.0)
        if quant_mode == "int4-weight-only" and dt == "int8" and k.endswith(".weight"):
            b = 0.5
        total += b * v.numel()
    return total / 1e6


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
    from evaluation.metrics import relative_error
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


def run_model(cfg: RouteConfig, model: str, args) -> None:
    from evaluation.metrics import strided_perplexity
    from quantization.modelopt_tripy.calibration import ids_forward_loop
    from quantization.modelopt_tripy.quantize import modelopt_quantize
    from quantization.modelopt_tripy.reference import GPTShape, ReferenceGPT
    from quantization.modelopt_tripy.weights import build_tripy_state_dict, fp32_state_dict, load_hf

    source = cfg.source(model)
    manifest = source.load_manifest()
    data = load_data(source, manifest, cfg.calib_samples[model], cfg.eval_limit)
    writer = RowWriter(cfg, model, manifest, device="cpu", data=data)
    variants = cfg.variants(model)
    hf_fp32, _ = load_hf(manifest["hf_dir"])
    shape = GPTShape.from_hf(hf_fp32.config)
    windows = check_windows(data.val_ids, data.seq_len)
    ppl_kw = dict(max_length=data.seq_len, stride=data.stride)
    states = {}
    for method, precision in variants:
        try:
            t0 = time.perf_counter()
            calib_s, fq = None, hf_fp32
            if method == FP32:
                sd = fp32_state_dict(hf_fp32)
            else:
                loop = ids_forward_loop(data.calib, args.calib_batch)
                fq = modelopt_quantize(copy.deepcopy(hf_fp32), method, forward_loop=loop)
                calib_s = time.perf_counter() - t0
                sd = build_tripy_state_dict(fq, method)
            states[method] = sd
            ref = ReferenceGPT(shape, None if method == FP32 else method)
            ref.load_state_dict(sd)
            ppl = strided_perplexity(_hf_logits_fn(fq), data.val_ids, **ppl_kw)
            ppl_ref = strided_perplexity(_ref_logits_fn(ref), data.val_ids, **ppl_kw)
            cmp = compare(fq, ref, windows)
            extra = {**ppl.extra(), "reference_ppl": ppl_ref.ppl, **cmp,
                     "tripy_state_dict": {k: [list(v.shape), str(v.dtype).replace("torch.", "")]
                                          for k, v in sd.items() if ".h.0." in k or not k.startswith("transformer.h.")}}
            if method != FP32:
                mode = get_mode(method)
                extra.update(modelopt_config=mode.modelopt_cfg, weight_scale_layout=mode.weight_scale,
                             weight_layout=mode.weight_layout, calib_batch=args.calib_batch)
            notes = (f"value: ModelOpt fake-quant HF model on CPU; reference runtime on the Tripy state dict: ppl "
                     f"{ppl_ref.ppl:.4f}, max rel logit err {cmp['reference_max_rel_err']:.2e}; no CPU latency "
                     f"(fake quant is not a deployment runtime)")
            writer.write(writer.row(
                method, precision, 1, value=ppl.ppl, size_mb=deploy_size_mb(sd, None if method == FP32 else method),
                calib_samples=None if method == FP32 else int(data.calib.shape[0]), calib_seconds=calib_s,
                calib_method=None if method == FP32 else ("awq_lite" if method == "int4-weight-only" else "max"),
                compute_precision="fp32", notes=notes, extra=extra))
        except Exception as exc:  # one variant failing must not stop the others
            log.exception("%s %s failed", model, method)
            writer.status("failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:240]}" if str(exc) else
                          type(exc).__name__, [(method, precision)], batches=(1,))
    cuda = RowWriter(cfg, model, manifest, device="cuda", data=data)
    reason = tripy_status()
    if reason:
        cuda.status("skipped", f"Tripy rows: {reason}", variants)
        return
    run_tripy_rows(cfg, cuda, shape, states, data, variants, args.tripy_dtype)


def run_tripy_rows(cfg, writer, shape, states, data, variants, dtype) -> None:
    """GPU only (never run on the build machines): compile the Tripy GPT per batch, time it, score it."""
    import torch

    from evaluation.harness import measure
    from evaluation.metrics import strided_perplexity
    from quantization.modelopt_tripy.tripy_model import build_gpt, compile_gpt, load_into_tripy, run_compiled
    from utils.text import lm_latency_input

    for method, precision in variants:
        sd = states.get(method)
        if sd is None:
            writer.status("failed", "the CPU stage of this variant failed", [(method, precision)])
            continue
        try:
            mode = None if method == FP32 else method
            model = build_gpt(shape, mode, dtype)
            load_into_tripy(model, sd, mode, dtype)
            ppl = None
            for batch in cfg.batches[writer.model]:
                t0 = time.perf_counter()
                compiled = compile_gpt(model, batch, data.seq_len)
                compile_s = time.perf_counter() - t0
                if ppl is None:  # score once, at batch 1 windows padded to seq_len (compiled shapes are static)
                    one = compiled if batch == 1 else compile_gpt(model, 1, data.seq_len)
                    ppl = strided_perplexity(lambda ids: _padded(one, ids, data.seq_len), data.val_ids,
                                             max_length=data.seq_len, stride=data.stride)
                ids = lm_latency_input(batch, data.seq_len, shape.vocab_size)
                lat = measure(lambda: run_compiled(compiled, ids), items_per_call=batch * data.seq_len,
                              min_time_s=cfg.min_time, min_iters=cfg.min_iters, sync=torch.cuda.synchronize)
                writer.write(writer.row(method, precision, batch, value=ppl.ppl, **lat.row_fields(),
                                        throughput_unit="tokens/s", compute_precision=precision,
                                        notes=f"nvtripy {dtype}; compile {compile_s:.1f} s",
                                        extra={**ppl.extra(), "compile_seconds": compile_s, **lat.summary()}))
        except Exception as exc:
            log.exception("tripy %s failed", method)
            writer.status("failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:240]}" if str(exc) else
                          type(exc).__name__, [(method, precision)])


def _padded(compiled, ids, seq_len):
    """Run a (1, seq_len)-compiled model on a shorter window: right-pad (causal, so logits are unaffected)."""
    n = ids.shape[1]
    if n < seq_len:
        ids = np.concatenate([ids, np.zeros((1, seq_len - n), dtype=ids.dtype)], axis=1)
    return run_compiled(compiled, ids).float().cpu().numpy()[:, :n]


@cli_main
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.calib_batch < 1:
        raise SuiteError("--calib-batch must be >= 1")
    cfg = RouteConfig.from_args(TOOLCHAIN, args)
    import torch

    torch.set_num_threads(cfg.threads)
    for model in cfg.models:
        run_model(cfg, model, args)
    return 0


__all__ = ["main", "MODES"]
