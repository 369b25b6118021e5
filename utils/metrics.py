"""Accuracy metrics shared by every route (NumPy only, so ONNX/TensorRT routes score identically).

Perplexity uses Hugging Face's strided-window method: windows of `max_length` tokens start
every `stride` tokens; each window scores only the tokens not scored by the previous window
(the rest are context), so every token after the first is predicted exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np


def top1(logits: np.ndarray) -> np.ndarray:
    """The top-1 class per row, by the same rule as `topk_correct(..., k=1)` (among exactly tied logits, which
    discrete INT8 outputs can have, the one np.argpartition puts first): accuracy and fidelity agree on it."""
    return np.argpartition(-np.asarray(logits), kth=0, axis=1)[:, 0]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per sample: label within the k highest logits."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


@dataclass(frozen=True)
class ClassificationScore:
    top1: float  # percent
    top5: float  # percent
    n: int
    correct: np.ndarray  # bool per sample (for paired significance tests)

    def extra(self) -> dict:
        return {"n_eval": self.n, "correct_bits": pack_bits(self.correct)}


def classification_score(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> ClassificationScore:
    """batches of (logits (N, C), labels (N,)) -> top-1/top-5 in percent."""
    c1, c5 = [], []
    for logits, labels in batches:
        c1.append(topk_correct(logits, labels, 1))
        c5.append(topk_correct(logits, labels, 5))
    if not c1:
        raise ValueError("no evaluation samples")
    a1, a5 = np.concatenate(c1), np.concatenate(c5)
    return ClassificationScore(top1=100.0 * a1.mean(), top5=100.0 * a5.mean(), n=int(a1.size), correct=a1)


def pack_bits(mask: np.ndarray) -> str:
    return np.packbits(np.asarray(mask, dtype=bool)).tobytes().hex()


def unpack_bits(hexstr: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))[:n].astype(bool)


def strided_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) per window; n_scored tokens at the end of each window are targets."""
    if not 0 < stride <= max_length:
        raise ValueError("need 0 < stride <= max_length")
    if n_tokens < 2:
        raise ValueError("need at least 2 tokens")
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        out.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class PerplexityScore:
    ppl: float
    nll_sum: float
    n_tokens: int
    max_length: int
    stride: int
    window_nll: tuple[float, ...]  # summed NLL per window (for bootstrap intervals)
    window_tokens: tuple[int, ...]

    def extra(self) -> dict:
        return {"ppl_max_length": self.max_length, "ppl_stride": self.stride, "n_tokens_scored": self.n_tokens,
                "window_nll": [round(x, 6) for x in self.window_nll], "window_tokens": list(self.window_tokens)}


def strided_perplexity(logits_fn: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, *, max_length: int,
                       stride: int, progress: bool = False) -> PerplexityScore:
    """logits_fn((1, L) int64) -> (1, L, V) logits. Token perplexity over `ids` (1-D)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    windows = strided_windows(ids.size, max_length, stride)
    it = windows
    if progress:
        from tqdm import tqdm

        it = tqdm(windows, desc="perplexity", unit="win", leave=False)
    w_nll, w_tok = [], []
    for begin, end, n_scored in it:
        chunk = ids[begin:end][None, :]
        logp = log_softmax(np.asarray(logits_fn(chunk))[0])  # (L, V)
        # position t predicts token t+1; score only the last n_scored tokens (never the first of the text)
        targets = np.arange(end - begin)[-n_scored:]
        targets = targets[targets >= 1]
        nll = -logp[targets - 1, chunk[0, targets]].sum()
        w_nll.append(float(nll))
        w_tok.append(int(targets.size))
    total, n = float(np.sum(w_nll)), int(np.sum(w_tok))
    return PerplexityScore(ppl=float(np.exp(total / n)), nll_sum=total, n_tokens=n, max_length=max_length,
                           stride=stride, window_nll=tuple(w_nll), window_tokens=tuple(w_tok))


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """||ref - other|| / ||ref|| (Frobenius)."""
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    return float(np.linalg.norm(ref - oth) / max(np.linalg.norm(ref), 1e-30))


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (torchao's compute_error)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = ref - np.asarray(other, dtype=np.float64)
    return float(20 * np.log10(np.linalg.norm(ref) / max(np.linalg.norm(noise), 1e-30)))
