"""The offline embedded weights: real data, real training, cached under models/cache by recipe.

The recipe is the model declaration's `embedded` dict (models/catalog.py); the architecture its `arch`:

- classifiers ("torchvision:<builder>"): torchvision's builder with the recipe's classes, trained on scikit-learn's
  handwritten digits upscaled to the recipe's resolution (the declared ResNet50: 10 classes at 16x16);
- causal language models ("hf:<model_type>"): transformers' AutoModelForCausalLM from AutoConfig.for_model(model_type,
  the recipe's config arguments), with a byte-level BPE tokenizer trained by `tokenizers` on the training documents
  of CPython's `pydoc_data.topics` (the declared GPT-2: 4 layers x 128).

Torch environment only.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_json
from utils.errors import SuiteError
from utils.torchvision_compat import import_torchvision

log = logging.getLogger(__name__)


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_classifier(arch: str, num_classes: int, *, train: bool = False):
    """torchvision's `arch` builder (torchvision.models.get_model), no pretrained weights. For training from scratch
    on a small dataset, a residual network starts with each block's last BN gamma at zero (each block the identity):
    that keeps a 50-layer network stable (builders without `zero_init_residual` are built as they are)."""
    tv = import_torchvision()
    if train:
        try:
            return tv.models.get_model(arch, weights=None, num_classes=num_classes, zero_init_residual=True)
        except TypeError:  # not a residual network of torchvision's ResNet family
            pass
    return tv.models.get_model(arch, weights=None, num_classes=num_classes)


def train_classifier(out: Path, cfg: dict, arch: str) -> dict:
    """Train on the digits train split; returns {'checkpoint', 'test_top1', 'train_seconds'}."""
    import torch
    from tqdm import tqdm

    from utils.data import digits_splits

    if cfg.get("data", "sklearn-digits") != "sklearn-digits":
        raise SuiteError(f"embedded recipe of {arch}: data {cfg['data']!r} is not known (sklearn-digits is)")
    _seed(cfg["seed"])
    torch.set_flush_denormal(True)
    sp = digits_splits(resolution=cfg["resolution"])
    x = torch.from_numpy(sp["train"].x)
    y = torch.from_numpy(sp["train"].y)
    model = build_classifier(arch, cfg["num_classes"], train=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(len(y) / cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    model.train()
    bar = tqdm(total=cfg["epochs"] * steps_per_epoch, desc=f"train {arch} (digits)", unit="step")
    for _epoch in range(cfg["epochs"]):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
            xb = x[idx]
            # light augmentation: random shifts of up to 1 pixel (seeded)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(xb)) for xb, _ in sp["test"].batches(128)])
    top1 = float((logits.argmax(1).numpy() == sp["test"].y).mean() * 100)
    ckpt = out / "model.pt"
    tmp = out / "model.pt.tmp"
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    log.info("%s embedded: test top-1 %.2f%% after %.0f s", arch, top1, time.time() - t0)
    return {"checkpoint": str(ckpt), "train_test_top1": top1, "train_seconds": time.time() - t0}


def load_classifier(arch: str, checkpoint: Path | str, num_classes: int):
    import torch

    model = build_classifier(arch, num_classes)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise SuiteError(f"checkpoint {checkpoint} does not exist") from None
    except Exception as exc:  # truncated zip, wrong keys, not a state dict ...
        raise SuiteError(f"checkpoint {checkpoint} is corrupt or not a {arch} state dict "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from None
    return model.eval()


def load_manifest_classifier(manifest: dict):
    """The prepared classifier of a manifest (its architecture, checkpoint and classes)."""
    return load_classifier(manifest["arch_name"], manifest["checkpoint"], manifest["num_classes"])


# ------------------------------------------------------------------------------- causal language models

EOS = "<|endoftext|>"


def train_tokenizer(text: str, vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([text], vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return tok


def lm_config(model_type: str, args: dict, eos_id: int | None = None):
    """AutoConfig.for_model(model_type, **args); trained from scratch (eos_id given): every dropout off and the
    tokenizer's end-of-text as BOS/EOS."""
    import_torchvision()  # transformers imports torchvision when it is installed (FACTS: CPU torch fix)
    from transformers import AutoConfig

    if eos_id is not None:
        args = {**args, "bos_token_id": eos_id, "eos_token_id": eos_id}
    try:
        config = AutoConfig.for_model(model_type, **args)
    except (ValueError, KeyError) as exc:
        raise SuiteError(f"transformers has no architecture {model_type!r} ({' '.join(str(exc).split())[:120]})") \
            from None
    if eos_id is not None:
        for k, v in list(vars(config).items()):
            if (k.endswith("pdrop") or k.endswith("dropout")) and isinstance(v, float):
                setattr(config, k, 0.0)
    return config


def causal_lm_from_config(config):
    import_torchvision()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


def torch_logits_fn(model):
    import torch

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(ids)).logits.float().numpy()

    return fn


def train_causal_lm(out: Path, cfg: dict, model_type: str, config_args: dict) -> dict:
    """Tokenizer + model trained on the corpus' train documents; saved with save_pretrained."""
    import torch
    from tqdm import tqdm

    import_torchvision()
    from transformers import PreTrainedTokenizerFast

    from utils.metrics import strided_perplexity
    from utils.specs import ppl_stride
    from utils.text import embedded_corpus

    _seed(cfg["seed"])
    corpus = embedded_corpus()
    tok = train_tokenizer(corpus["train"], cfg["vocab_size"])
    eos_id = tok.token_to_id(EOS)
    train_ids = np.asarray(tok.encode(corpus["train"]).ids, dtype=np.int64)
    val_ids = np.asarray(tok.encode(corpus["validation"]).ids, dtype=np.int64)
    np.save(out / "train_ids.npy", train_ids)
    np.save(out / "val_ids.npy", val_ids)

    if cfg.get("corpus", "pydoc_data.topics") != "pydoc_data.topics":
        raise SuiteError(f"embedded recipe of {model_type}: corpus {cfg['corpus']!r} is not known (pydoc_data.topics is)")
    config = lm_config(model_type, config_args, eos_id)
    model = causal_lm_from_config(config)
    L = int(config.max_position_embeddings)
    ppl_fn = lambda m: strided_perplexity(torch_logits_fn(m), val_ids, max_length=L, stride=ppl_stride(L)).ppl  # noqa: E731
    model.eval()
    ppl_untrained = ppl_fn(model)

    n_seq = (train_ids.size - 1) // L
    data = torch.from_numpy(train_ids[: n_seq * L].reshape(n_seq, L))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01, betas=(0.9, 0.95))
    steps_per_epoch = math.ceil(n_seq / cfg["batch_size"])
    total = cfg["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    model.train()
    bar = tqdm(total=total, desc=f"train {model_type} (pydoc topics)", unit="step")
    for _epoch in range(cfg["epochs"]):
        # a random offset per epoch so windows differ between epochs
        perm = torch.randperm(n_seq, generator=gen)
        for i in range(steps_per_epoch):
            batch = data[perm[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]]
            loss = model(batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
    bar.close()
    model.eval()
    ppl_trained = ppl_fn(model)
    hf_dir = out / "hf"
    model.save_pretrained(hf_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   model_max_length=L)
    fast.save_pretrained(hf_dir)
    log.info("%s embedded: val ppl %.2f (untrained %.1f) after %.0f s", model_type, ppl_trained, ppl_untrained,
             time.time() - t0)
    return {"hf_dir": str(hf_dir), "train_ids": str(out / "train_ids.npy"), "val_ids": str(out / "val_ids.npy"),
            "ppl_untrained": ppl_untrained, "ppl_trained": ppl_trained, "train_seconds": time.time() - t0,
            "train_tokens": int(train_ids.size), "val_tokens": int(val_ids.size)}


def load_causal_lm(hf_dir: Path | str, attn_implementation: str | None = None):
    """A saved (or hub) causal language model, in evaluation mode."""
    import_torchvision()
    from transformers import AutoModelForCausalLM

    try:
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        return AutoModelForCausalLM.from_pretrained(str(hf_dir), **kw).eval()
    except (OSError, ValueError) as exc:
        raise SuiteError(f"cannot load a causal language model from {hf_dir}: {str(exc).splitlines()[0][:160]}") \
            from None


def write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)
