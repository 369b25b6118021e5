"""Fidelity of a quantized model's outputs to its FP32 baseline's, on the same evaluation samples (NumPy only).

Accuracy deltas say how often the labels were hit; fidelity says how closely the quantized model
reproduces the FP32 model it was made from (agreement of top-1, flips, logit SQNR, KL).

Classifiers
    `classifier_fidelity(ref_logits, q_logits, labels)`: everything from two (N, C) logit arrays.
    SQNR over all logits in dB; identical logits give the finite cap SQNR_CAP_DB (300 dB, about the
    float64 resolution), never inf/None, so the value stays JSON-able and sortable.

Language models
    `LMFidelity` accumulates window by window and keeps only per-token scalars (top-1 id, NLL, KL),
    never the (tokens x vocab) logits. logits[..., t, :] predicts targets[..., t] (shift before
    calling). With both logits in one process the KL is exact.

Across processes (the FP32 run and the quantized run live in different virtualenvs)
    `ClassifierOutputs` (logits float32 or float16 + labels) and `LMOutputs` (per-token targets,
    window ids, top-1 ids, NLL and, for the KL, the reference's top-k log-probs, their indices and the
    log of the remaining tail mass) are saved with `save_outputs` (npz, atomic) and read back with
    `load_outputs`; the quantized run passes the loaded reference to `LMFidelity(reference=...)`
    and `compare(reference, quantized)` gives the same dict as the in-process path.

    KL from the reference's top-k (LM, cross-process): with S the reference's k most likely tokens
    and T the rest (one tail bucket),
        KL_k = sum_{v in S} p_v log(p_v / q_v) + p_T log(p_T / q_T),  p_T = 1 - sum_S p_v, q_T likewise.
    This is the exact KL between P and Q coarse-grained onto {S singletons, T}; by the log-sum
    inequality 0 <= KL_k <= KL, and the gap is exactly  p_T * KL(P|T || Q|T)  (the tail mass times
    the KL of the renormalised tails), so the approximation is a lower bound whose error vanishes with
    the tail mass. `compare` reports `kl_tail_mass_mean` (mean p_T) next to it. When k >= vocab the
    tail is empty and KL_k is exact (so small vocabularies store full log-probs through the same path).
    Default k = 32 (GPT-2, ~280k scored tokens: ~55 MB uint16+float32 before compression).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_bytes
from utils.stats import block_bootstrap_ppl, mcnemar_exact

__all__ = ["SQNR_CAP_DB", "log_softmax", "sqnr_db", "kl_mean", "classifier_fidelity", "ClassifierOutputs",
           "LMOutputs", "LMFidelity", "save_outputs", "load_outputs", "compare"]

SQNR_CAP_DB = 300.0
FORMAT_VERSION = 1
DEFAULT_TOPK = 32
_CHUNK_ELEMS = 1 << 22  # tokens x vocab per float64 chunk (~32 MB)


# ------------------------------------------------------------------------------------------ basics
def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def sqnr_db(ref: np.ndarray, q: np.ndarray, cap: float = SQNR_CAP_DB) -> float:
    """10 log10(sum ref^2 / sum (ref - q)^2) over all elements, clipped to [-cap, cap] (identical -> cap)."""
    r, e = np.asarray(ref, dtype=np.float64), np.asarray(ref, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    if r.shape != e.shape:
        raise ValueError(f"sqnr needs the same shapes, got {np.shape(ref)} and {np.shape(q)}")
    sig, noise = float(np.sum(r * r)), float(np.sum(e * e))
    if noise == 0.0:
        return float(cap)
    if sig == 0.0:
        return float(-cap)
    return float(np.clip(10.0 * math.log10(sig / noise), -cap, cap))


def _kl_rows(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """KL(P||Q) per row from float64 log-probs; 0 * log 0 terms are 0."""
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        t = p * (lp - lq)
    return np.where(p > 0, t, 0.0).sum(-1)


def kl_mean(ref_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(q)), float64 log-softmax."""
    return float(np.mean(_kl_rows(log_softmax(ref_logits), log_softmax(q_logits))))


# -------------------------------------------------------------------------------------- classifiers
def classifier_fidelity(ref_logits: np.ndarray, q_logits: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Fidelity of (N, C) quantized logits to the FP32 (N, C) logits on the same N samples.

    agreement: % of samples whose quantized top-1 equals the FP32 top-1. With labels: flips_lost
    (FP32 right, quantized wrong), flips_gained (FP32 wrong, quantized right), both top-1 accuracies (%)
    and McNemar's exact p of the flips. sqnr_db: over all logits (identical -> SQNR_CAP_DB).
    kl: mean over samples of KL(softmax(FP32) || softmax(quantized)) in nats.
    """
    r = np.asarray(ref_logits)
    q = np.asarray(q_logits)
    if r.ndim != 2 or r.shape != q.shape:
        raise ValueError(f"need two (N, C) logit arrays of one shape, got {r.shape} and {q.shape}")
    from utils.metrics import top1

    rt, qt = top1(r), top1(q)  # the accuracy's own tie rule, so flips and top-1 deltas always add up
    out = {"n": int(r.shape[0]), "agreement": float(100.0 * np.mean(rt == qt)), "sqnr_db": sqnr_db(r, q),
           "kl": kl_mean(r, q), "flips_lost": None, "flips_gained": None, "top1_ref": None, "top1_q": None,
           "mcnemar_p": None}
    if labels is not None:
        y = np.asarray(labels).ravel()
        if y.shape[0] != r.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for {r.shape[0]} samples")
        rc, qc = rt == y, qt == y
        t = mcnemar_exact(rc, qc)
        out.update(flips_lost=t["n_base_only"], flips_gained=t["n_other_only"], mcnemar_p=t["p_value"],
                   top1_ref=float(100.0 * rc.mean()), top1_q=float(100.0 * qc.mean()))
    return out


@dataclass
class ClassifierOutputs:
    """Per-sample outputs of one classifier run: logits (N, C) and labels (N,) or None."""

    logits: np.ndarray
    labels: np.ndarray | None = None

    kind = "classifier"


# ---------------------------------------------------------------------------------- language models
@dataclass
class LMOutputs:
    """Per-token scalars of one LM run over the scored tokens (mask True), in evaluation order.

    window: window index of each token (blocks for the bootstrap); targets: the target ids; top1: the
    model's argmax ids; nll: -log p(target) in nats. Reference runs also keep topk_idx / topk_logp
    (T, k) and tail_logp (T,) = log of the probability outside the top-k (-inf when k = vocab).
    kl: per-token KL(reference || this run) when it was computed against a reference; kl_exact tells
    whether it came from both full logits (True) or from the reference's top-k (False).
    """

    window: np.ndarray
    targets: np.ndarray
    top1: np.ndarray
    nll: np.ndarray
    topk_idx: np.ndarray | None = None
    topk_logp: np.ndarray | None = None
    tail_logp: np.ndarray | None = None
    kl: np.ndarray | None = None
    kl_tail_mass: np.ndarray | None = None
    kl_exact: bool | None = None
    vocab: int | None = None

    kind = "lm"

    @property
    def n_tokens(self) -> int:
        return int(self.targets.size)

    def window_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-window summed NLL, scored tokens per window), windows in order of first appearance."""
        _, first, inv = np.unique(self.window, return_index=True, return_inverse=True)
        order = np.argsort(first)  # evaluation order, whatever the ids
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        w = rank[inv]
        return (np.bincount(w, weights=self.nll, minlength=order.size),
                np.bincount(w, minlength=order.size).astype(np.float64))


def _flat(logits, targets, mask):
    lg = np.asarray(logits)
    tg = np.asarray(targets)
    if lg.ndim == 2:
        lg, tg = lg[None], tg.reshape(1, -1)
    if lg.ndim != 3 or tg.shape != lg.shape[:2]:
        raise ValueError(f"logits (B, T, V) or (T, V) with targets (B, T) or (T,), got {lg.shape} and {tg.shape}")
    m = np.ones(tg.shape, bool) if mask is None else np.asarray(mask, bool).reshape(tg.shape)
    return lg, tg, m


class LMFidelity:
    """Accumulate per-token fidelity of a quantized LM to its FP32 reference, window by window.

    - One process, both models: update(ref_logits, q_logits, targets, mask) -> exact KL.
    - FP32 process: update(ref_logits=..., targets=...) then save_outputs(path, acc.reference_outputs()).
    - Quantized process: LMFidelity(reference=load_outputs(path)); update(q_logits=..., targets=...) over
      the same windows in the same order (the targets are checked) -> KL from the reference's top-k.
    result() == compare(reference_outputs(), quantized_outputs()).

    logits: (T, V) for one window or (B, T, V) for B windows; targets (T,) / (B, T) are the ids the
    logits predict (already shifted); mask (same shape, True = scored) drops context-only tokens.
    """

    def __init__(self, reference: LMOutputs | None = None, *, topk: int = DEFAULT_TOPK, keep_topk: bool = True):
        self.reference = reference
        self.topk = int(topk)
        self.keep_topk = keep_topk
        self._ref: dict[str, list] = {k: [] for k in ("window", "targets", "top1", "nll", "topk_idx", "topk_logp",
                                                      "tail_logp")}
        self._q: dict[str, list] = {k: [] for k in ("window", "targets", "top1", "nll", "kl", "kl_tail_mass")}
        self._n_windows = 0
        self._cursor = 0  # next token of self.reference
        self._kl_exact: bool | None = None
        self._vocab: int | None = None

    # ---------------------------------------------------------------------------------- update
    def update(self, ref_logits=None, q_logits=None, targets=None, mask=None) -> None:
        if targets is None or (ref_logits is None and q_logits is None):
            raise ValueError("update needs targets and at least one of ref_logits / q_logits")
        lr = _flat(ref_logits, targets, mask) if ref_logits is not None else None
        lq = _flat(q_logits, targets, mask) if q_logits is not None else None
        if lr is not None and lq is not None and lr[0].shape != lq[0].shape:
            raise ValueError(f"reference and quantized logits differ in shape: {lr[0].shape} vs {lq[0].shape}")
        lg0, tg, m = lr if lr is not None else lq
        self._vocab = int(lg0.shape[-1])
        for b in range(tg.shape[0]):
            sel = m[b]
            t = tg[b][sel].astype(np.int64)
            win = np.full(t.size, self._n_windows, np.int32)
            self._n_windows += 1
            if t.size == 0:
                continue
            if t.min() < 0 or t.max() >= self._vocab:
                raise ValueError("target id outside the vocabulary (mask the padding)")
            r_rows = lr[0][b][sel] if lr is not None else None
            q_rows = lq[0][b][sel] if lq is not None else None
            self._window(r_rows, q_rows, t, win)

    def _window(self, r_rows, q_rows, t, win):
        step = max(1, _CHUNK_ELEMS // self._vocab)
        for s in range(0, t.size, step):
            tc, wc = t[s:s + step], win[s:s + step]
            lp = log_softmax(r_rows[s:s + step]) if r_rows is not None else None
            lq = log_softmax(q_rows[s:s + step]) if q_rows is not None else None
            if lp is not None:
                self._append_ref(lp, tc, wc)
            if lq is not None:
                self._append_q(lp, lq, tc, wc)

    def _append_ref(self, lp, t, win):
        d = self._ref
        d["window"].append(win)
        d["targets"].append(t.astype(np.int32))
        d["top1"].append(lp.argmax(-1).astype(np.int32))
        d["nll"].append(-np.take_along_axis(lp, t[:, None], 1)[:, 0])
        if self.keep_topk:
            idx, top, tail = _topk(lp, self.topk)
            d["topk_idx"].append(idx)
            d["topk_logp"].append(top.astype(np.float32))
            d["tail_logp"].append(tail.astype(np.float32))

    def _append_q(self, lp, lq, t, win):
        d = self._q
        d["window"].append(win)
        d["targets"].append(t.astype(np.int32))
        d["top1"].append(lq.argmax(-1).astype(np.int32))
        d["nll"].append(-np.take_along_axis(lq, t[:, None], 1)[:, 0])
        if lp is not None:
            d["kl"].append(_kl_rows(lp, lq))
            d["kl_tail_mass"].append(np.zeros(t.size))
            self._set_exact(True)
        elif self.reference is not None and self.reference.topk_idx is not None:
            ref, c = self.reference, self._cursor
            n = t.size
            if c + n > ref.n_tokens or not np.array_equal(ref.targets[c:c + n], t):
                raise ValueError(f"tokens {c}..{c + n} differ from the reference's: feed the same windows in order")
            kl, tail = topk_kl(ref.topk_idx[c:c + n], ref.topk_logp[c:c + n], ref.tail_logp[c:c + n], lq)
            d["kl"].append(kl)
            d["kl_tail_mass"].append(tail)
            self._cursor = c + n
            self._set_exact(bool(ref.topk_idx.shape[1] >= lq.shape[-1]))

    def _set_exact(self, exact: bool):
        self._kl_exact = exact if self._kl_exact is None else (self._kl_exact and exact)

    # ---------------------------------------------------------------------------------- outputs
    @staticmethod
    def _cat(parts, dtype=None):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype or np.float64)

    def reference_outputs(self) -> LMOutputs:
        d = self._ref
        k = min(self.topk, self._vocab or self.topk)
        idx_dtype = np.uint16 if (self._vocab or 0) <= 65536 else np.int32
        return LMOutputs(window=self._cat(d["window"], np.int32), targets=self._cat(d["targets"], np.int32),
                         top1=self._cat(d["top1"], np.int32), nll=self._cat(d["nll"], np.float64),
                         topk_idx=np.concatenate(d["topk_idx"]).astype(idx_dtype) if d["topk_idx"]
                         else (np.zeros((0, k), idx_dtype) if self.keep_topk else None),
                         topk_logp=np.concatenate(d["topk_logp"]) if d["topk_logp"]
                         else (np.zeros((0, k), np.float32) if self.keep_topk else None),
                         tail_logp=self._cat(d["tail_logp"], np.float32) if self.keep_topk else None,
                         vocab=self._vocab)

    def quantized_outputs(self) -> LMOutputs:
        d = self._q
        return LMOutputs(window=self._cat(d["window"], np.int32), targets=self._cat(d["targets"], np.int32),
                         top1=self._cat(d["top1"], np.int32), nll=self._cat(d["nll"], np.float64),
                         kl=self._cat(d["kl"], np.float64) if d["kl"] else None,
                         kl_tail_mass=self._cat(d["kl_tail_mass"], np.float64) if d["kl"] else None,
                         kl_exact=self._kl_exact, vocab=self._vocab)

    def result(self, **bootstrap) -> dict:
        ref = self.reference if self.reference is not None else self.reference_outputs()
        if self.reference is not None and self._cursor != ref.n_tokens and self._q["kl"]:
            raise ValueError(f"only {self._cursor} of the reference's {ref.n_tokens} tokens were compared")
        return compare(ref, self.quantized_outputs(), **bootstrap)


def _topk(lp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (indices, log-probs) sorted by log-prob descending, and log of the tail mass (-inf if empty)."""
    v = lp.shape[-1]
    k = min(k, v)
    idx = np.argpartition(-lp, k - 1, axis=-1)[:, :k] if k < v else np.broadcast_to(np.arange(v), lp.shape).copy()
    top = np.take_along_axis(lp, idx, -1)
    order = np.argsort(-top, axis=-1, kind="stable")
    idx, top = np.take_along_axis(idx, order, -1), np.take_along_axis(top, order, -1)
    if k == v:
        return idx, top, np.full(lp.shape[0], -np.inf)
    rest = lp.copy()
    np.put_along_axis(rest, idx, -np.inf, -1)
    return idx, top, _logsumexp(rest)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1)
    mf = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(x - mf[:, None]).sum(-1)) + mf


def topk_kl(ref_idx: np.ndarray, ref_logp: np.ndarray, ref_tail_logp: np.ndarray,
            q_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row KL_k(P||Q) on the reference's top-k plus one tail bucket (module docstring), and p_T.

    ref_idx / ref_logp (T, k), ref_tail_logp (T,): the stored reference; q_logp (T, V): the quantized
    log-softmax. A lower bound on the exact KL; equal to it when k = V.
    """
    idx = np.asarray(ref_idx).astype(np.int64)
    lp = np.asarray(ref_logp, dtype=np.float64)
    lpt = np.asarray(ref_tail_logp, dtype=np.float64)
    lqs = np.take_along_axis(np.asarray(q_logp, dtype=np.float64), idx, -1)
    head = _kl_rows(lp, lqs)  # sum_S p (log p - log q); no normalisation needed
    rest = np.array(q_logp, dtype=np.float64, copy=True)
    np.put_along_axis(rest, idx, -np.inf, -1)
    lqt = _logsumexp(rest) if rest.shape[-1] > idx.shape[-1] else np.full(lp.shape[0], -np.inf)
    pt = np.exp(lpt)
    with np.errstate(invalid="ignore"):
        tail = np.where(pt > 0, pt * (lpt - lqt), 0.0)
    return head + tail, pt


# ---------------------------------------------------------------------------------------- compare
def _lm_compare(ref: LMOutputs, q: LMOutputs, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                block_len: int | None = None) -> dict:
    if ref.n_tokens != q.n_tokens or not np.array_equal(ref.targets, q.targets) \
            or not np.array_equal(ref.window, q.window):
        raise ValueError("reference and quantized outputs cover different tokens/windows")
    out = {"n_tokens": ref.n_tokens, "agreement": None, "kl": None, "kl_exact": q.kl_exact, "kl_tail_mass_mean": None,
           "top1_ref": None, "top1_q": None, "ppl_ref": None, "ppl_q": None, "ppl_ratio": None, "ppl_delta": None,
           "ppl_bootstrap": None, "n_windows": 0}
    if ref.n_tokens == 0:
        return out
    t = ref.targets
    out.update(agreement=float(100.0 * np.mean(ref.top1 == q.top1)), top1_ref=float(100.0 * np.mean(ref.top1 == t)),
               top1_q=float(100.0 * np.mean(q.top1 == t)))
    if q.kl is not None:
        out["kl"] = float(np.mean(q.kl))
        out["kl_tail_mass_mean"] = float(np.mean(q.kl_tail_mass)) if q.kl_tail_mass is not None else None
    bs, tok = ref.window_sums()
    qs, _ = q.window_sums()
    boot = block_bootstrap_ppl(bs, qs, tok, block_len=block_len, n_boot=n_boot, seed=seed, alpha=alpha)
    out.update(ppl_ref=boot["ppl_base"], ppl_q=boot["ppl_other"], ppl_ratio=boot["ratio"], ppl_delta=boot["delta"],
               ppl_bootstrap=boot, n_windows=boot["n_windows"])
    return out


def compare(reference_outputs, quantized_outputs, **bootstrap) -> dict:
    """Fidelity dict of quantized vs reference outputs (ClassifierOutputs or LMOutputs, one kind both).

    Classifiers: classifier_fidelity (labels from the reference, checked against the quantized
    run's when both have them). LMs: n_tokens, agreement (% next-token top-1 equal), kl (mean
    per-token KL(ref||q); None when the quantized run had no reference), kl_exact, kl_tail_mass_mean,
    top1_ref/top1_q (%), ppl_ref, ppl_q, ppl_ratio (q/ref), ppl_delta (q - ref) and ppl_bootstrap
    (utils.stats.block_bootstrap_ppl over windows; bootstrap kwargs: n_boot, seed, alpha, block_len).
    """
    r, q = reference_outputs, quantized_outputs
    if isinstance(r, ClassifierOutputs) and isinstance(q, ClassifierOutputs):
        if r.labels is not None and q.labels is not None and not np.array_equal(r.labels, q.labels):
            raise ValueError("reference and quantized runs scored different labels")
        return classifier_fidelity(r.logits, q.logits, r.labels if r.labels is not None else q.labels)
    if isinstance(r, LMOutputs) and isinstance(q, LMOutputs):
        return _lm_compare(r, q, **bootstrap)
    raise TypeError(f"compare needs two outputs of one kind, got {type(r).__name__} and {type(q).__name__}")


# ------------------------------------------------------------------------------------- save / load
def save_outputs(path: Path | str, outputs, *, logits_dtype: str = "float32", meta: dict | None = None) -> Path:
    """Write ClassifierOutputs / LMOutputs to a compressed .npz atomically (utils.atomic).

    logits_dtype ('float32' or 'float16') applies to classifier logits only; LM top-k log-probs are
    always float32 (float16 steps of ~0.004 nats near log p = -5 would swamp a KL of ~0.01).
    meta: JSON-able provenance (model, weights, eval_sha, ...) stored alongside.
    """
    arrays: dict[str, np.ndarray] = {}
    info = {"version": FORMAT_VERSION, "kind": outputs.kind, "meta": meta or {}}
    if isinstance(outputs, ClassifierOutputs):
        arrays["logits"] = np.asarray(outputs.logits).astype(np.dtype(logits_dtype))
        if outputs.labels is not None:
            arrays["labels"] = np.asarray(outputs.labels)
    elif isinstance(outputs, LMOutputs):
        for f in fields(outputs):
            v = getattr(outputs, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            else:
                info[f.name] = v
    else:
        raise TypeError(f"cannot save {type(outputs).__name__}")
    arrays["__info__"] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_outputs(path: Path | str) -> ClassifierOutputs | LMOutputs:
    """Read what save_outputs wrote (no pickle). The provenance is on the result's `.meta` attribute."""
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(z["__info__"].tobytes().decode())
        if info.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: outputs format {info.get('version')}, this code reads {FORMAT_VERSION}")
        arrays = {k: z[k] for k in z.files if k != "__info__"}
    if info["kind"] == "classifier":
        out = ClassifierOutputs(logits=arrays["logits"], labels=arrays.get("labels"))
    elif info["kind"] == "lm":
        names = {f.name for f in fields(LMOutputs)}
        kw = {k: v for k, v in arrays.items() if k in names}
        kw.update({k: info[k] for k in ("kl_exact", "vocab") if k in info})
        out = LMOutputs(**kw)
    else:
        raise ValueError(f"{path}: unknown outputs kind {info['kind']!r}")
    out.meta = info.get("meta", {})
    return out
