"""Prepare a model for every route (torch environment): weights, token ids, FP32 ONNX, op count.

    python -m models.prepare --model resnet50            # embedded default, trained on first use
    python -m models.prepare --model gpt2 --weights pretrained --weights-path gpt2 --data wikitext-2
    python -m models.prepare --models-file my_models.py --model my-vit --weights pretrained --data /data/imagenette

Writes models/cache/<model>-<weights>-<key>/manifest.json (see docs/architecture.md). Also
measures the device's FP32/INT8 matmul ceilings once (results/device.json) with --ceilings.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_json, sha256_file
from utils.errors import SuiteError, cli_main, setup_logging
from utils import artifacts
from utils.registry import CAUSAL_LM, CLASSIFIER, MODELS, SOURCE_HELP, WEIGHTS, parse_list, task_of
from utils.specs import PATH_KEYS, ModelSource, ppl_stride

log = logging.getLogger("models.prepare")
ONNX_OPSET = 17


def count_flops(model, example) -> float:
    """Total FLOPs (2 x multiply-accumulates) of one forward pass, counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(example)
    return float(fc.get_total_flops())


MASK_FILL = -1.0e4


def finite_mask_constants(model_proto, fill: float = MASK_FILL) -> int:
    """Replace float32-min mask constants (transformers' causal-mask fill) by `fill`.

    -3.4e38 in the attention mask makes histogram calibrators (ModelOpt/ORT entropy) fail ("too many
    bins for data range"). GPT-2's original implementation masked with -1e4; after softmax both give
    exactly zero weight in float32, so the model's outputs do not change (checked by the ppl match).
    """
    import numpy as np
    from onnx import numpy_helper

    n = 0
    for node in model_proto.graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == 1:  # FLOAT
                arr = numpy_helper.to_array(attr.t)
                if arr.size and arr.min() < -1e30:
                    arr = np.where(arr < -1e30, np.float32(fill), arr).astype(np.float32)
                    attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
                    n += 1
    return n


def export_onnx(model, example, path: Path, input_name: str, dynamic_axes: dict, finite_masks: bool = False) -> None:
    """One-file ONNX (opset 17, TorchScript exporter: no external data), written atomically."""
    import warnings

    import torch

    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=[input_name], output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
    import onnx

    if finite_masks:
        proto = onnx.load(str(tmp))
        if finite_mask_constants(proto):
            onnx.save(proto, str(tmp))
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)


class _LogitsOnly:
    """Wrap a HF causal LM so tracing sees input_ids -> logits only (no cache)."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                # an explicit all-ones mask keeps transformers from tracing its packed-sequence
                # detection (torch.diff, which the opset-17 exporter lacks); numerically identical
                mask = torch.ones_like(input_ids)
                return self.m(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

        return Wrapper(model).eval()


LATENCY_RESOLUTION = 224  # classifiers are timed at ImageNet's 224 x 224, whatever resolution they are scored at


def prepare_classifier(src: ModelSource, out: Path, force: bool = False) -> dict:
    import torch

    from models.embedded import load_classifier, train_classifier

    decl = src.decl
    arch = decl.arch_name
    info: dict = {"model": src.model, "weights": src.weights, "task": decl.task, "arch": decl.arch, "arch_name": arch}
    if src.weights == "embedded":
        cfg = src.recipe
        ckpt = out / "model.pt"
        if force or not ckpt.exists():
            info.update(train_classifier(out, cfg, arch))
        model = load_classifier(arch, ckpt, cfg["num_classes"])
        info.update(checkpoint=str(ckpt), resolution=cfg["resolution"], num_classes=cfg["num_classes"],
                    dataset=decl.dataset("embedded") or cfg.get("data"))
    elif src.weights == "random":
        cfg = src.recipe
        model, ckpt = _random_classifier(out, arch, cfg)
        info.update(checkpoint=str(ckpt), resolution=cfg["resolution"], num_classes=cfg["num_classes"],
                    dataset=decl.dataset("random") or "random inputs", random_init=cfg, n_eval=cfg.get("n_eval", 64))
    else:
        model, ckpt = _pretrained_classifier(src, out, arch)
        info.update(checkpoint=str(ckpt), resolution=LATENCY_RESOLUTION, num_classes=1000,
                    dataset=f"imagefolder:{Path(src.data).name}")
    info["fp32_size_mb"] = Path(info["checkpoint"]).stat().st_size / 1e6
    info["latency_resolution"] = LATENCY_RESOLUTION
    example = torch.zeros(1, 3, LATENCY_RESOLUTION, LATENCY_RESOLUTION)
    info["ops_per_item"] = count_flops(model, example)
    info["activation_elements"] = activation_elements(model, example)
    onnx_path = out / "fp32.onnx"
    if force or not onnx_path.exists():
        t0 = time.time()
        export_onnx(model, torch.zeros(2, 3, info["resolution"], info["resolution"]), onnx_path, "input",
                    {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
        log.info("exported %s in %.1f s", onnx_path, time.time() - t0)
    info.update(onnx=str(onnx_path), onnx_sha=sha256_file(onnx_path)[:16], onnx_opset=ONNX_OPSET)
    return info


# the layers whose outputs an image classifier writes to memory (batch norm and activations fold into the
# convolution before them in every deployment runtime); residual adds are counted from the traced graph
_OUTPUT_LAYERS = ("Conv", "Linear", "MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool")


def activation_elements(model, example) -> int | None:
    """Elements of every layer output one image writes (utils/traffic.py): convolutions, linear layers and pools
    (batch norm and ReLU fused into them), and the residual adds, from torch.fx's traced graph with its shapes
    propagated; None when the graph cannot be traced."""
    import operator

    import torch
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = symbolic_trace(model)
        ShapeProp(gm).propagate(example)
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow: no estimate, said in the log
        log.warning("activation elements not counted (%s: %s)", exc.__class__.__name__, exc)
        return None
    total = 0
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        if node.op == "call_module":
            kind = type(gm.get_submodule(node.target)).__name__
            counted = kind.startswith(_OUTPUT_LAYERS)
        else:
            counted = node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)
        if counted:
            total += int(torch.Size(meta.shape).numel()) // int(example.shape[0])
    return total


def _random_classifier(out: Path, arch: str, cfg: dict):
    """torchvision's `arch` with its own default initialisation, seeded; saved as a state dict."""
    import torch

    from models.embedded import build_classifier, load_classifier

    ckpt = out / "model.pt"
    if not ckpt.exists():
        torch.manual_seed(cfg["seed"])
        m = build_classifier(arch, cfg["num_classes"])
        torch.save(m.state_dict(), ckpt.with_suffix(".pt.tmp"))
        ckpt.with_suffix(".pt.tmp").replace(ckpt)
    return load_classifier(arch, ckpt, cfg["num_classes"]), ckpt


def _pretrained_classifier(src: ModelSource, out: Path, arch: str):
    """A state-dict file (--weights-path FILE), or torchvision's own weights of the architecture: a weights name
    of it (--weights-path IMAGENET1K_V1, or the declaration's) or its DEFAULT ones, downloaded when online."""
    import torch

    from models.embedded import load_classifier

    path = src.weights_path
    if path and (os.sep in path or Path(path).exists()):
        return _load_checked(path, arch, 1000), Path(path)
    name = path or "DEFAULT"
    ckpt = out / f"{arch}_{name.lower()}.pt"
    if not ckpt.exists():
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not os.environ.get("SUITE_ONLINE"):
            raise SuiteError(f"pretrained {arch} weights are not cached and the run is offline: pass --weights-path "
                             f"FILE (a torchvision {arch} state dict) or run with --online")
        from utils.torchvision_compat import import_torchvision

        tv = import_torchvision()
        try:
            weights = tv.models.get_model_weights(arch)[name]
        except (KeyError, ValueError):
            raise SuiteError(f"torchvision has no weights {name!r} for {arch}") from None
        try:
            m = tv.models.get_model(arch, weights=weights)
        except Exception as exc:  # URLError, HTTPError, ...
            raise SuiteError(f"could not download torchvision {arch} weights ({exc.__class__.__name__}); "
                             "pass --weights-path FILE") from None
        torch.save(m.state_dict(), ckpt)
    return load_classifier(arch, ckpt, 1000), ckpt


def _load_checked(path, arch: str, num_classes: int):
    """load_classifier with load-time library errors (empty/truncated/foreign file) as one line naming the file."""
    from models.embedded import load_classifier

    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"{arch} weights {p} do not exist")
    if p.stat().st_size == 0:
        raise SuiteError(f"{arch} weights {p} are an empty file (0 bytes)")
    try:
        return load_classifier(arch, p, num_classes)
    except Exception as exc:  # noqa: BLE001 - torch raises EOFError, RuntimeError, UnpicklingError, KeyError ...
        msg = " ".join(str(exc).split())[:160]
        raise SuiteError(f"cannot load {arch} weights from {p} ({exc.__class__.__name__}: {msg}); "
                         f"pass a torchvision {arch} state dict") from None


def prepare_causal_lm(src: ModelSource, out: Path, force: bool = False) -> dict:
    import torch

    from models.embedded import load_causal_lm, train_causal_lm

    decl = src.decl
    info: dict = {"model": src.model, "weights": src.weights, "task": decl.task, "arch": decl.arch,
                  "arch_name": decl.arch_name}
    if src.weights == "embedded":
        stamp = out / "train.json"
        if force or not stamp.exists():
            atomic_write_json(stamp, train_causal_lm(out, src.recipe, decl.arch_name, decl.config_args("embedded")))
        import json

        info.update(json.loads(stamp.read_text()))
        info["dataset"] = decl.dataset("embedded") or src.recipe.get("corpus")
    elif src.weights == "random":
        info.update(_random_causal_lm(out, src))
    else:
        info.update(_pretrained_lm_data(src, out))
    model = load_causal_lm(info["hf_dir"], attn_implementation="eager")
    shape = decoder_shape(model.config)
    # evaluation windows: the full context (128 embedded, 1024 for HF gpt2); random weights: the declared prefill
    L = int(src.recipe["seq_len"] if src.weights == "random" else shape["n_positions"])
    info.update(seq_len=L, vocab_size=int(model.config.vocab_size), ppl_stride=ppl_stride(L), **shape,
                **mlp_shape(model))
    info["fp32_size_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    wrapped = _LogitsOnly(model)
    info["ops_per_item"] = count_flops(wrapped, torch.zeros(1, L, dtype=torch.long)) / L
    onnx_path = out / "fp32.onnx"
    if force or not onnx_path.exists():
        t0 = time.time()
        export_onnx(wrapped, torch.zeros(2, min(L, 16), dtype=torch.long), onnx_path, "input_ids",
                    {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}, finite_masks=True)
        log.info("exported %s in %.1f s", onnx_path, time.time() - t0)
    info.update(onnx=str(onnx_path), onnx_sha=sha256_file(onnx_path)[:16], onnx_opset=ONNX_OPSET,
                onnx_mask_fill=MASK_FILL)
    dec_path = out / "decoder.onnx"
    if force or not dec_path.exists():
        t0 = time.time()
        export_decoder_onnx(model, dec_path)
        log.info("exported %s in %.1f s", dec_path, time.time() - t0)
    info.update(decoder_onnx=str(dec_path), decoder_onnx_sha=sha256_file(dec_path)[:16])
    return info


def _random_causal_lm(out: Path, src: ModelSource) -> dict:
    """The architecture from the declared random config (e.g. GPT-2 small, 124M parameters), transformers' own
    initialisation, seeded; seeded uniform token ids stand in for text (calibration and fidelity samples)."""
    import torch

    from models.embedded import causal_lm_from_config, lm_config

    cfg = src.recipe
    hf_dir = out / "hf"
    if not (hf_dir / "config.json").exists():
        torch.manual_seed(cfg["seed"])
        model = causal_lm_from_config(lm_config(src.decl.arch_name, src.decl.config_args("random"))).eval()
        tmp = hf_dir.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tmp.replace(hf_dir)
    vocab = int(cfg.get("vocab_size") or json_config(hf_dir)["vocab_size"])
    rng = np.random.default_rng(cfg["seed"])
    np.save(out / "train_ids.npy", rng.integers(0, vocab, cfg["train_tokens"], dtype=np.int64))
    np.save(out / "val_ids.npy", rng.integers(0, vocab, cfg["val_tokens"], dtype=np.int64))
    return {"hf_dir": str(hf_dir), "train_ids": str(out / "train_ids.npy"), "val_ids": str(out / "val_ids.npy"),
            "dataset": src.decl.dataset("random") or "random token ids", "random_init": cfg}


def json_config(hf_dir: Path) -> dict:
    import json

    return json.loads((Path(hf_dir) / "config.json").read_text())


def decoder_shape(config) -> dict:
    """A transformer decoder's shape from its Hugging Face config (the generic names every causal LM config maps:
    num_hidden_layers, num_attention_heads, hidden_size, max_position_embeddings; num_key_value_heads and head_dim
    where the architecture has them): a KV-cache decoder's past inputs are (batch, n_kv_head, past, head_dim) per
    layer, keys and values."""
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    return {"n_layer": int(config.num_hidden_layers), "n_head": heads,
            "n_kv_head": int(getattr(config, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(config, "head_dim", None) or hidden // heads), "hidden_size": hidden,
            "n_positions": int(config.max_position_embeddings)}


def mlp_shape(model) -> dict:
    """The feed-forward block of a decoder layer (utils/traffic.py): its inner width (config.intermediate_size, or
    GPT-2's n_inner, default 4 x hidden) and whether it is gated (a gate and an up projection multiplied, Llama's
    `gate_proj`) or not (one projection and an activation, GPT-2's)."""
    c = model.config
    hidden = int(c.hidden_size)
    inner = int(getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden)
    gated = any(name.rsplit(".", 1)[-1] in ("gate_proj", "gate_up_proj") for name, _ in model.named_modules())
    return {"mlp_inner": inner, "mlp_gated": gated}


def decoder_io_names(n_layer: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", *past], ["logits", *present]


class _DecoderWithPast:
    """Wrap a HF causal LM so tracing sees (input_ids, past keys/values ...) -> (last-position logits, presents ...).

    One graph serves the prompt (past length 0) and every generated token (input length 1): positions continue
    from the past length, and only the last position's logits are computed (`logits_to_keep=1`)."""

    def __new__(cls, model):
        import torch
        from transformers import DynamicCache

        n_layer = int(model.config.num_hidden_layers)

        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, *past):
                cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layer)],
                                     config=self.m.config)
                p = past[0].shape[2]
                mask = torch.ones(input_ids.shape[0], p + input_ids.shape[1], dtype=torch.long)
                pos = torch.arange(input_ids.shape[1], dtype=torch.long).unsqueeze(0) + p
                out = self.m(input_ids=input_ids, past_key_values=cache, attention_mask=mask, position_ids=pos,
                             use_cache=True, logits_to_keep=1)
                presents = []
                for layer in out.past_key_values.layers:
                    presents += [layer.keys, layer.values]
                return (out.logits, *presents)

        return Wrapper(model).eval()


def export_decoder_onnx(model, path: Path) -> None:
    """The KV-cache decoder graph (opset 17, TorchScript exporter, one file), written atomically: inputs input_ids
    (batch, seq) and past_key_i/past_value_i (batch, heads, past, head_dim); outputs the last position's logits
    (batch, 1, vocab) and present_key_i/present_value_i (batch, heads, past + seq, head_dim)."""
    import warnings

    import onnx
    import torch

    shape = decoder_shape(model.config)
    names_in, names_out = decoder_io_names(shape["n_layer"])
    wrapped = _DecoderWithPast(model)
    ids = torch.zeros(2, 3, dtype=torch.long)
    past = [torch.zeros(2, shape["n_kv_head"], 5, shape["head_dim"]) for _ in names_in[1:]]
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    dyn.update({n: {0: "batch", 2: "past"} for n in names_in[1:]})
    dyn.update({n: {0: "batch", 2: "total"} for n in names_out[1:]})
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (ids, *past), str(tmp), input_names=names_in, output_names=names_out,
                          dynamic_axes=dyn, opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    if finite_mask_constants(proto):
        onnx.save(proto, str(tmp))
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)


def _pretrained_lm_data(src: ModelSource, out: Path) -> dict:
    """A Hugging Face causal LM (hub id or local dir) + WikiText-2 (HF datasets) or a local text file."""
    from utils.torchvision_compat import import_torchvision

    import_torchvision()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if src.data != "wikitext-2":  # check the data before loading (and later exporting) the model
        p = Path(src.data)
        if not p.is_file():
            raise SuiteError(f"text file {p} does not exist (or pass --data wikitext-2)")
        if p.stat().st_size == 0:
            raise SuiteError(f"text file {p} is empty: pass a text file with the evaluation corpus")
    ident = src.weights_path
    if not ident:
        raise SuiteError(f"--weights pretrained for {src.model}: pass --weights-path (a hub id or a saved model's "
                         "directory), or declare weights_path with the model")
    try:
        tok = AutoTokenizer.from_pretrained(ident)
        model = AutoModelForCausalLM.from_pretrained(ident)
    except OSError:
        raise SuiteError(f"{src.model} weights {ident!r} not found locally and the hub is unreachable or offline "
                         "(HF_HUB_OFFLINE=1): pass --weights-path DIR with a saved model, or run with --online") from None
    if src.data == "wikitext-2":
        try:
            from datasets import load_dataset

            ds = load_dataset("wikitext", "wikitext-2-raw-v1")
        except ImportError:
            raise SuiteError("--data wikitext-2 needs the `datasets` package; or pass a local text file") from None
        except Exception as exc:
            raise SuiteError(f"WikiText-2 is not cached and cannot be downloaded ({exc.__class__.__name__}); "
                             "pass --data FILE (a local text file)") from None
        train_text, val_text = "\n\n".join(ds["train"]["text"]), "\n\n".join(ds["test"]["text"])
    else:
        p = Path(src.data)
        if not p.is_file():
            raise SuiteError(f"text file {p} does not exist (or pass --data wikitext-2)")
        text = p.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise SuiteError(f"text file {p} is empty: pass a text file with the evaluation corpus")
        cut = int(len(text) * 0.8)  # first 80% for calibration, last 20% for evaluation: disjoint
        train_text, val_text = text[:cut], text[cut:]
    hf_dir = out / "hf"
    if not hf_dir.exists():
        model.save_pretrained(hf_dir.with_suffix(".tmp"))
        tok.save_pretrained(hf_dir.with_suffix(".tmp"))
        hf_dir.with_suffix(".tmp").replace(hf_dir)
    train_ids = np.asarray(tok(train_text)["input_ids"], dtype=np.int64)
    val_ids = np.asarray(tok(val_text)["input_ids"], dtype=np.int64)
    np.save(out / "train_ids.npy", train_ids)
    np.save(out / "val_ids.npy", val_ids)
    return {"hf_dir": str(hf_dir), "train_ids": str(out / "train_ids.npy"), "val_ids": str(out / "val_ids.npy"),
            "dataset": "wikitext-2" if src.data == "wikitext-2" else f"text:{Path(src.data).name}"}


def layer_macs(info: dict, task_kind: str) -> dict | None:
    """The FP32 ONNX's multiply-accumulates per layer at the latency shape (quantization/kit/macs.py), for the routes'
    coverage column; None when they cannot be counted (the routes then count them once themselves)."""
    from quantization.kit.macs import count_macs, latency_feed

    try:
        feed, items, unit = latency_feed(info, task_kind)
        t0 = time.time()
        table = {**count_macs(info["onnx"], feed, items, unit=unit), "onnx_sha": info["onnx_sha"]}
        log.info("counted %d MAC nodes (%.3g MACs per %s) in %.1f s", len(table["nodes"]), table["total"], unit,
                 time.time() - t0)
        return table
    except Exception as exc:  # noqa: BLE001 - an unusual graph: the table is made lazily later or not at all
        log.warning("MACs per layer not counted (%s: %s)", exc.__class__.__name__, exc)
        return None


PREPARERS = {CLASSIFIER: prepare_classifier, CAUSAL_LM: prepare_causal_lm}
# manifest entries this version writes: a cached manifest without them is prepared again (files are kept: nothing
# is retrained or re-exported, only recounted)
MANIFEST_KEYS = {CLASSIFIER: ("arch_name", "activation_elements"), CAUSAL_LM: ("arch_name", "n_kv_head", "mlp_inner")}


def cached_ok(src: ModelSource) -> dict | None:
    """The cached manifest when every file it records still matches its hash; files that changed are removed
    (so preparation makes them again) and None is returned."""
    if not src.manifest_path.exists():
        return None
    try:
        manifest = src.load_manifest(verify=False)
    except SuiteError:
        return None
    bad = []
    for k, rec in (manifest.get("files") or {}).items():
        path = manifest.get(k)
        why = artifacts.check(path, rec) if path else f"{k} not recorded"
        if why:
            bad.append(why)
            p = Path(path) if path else None
            if p is not None and p.exists() and src.cache_dir.resolve() in p.resolve().parents:
                shutil.rmtree(p) if p.is_dir() else p.unlink()  # only files the suite made; a user's file stays
    if "files" not in manifest or not all(Path(manifest[k]).exists() for k in ("onnx",) if k in manifest):
        bad.append("manifest without recorded hashes")
    if task_of(src.model) == CAUSAL_LM and "decoder_onnx" not in manifest:
        bad.append("no KV-cache decoder ONNX yet (made by this version)")
    missing = [k for k in MANIFEST_KEYS[task_of(src.model)] if k not in manifest]
    if missing:
        bad.append(f"manifest without {', '.join(missing)} (recorded by this version)")
    if bad:
        log.warning("%s (%s): cached files changed, preparing again: %s", src.model, src.weights, "; ".join(bad))
        return None
    return manifest


TRAINING_KEYS = ("train_test_top1", "train_seconds", "ppl_untrained", "ppl_trained", "train_tokens", "val_tokens")


def _earlier_training(src: ModelSource) -> dict:
    """What the cached manifest says about the training of the checkpoint a re-preparation keeps (the preparers retrain
    only when the checkpoint is missing); {} when there is none."""
    try:
        manifest = json.loads(src.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: manifest[k] for k in TRAINING_KEYS if k in manifest}


def prepare(src: ModelSource, force: bool = False) -> dict:
    out = src.cache_dir
    if force and out.exists():
        shutil.rmtree(out)
    if not force:
        manifest = cached_ok(src)
        if manifest is not None:
            log.info("%s (%s): cached at %s (hashes verified)", src.model, src.weights, out)
            return manifest
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    earlier = {} if force else _earlier_training(src)
    t0 = time.time()
    try:
        info = PREPARERS[task_of(src.model)](src, out, force)
    except BaseException:
        if fresh and not src.manifest_path.exists():  # a failed first preparation leaves no half-made cache folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    for k, v in earlier.items():  # re-prepared around a kept checkpoint: its training record stays
        info.setdefault(k, v)
    info.update(source=src.to_dict(), key=src.key, embedded_config=src.recipe if src.weights == "embedded" else None,
                prepared_seconds=time.time() - t0)
    info["layer_macs"] = layer_macs(info, task_of(src.model))
    # every file is recorded with its hash, and stored relative to the cache folder (a moved cache still works)
    info["files"] = {k: artifacts.fingerprint(info[k]) for k in PATH_KEYS if info.get(k)}
    for k in PATH_KEYS:
        if info.get(k):
            info[k] = artifacts.relative_to(out, info[k])
    atomic_write_json(src.manifest_path, info)
    info = src.load_manifest(verify=False)
    log.info("%s (%s): prepared in %.0f s -> %s", src.model, src.weights, time.time() - t0, src.manifest_path)
    return info


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.prepare", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help=f"comma list (default: every declared model): {', '.join(MODELS)}")
    ap.add_argument("--models-file", default=None, metavar="FILE",
                    help="a Python file declaring more models (MODELS = [ModelDecl(...)]; docs/architecture.md)")
    ap.add_argument("--weights", default="embedded", choices=WEIGHTS)
    ap.add_argument("--weights-path", default=None, help=SOURCE_HELP["weights_path"])
    ap.add_argument("--data", default=None, help=SOURCE_HELP["data"])
    ap.add_argument("--force", action="store_true", help="retrain / re-export even if cached")
    ap.add_argument("--ceilings", action="store_true", help="also measure the device's matmul ceilings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    import torch

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's enum-registration chatter
    torch.set_num_threads(args.threads)
    if args.models_file:
        from models.catalog import use_models_file

        use_models_file(args.models_file)
    from models.catalog import models_with

    models = parse_list("model", args.model, MODELS) if args.model else models_with(args.weights)
    sources = [ModelSource(m, args.weights, args.weights_path, args.data) for m in models]
    for src in sources:
        prepare(src, force=args.force)
    if args.ceilings:
        from utils.ceilings import measure_and_store

        measure_and_store(args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
