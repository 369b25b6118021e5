"""Calibration data for ModelOpt: `create_forward_loop` and the loop over pre-tokenised windows."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from utils.errors import SuiteError

log = logging.getLogger(__name__)

EMBEDDED_NAMES = ("embedded", "pydoc-topics")  # utils.text.embedded_corpus()['train'] (offline)
CNN_DAILYMAIL = "cnn_dailymail"
DATASETS = (CNN_DAILYMAIL, *EMBEDDED_NAMES)
CALIB_SEED = 1234
MIN_PARAGRAPH_CHARS = 200


class CalibrationLoop:
    """The `forward_loop(model)` callable ModelOpt expects, over fixed batches (re-callable: AWQ runs it twice).

    `batches` is a list of (input_ids, attention_mask) int64 tensors; `num_samples` counts rows over all batches.
    """

    def __init__(self, batches: list, device="cpu"):
        self.batches = batches
        self.device = device

    @property
    def num_samples(self) -> int:
        return sum(int(ids.shape[0]) for ids, _ in self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, model) -> None:
        import torch

        with torch.no_grad():
            for ids, mask in self.batches:
                model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))


def _batch(rows: np.ndarray, masks: np.ndarray, batch_size: int) -> list:
    import torch

    if batch_size < 1:
        raise SuiteError(f"batch_size must be >= 1 (got {batch_size})")
    out = []
    for s in range(0, rows.shape[0], batch_size):
        out.append((torch.from_numpy(np.ascontiguousarray(rows[s:s + batch_size], dtype=np.int64)),
                    torch.from_numpy(np.ascontiguousarray(masks[s:s + batch_size], dtype=np.int64))))
    return out


def ids_forward_loop(ids: np.ndarray, batch_size: int, device="cpu") -> CalibrationLoop:
    """Loop over pre-tokenised (n, L) windows (the suite's shared calibration set, `TextData.calib`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] < 1:
        raise SuiteError(f"calibration ids must be a non-empty (n, seq_len) array, got shape {ids.shape}")
    return CalibrationLoop(_batch(ids, np.ones_like(ids), batch_size), device)


def model_context(model) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if not n:
        raise SuiteError(f"cannot tell the context length of {type(model).__name__} (no config.n_positions)")
    return int(n)


def calibration_texts(dataset_name: str, num_samples: int) -> list[str]:
    """`num_samples` texts for calibration: cnn_dailymail articles (train) or embedded-corpus paragraphs (train)."""
    if num_samples < 1:
        raise SuiteError(f"num_samples must be >= 1 (got {num_samples})")
    if dataset_name in EMBEDDED_NAMES:
        from utils.text import embedded_corpus

        paras = [p.strip() for p in embedded_corpus()["train"].split("\n\n") if len(p.strip()) >= MIN_PARAGRAPH_CHARS]
        if num_samples > len(paras):
            raise SuiteError(f"the embedded corpus has {len(paras)} calibration paragraphs; asked for {num_samples}")
        pick = np.sort(np.random.default_rng(CALIB_SEED).permutation(len(paras))[:num_samples])
        return [paras[i] for i in pick]
    if dataset_name == CNN_DAILYMAIL:
        return _cnn_dailymail(num_samples)
    raise SuiteError(f"unknown calibration dataset {dataset_name!r}; valid: {', '.join(DATASETS)}")


def _cnn_dailymail(num_samples: int) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise SuiteError("cnn_dailymail needs the `datasets` package (requirements/modelopt-tripy.txt)") from None
    try:
        ds = datasets.load_dataset("cnn_dailymail", "3.0.0", split=f"train[:{num_samples}]")
    except Exception as exc:  # offline: ConnectionError / OfflineModeIsEnabled / DatasetNotFoundError ...
        raise SuiteError(
            f"dataset cnn_dailymail (3.0.0, train) is not available here ({type(exc).__name__}): run once with "
            f"network access and HF_HUB_OFFLINE=0 (SUITE_ONLINE=1) to cache it, or calibrate with 'embedded'") from None
    texts = [str(t) for t in ds["article"]]
    if len(texts) < num_samples:
        raise SuiteError(f"cnn_dailymail gave {len(texts)} articles; asked for {num_samples}")
    return texts[:num_samples]


def tokenize_fixed(tokenizer, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode, truncate to `length`, right-pad (GPT-2 has no pad token: pad id = eos, masked out)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows = np.full((len(texts), length), pad, dtype=np.int64)
    masks = np.zeros((len(texts), length), dtype=np.int64)
    for i, t in enumerate(texts):
        ids = tokenizer(t, add_special_tokens=False)["input_ids"][:length]
        if not ids:
            raise SuiteError(f"calibration text {i} encodes to no tokens")
        rows[i, :len(ids)] = ids
        masks[i, :len(ids)] = 1
    return rows, masks


def create_forward_loop(model, dataset_name, tokenizer, device, batch_size, num_samples):
    """ModelOpt calibration loop: `num_samples` texts of `dataset_name`, padded/truncated to the model's
    context (config.n_positions), in batches of `batch_size` (the last one partial). Returns forward_loop(model).

    dataset_name: "cnn_dailymail" (HF datasets, online or cached) or "embedded"/"pydoc-topics" (offline:
    paragraphs of utils.text.embedded_corpus()['train'], never the validation split).
    """
    length = model_context(model)
    texts = calibration_texts(dataset_name, int(num_samples))
    rows, masks = tokenize_fixed(tokenizer, texts, length)
    loop = CalibrationLoop(_batch(rows, masks, int(batch_size)), device)
    log.info("calibration: %d samples of %s in %d batches of <= %d, length %d", loop.num_samples, dataset_name,
             len(loop), batch_size, length)
    return loop
