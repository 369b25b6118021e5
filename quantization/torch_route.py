"""Torch route: FX graph-mode and torchao pt2e INT8 for ResNet50; torchao INT8 for GPT-2 (torch env).

    python -m quantization.torch_route --model resnet50 --methods eager,fx
    python -m quantization.torch_route --model gpt2

ResNet50: `eager` FP32, `fx` INT8 (prepare_fx/convert_fx, x86 qconfig mapping; deprecated in
torch 2.13 but still working), `inductor` FP32 and `pt2e` INT8 (torchao 0.18
X86InductorQuantizer on a torch.export graph, both run through torch.compile with freezing, so
pt2e is compared with FP32 under the same compiler). GPT-2: `eager` FP32, `weight-only` and
`dynamic` INT8 (torchao) of the transformer blocks' linear layers: HF GPT-2 implements them as
`Conv1D` (weight stored (in, out)), so they are first converted to equivalent `nn.Linear`
(weight transposed) that torchao can quantize. The LM head (tied to the embedding) stays FP32.
"""
from __future__ import annotations

import copy
import io
import logging
import time
import warnings
from typing import Callable

import numpy as np

from evaluation.harness import measure
from evaluation.metrics import classification_score, strided_perplexity
from quantization.common import ImageData, RouteConfig, RowWriter, TextData, load_data, route_parser
from utils.data import latency_input
from utils.errors import cli_main, setup_logging
from utils.text import lm_latency_input
from utils.torchvision_compat import import_torchvision

log = logging.getLogger("quantization.torch_route")
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


def torch_predict(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return fn


def classify(predict, data: ImageData, batch: int = 120):
    """Score in fixed-size batches (the last one zero-padded, padding dropped): compiled models see one shape."""
    def padded():
        for x, y in data.test.batches(batch):
            n = len(y)
            if n < batch and len(data.test) > batch:
                x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
            yield predict(x)[:n], y

    return classification_score(padded())


def time_images(predict, cfg: RouteConfig, batch: int):
    x = latency_input(batch, 224)
    return measure(lambda: predict(x), items_per_call=batch, kind="host-wall", min_time_s=cfg.min_time,
                   min_iters=cfg.min_iters, warmup=2)


# ------------------------------------------------------------------------------ ResNet50

def resnet_fx(model, calib: np.ndarray):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (torch.from_numpy(calib[:2]),))
        with torch.inference_mode():
            for i in range(0, len(calib), 32):
                prepared(torch.from_numpy(calib[i:i + 32]))
        return convert_fx(prepared)


def _compile(model):
    import torch
    import torch._inductor.config as ind

    ind.freezing = True
    return torch.compile(model, dynamic=False)


def _pt2e_prepared(model, example):
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    # batch dynamic; spatial dims static (at 16x16 the last stages are 1x1, which export specialises)
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
                             strict=True)
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
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


def run_resnet50(cfg: RouteConfig, writer: RowWriter, manifest: dict, data: ImageData) -> None:
    import torch

    from models.embedded import load_resnet50

    fp32 = load_resnet50(manifest["checkpoint"], manifest["num_classes"])
    fp32_mb = state_size_mb(fp32.state_dict())
    for method, precision in cfg.variants("resnet50"):
        t0 = time.time()
        try:
            calib_s, extra_notes, extra, timed_model = None, "", {}, None
            if method == "eager":
                model, size = fp32, fp32_mb
            elif method == "fx":
                model = resnet_fx(load_resnet50(manifest["checkpoint"], manifest["num_classes"]), data.calib.x)
                calib_s, size = time.time() - t0, state_size_mb(model.state_dict())
                # a converted FX model that first ran at 16x16 stays ~5x slower at 224x224 (kernel state
                # kept from the first shape); the timed copy has only ever seen the latency shape
                timed_model = copy.deepcopy(model)
                extra_notes = "FX graph mode (deprecated API), x86 qconfig mapping, fbgemm/onednn kernels"
            elif method == "inductor":
                model, size = _compile(load_resnet50(manifest["checkpoint"], manifest["num_classes"])), fp32_mb
                extra_notes = "torch.compile (inductor, freezing); compile time in first_call_ms"
            elif method == "pt2e":
                q, q_timed = resnet_pt2e(load_resnet50(manifest["checkpoint"], manifest["num_classes"]), data.calib.x,
                                         latency_resolution=224)
                calib_s, size = time.time() - t0, graph_tensor_mb(q)
                model, timed_model = _compile(q), _compile(q_timed)
                extra["n_qparams"] = len(qparams(q))
                extra_notes = ("torchao pt2e X86InductorQuantizer + torch.compile (inductor, freezing); compare with "
                               "the inductor FP32 row; the 224x224 graph carries the same calibrated qparams")
            else:
                raise ValueError(method)
            predict = torch_predict(model)
            t1 = time.time()
            score = classify(predict, data)
            extra["eval_seconds"] = time.time() - t1
            timed = torch_predict(timed_model) if timed_model is not None else predict
            for b in cfg.batches["resnet50"]:
                lat = time_images(timed, cfg, b)
                writer.write(writer.row(
                    method, precision, b, value=score.top1, top5=score.top5, **lat.row_fields(),
                    throughput_unit="images/s", size_mb=size, compute_precision=precision,
                    calib_samples=len(data.calib) if calib_s is not None else None, calib_seconds=calib_s,
                    calib_method="minmax+histogram (x86 default)" if calib_s is not None else None,
                    notes=extra_notes, extra={**score.extra(), **extra, "latency": lat.summary(),
                                              "latency_shape": [b, 3, 224, 224]}))
        except Exception as exc:  # one variant failing does not stop the others
            log.exception("resnet50 %s failed", method)
            writer.status("failed", f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                          [(method, precision)])


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


def _block_linear(module, fqn: str) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) and ".h." in f".{fqn}"


def gpt2_quantized(hf_dir: str, method: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    from models.embedded import load_gpt2

    model = load_gpt2(hf_dir)
    n = conv1d_to_linear(model)
    config = Int8WeightOnlyConfig() if method == "weight-only" else Int8DynamicActivationInt8WeightConfig()
    quantize_(model, config, filter_fn=_block_linear)
    return model.eval(), n


def lm_logits(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(ids), use_cache=False).logits.float().numpy()

    return fn


def run_gpt2(cfg: RouteConfig, writer: RowWriter, manifest: dict, data: TextData) -> None:
    from models.embedded import load_gpt2

    for method, precision in cfg.variants("gpt2"):
        t0 = time.time()
        try:
            if method == "eager":
                model, notes, prep_s = load_gpt2(manifest["hf_dir"]), "HF GPT2LMHeadModel FP32 (sdpa attention)", None
                size = state_size_mb(model.state_dict())
                compute = "fp32"
            else:
                model, n = gpt2_quantized(manifest["hf_dir"], method)
                prep_s = time.time() - t0
                size = state_size_mb(model.state_dict())
                compute = "fp32" if method == "weight-only" else "int8"
                notes = (f"torchao {'Int8WeightOnlyConfig' if method == 'weight-only' else 'Int8DynamicActivationInt8WeightConfig'}"
                         f" on {n} Conv1D->Linear block layers; LM head FP32; no calibration (weights: per-channel"
                         f"{'; activations: per-token dynamic' if method == 'dynamic' else ''})")
            logits = lm_logits(model)
            t1 = time.time()
            score = strided_perplexity(logits, data.val_ids, max_length=data.seq_len, stride=data.stride)
            eval_s = time.time() - t1
            for b in cfg.batches["gpt2"]:
                ids = lm_latency_input(b, data.seq_len, data.vocab_size)
                lat = measure(lambda: logits(ids), items_per_call=b * data.seq_len, kind="host-wall",
                              min_time_s=cfg.min_time, min_iters=cfg.min_iters, warmup=2)
                writer.write(writer.row(
                    method, precision, b, value=score.ppl, **lat.row_fields(), throughput_unit="tokens/s",
                    size_mb=size, compute_precision=compute, calib_samples=0 if prep_s is not None else None,
                    calib_seconds=prep_s, notes=notes,
                    extra={**score.extra(), "eval_seconds": eval_s, "latency": lat.summary(),
                           "latency_shape": [b, data.seq_len]}))
        except Exception as exc:
            log.exception("gpt2 %s failed", method)
            writer.status("failed", f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                          [(method, precision)])


# ------------------------------------------------------------------------------ entry

@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = route_parser(TOOLCHAIN, __doc__.split("\n\n")[0])
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    cfg = RouteConfig.from_args(TOOLCHAIN, args)
    import torch

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's enum-registration chatter
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    for model_name in cfg.models:
        source = cfg.source(model_name)
        manifest = source.load_manifest()
        data = load_data(source, manifest, cfg.calib_samples[model_name], cfg.eval_limit)
        writer = RowWriter(cfg, model_name, manifest, data=data)
        if model_name == "resnet50":
            run_resnet50(cfg, writer, manifest, data)
        else:
            run_gpt2(cfg, writer, manifest, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
