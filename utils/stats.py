"""Is a difference real? The suite's one significance module (NumPy + the standard library only).

Paired tests on the same evaluation samples and intervals for latency ratios:

- `mcnemar_exact`: classifiers, per-sample correctness of the FP32 and the quantized model (only the
  discordant pairs carry information; exact two-sided binomial test with p = 0.5, computed with
  Python integers, so it needs no SciPy and equals `scipy.stats.binomtest(...).pvalue`).
- `bootstrap_ppl_delta`: language models, paired bootstrap over evaluation windows (iid windows) of
  ppl(other) - ppl(base); bit-for-bit the function evaluation/stats.py always had.
- `block_bootstrap_ppl`: the same with a moving-block bootstrap over *consecutive* windows, for
  strided evaluation where adjacent windows share context (correlated): gives the CI of both the
  perplexity ratio and the delta.
- `speedup_ci`: CI of the ratio of medians base/variant from latency samples taken in interleaved
  trials; the paired mode resamples trial indices jointly so drift common to both cancels.
- `widest_interval`: which row to spend the remaining timing budget on.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["binom_two_sided_p", "mcnemar_exact", "bootstrap_ppl_delta", "block_bootstrap_ppl", "speedup_ci",
           "repeated_speedup_ci", "relative_width", "widest_interval"]


# ------------------------------------------------------------------------------------------ McNemar
def binom_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n Bernoulli(1/2) trials (symmetric: 2 * P(X <= min))."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    k = min(k, n - k)
    c, tail = 1, 0
    for i in range(k + 1):  # sum of C(n, i), exact integers
        tail += c
        c = c * (n - i) // (i + 1)
    return min(1.0, 2 * tail / (1 << n))  # int / int is correctly rounded in Python


def mcnemar_exact(base_correct: np.ndarray, other_correct: np.ndarray) -> dict:
    b = np.asarray(base_correct, dtype=bool)
    o = np.asarray(other_correct, dtype=bool)
    if b.shape != o.shape:
        raise ValueError("paired test needs the same samples")
    n01 = int((b & ~o).sum())  # baseline right, quantized wrong
    n10 = int((~b & o).sum())  # baseline wrong, quantized right
    n = n01 + n10
    p = 1.0 if n == 0 else binom_two_sided_p(min(n01, n10), n)
    return {"test": "mcnemar-exact", "n_base_only": n01, "n_other_only": n10, "p_value": p}


# ------------------------------------------------------------------------------- perplexity deltas
def bootstrap_ppl_delta(base_nll, other_nll, tokens, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """95% CI of ppl(other) - ppl(base) resampling windows (paired: same windows for both)."""
    bn, on, t = (np.asarray(a, dtype=np.float64) for a in (base_nll, other_nll, tokens))
    if not (bn.shape == on.shape == t.shape):
        raise ValueError("paired bootstrap needs the same windows")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, bn.size, size=(n_boot, bn.size))
    tt = t[idx].sum(1)
    d = np.exp(on[idx].sum(1) / tt) - np.exp(bn[idx].sum(1) / tt)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    point = float(np.exp(on.sum() / t.sum()) - np.exp(bn.sum() / t.sum()))
    return {"test": "paired-bootstrap-windows", "delta": point, "ci_low": float(lo), "ci_high": float(hi),
            "n_boot": n_boot, "significant": bool(lo > 0 or hi < 0)}


def _block_indices(n: int, block_len: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) indices of a moving-block bootstrap: ceil(n/L) random starts, L consecutive each, cut to n."""
    n_blocks = -(-n // block_len)
    starts = rng.integers(0, n - block_len + 1, size=(n_boot, n_blocks))
    return (starts[:, :, None] + np.arange(block_len)).reshape(n_boot, -1)[:, :n]


def block_bootstrap_ppl(base_nll, other_nll, tokens, *, block_len: int | None = None, n_boot: int = 2000,
                        seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired moving-block bootstrap over consecutive windows of ppl(other)/ppl(base) and ppl(other) - ppl(base).

    base_nll, other_nll: per-window *summed* NLL (nats) of the same tokens; tokens: scored tokens per
    window, in evaluation order. Whole windows are resampled (every token of a window moves with it,
    so correlation between the tokens of a window is kept), and with block_len > 1 runs of block_len
    consecutive windows are resampled together, so correlation between adjacent (overlapping/strided)
    windows does not shrink the interval either. block_len=None picks round(n ** (1/3)) (>= 1);
    block_len=1 is the iid window bootstrap. Percentile intervals.
    """
    bn, on, t = (np.asarray(a, dtype=np.float64).ravel() for a in (base_nll, other_nll, tokens))
    if not (bn.shape == on.shape == t.shape) or bn.size == 0:
        raise ValueError("paired bootstrap needs the same, non-empty windows")
    n = bn.size
    if block_len is None:
        block_len = max(1, round(n ** (1 / 3)))
    block_len = int(min(max(1, block_len), n))
    rng = np.random.default_rng(seed)
    idx = _block_indices(n, block_len, n_boot, rng)
    tt = t[idx].sum(1)
    mb, mo = bn[idx].sum(1) / tt, on[idx].sum(1) / tt  # mean NLL per token of each resample
    ratio = np.exp(mo - mb)
    delta = np.exp(mo) - np.exp(mb)
    q = [alpha / 2, 1 - alpha / 2]
    (rlo, rhi), (dlo, dhi) = np.quantile(ratio, q), np.quantile(delta, q)
    pb, po = bn.sum() / t.sum(), on.sum() / t.sum()
    return {"test": "paired-block-bootstrap-windows", "ppl_base": float(np.exp(pb)), "ppl_other": float(np.exp(po)),
            "ratio": float(np.exp(po - pb)), "ratio_ci_low": float(rlo), "ratio_ci_high": float(rhi),
            "delta": float(np.exp(po) - np.exp(pb)), "ci_low": float(dlo), "ci_high": float(dhi),
            "block_len": block_len, "n_windows": n, "n_boot": n_boot, "alpha": alpha,
            "significant": bool(dlo > 0 or dhi < 0)}


# --------------------------------------------------------------------------------- latency ratios
def _as_trials(x) -> np.ndarray:
    """Latency samples -> (n_trials, k) float array padded with NaN.

    1-D array: one sample per trial; 2-D array: one row per trial; a sequence of 1-D arrays: one
    (possibly ragged) array per trial.
    """
    if isinstance(x, np.ndarray) and x.ndim <= 2:
        a = np.asarray(x, dtype=np.float64)
        return a.reshape(-1, 1) if a.ndim == 1 else a
    rows = [np.asarray(r, dtype=np.float64).ravel() for r in x]
    if all(r.size == 1 for r in rows):
        return np.array([r[0] for r in rows]).reshape(-1, 1)
    k = max((r.size for r in rows), default=0)
    out = np.full((len(rows), k), np.nan)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def _median_of_trials(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Median of the pooled samples of trials idx (n_boot, n_trials) -> (n_boot,)."""
    pooled = a[idx].reshape(idx.shape[0], -1)
    return np.nanmedian(pooled, axis=1) if np.isnan(pooled).any() else np.median(pooled, axis=1)


def speedup_ci(base_samples_ms, samples_ms, *, paired: bool = True, n_boot: int = 2000, seed: int = 0,
               conf: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high) of the speedup median(base) / median(variant), percentile bootstrap.

    Samples come per trial: trial i timed a block of the FP32 baseline and then a block of the variant
    (interleaved), so both see the same machine state. Pass a 1-D array (one sample per trial), a 2-D
    (n_trials, k) array, or a list of per-trial arrays (ragged allowed); NaN entries are ignored.

    paired=True (interleaved trials): the same resampled trial indices are used for base and variant,
    so drift common to both within a trial (thermal, other load, frequency) cancels in the ratio.
    Needs the same number of trials on both sides.
    paired=False: base and variant trials are resampled independently (cluster bootstrap over each
    side's own trials; with 1-D input each sample is its own trial, i.e. an iid bootstrap).
    """
    b, v = _as_trials(base_samples_ms), _as_trials(samples_ms)
    if b.size == 0 or v.size == 0:
        raise ValueError("speedup_ci needs samples on both sides")
    point = float(np.nanmedian(b) / np.nanmedian(v))
    rng = np.random.default_rng(seed)
    if paired:
        if b.shape[0] != v.shape[0]:
            raise ValueError(f"paired speedup_ci needs the same trials: {b.shape[0]} base vs {v.shape[0]} variant")
        ib = iv = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    else:
        ib = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
        iv = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
    ratios = _median_of_trials(b, ib) / _median_of_trials(v, iv)
    alpha = 1.0 - conf
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def _boot_ratios(b: np.ndarray, v: np.ndarray, paired: bool, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    if paired:
        ib = iv = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    else:
        ib = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
        iv = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
    return _median_of_trials(b, ib) / _median_of_trials(v, iv)


def repeated_speedup_ci(passes, *, paired: bool = True, n_boot: int = 2000, seed: int = 0,
                        conf: float = 0.95) -> dict:
    """A speedup measured in several independent runs (passes): within each, median(base) / median(variant) from
    its own trials; across them, the geometric mean. The interval is a two-level bootstrap: resample the passes
    (the between-run spread: another run of the same plan lands elsewhere), and within each drawn pass its trials
    (paired or not, as `speedup_ci`); so it is at least as wide as the runs disagree. With one pass it is that
    pass's own interval.

    passes: [(base_samples, variant_samples), ...], each as accepted by speedup_ci. Returns {"point", "low", "high",
    "per_pass": [point of each pass], "spread": max/min of the per-pass points, "passes": n}."""
    arrs = [(_as_trials(b), _as_trials(v)) for b, v in passes]
    if not arrs or any(b.size == 0 or v.size == 0 for b, v in arrs):
        raise ValueError("repeated_speedup_ci needs samples on both sides of every pass")
    if paired and any(b.shape[0] != v.shape[0] for b, v in arrs):
        raise ValueError("paired passes need the same trials on both sides")
    per = np.array([np.nanmedian(b) / np.nanmedian(v) for b, v in arrs])
    rng = np.random.default_rng(seed)
    ratios = np.stack([_boot_ratios(b, v, paired, n_boot, rng) for b, v in arrs])  # (passes, n_boot)
    k = len(arrs)
    if k == 1:
        comb = ratios[0]
    else:
        pick = rng.integers(0, k, size=(n_boot, k))  # passes drawn with replacement, per bootstrap replicate
        col = (np.arange(n_boot)[:, None] + np.arange(k)[None, :] * 7919) % n_boot  # a fresh replicate per draw
        comb = np.exp(np.log(ratios[pick, col]).mean(axis=1))
    alpha = 1.0 - conf
    lo, hi = np.quantile(comb, [alpha / 2, 1 - alpha / 2])
    point = float(np.exp(np.log(per).mean()))
    return {"point": point, "low": float(min(lo, point)), "high": float(max(hi, point)),
            "per_pass": [float(x) for x in per], "spread": float(per.max() / per.min()), "passes": k}


def relative_width(point: float, low: float, high: float) -> float:
    """(high - low) / |point|; inf when the point is 0 or not finite."""
    if not math.isfinite(point) or point == 0:
        return math.inf
    return float((high - low) / abs(point))


def widest_interval(rows: Mapping[Hashable, tuple[Sequence, Sequence]], *, paired: bool = True, n_boot: int = 1000,
                    seed: int = 0, conf: float = 0.95, min_trials: int = 3) -> tuple[Hashable | None, dict]:
    """Which row's speedup interval is widest (relative width): spend the remaining timing budget there.

    rows: key -> (base_samples_ms, samples_ms) as accepted by speedup_ci. A row with fewer than
    min_trials trials on either side has width inf (it needs trials before its interval means
    anything); ties go to the first such key in iteration order. Returns (key or None when rows is
    empty, {key: relative width}).
    """
    widths: dict = {}
    for key, (base, var) in rows.items():
        b, v = _as_trials(base), _as_trials(var)
        if min(b.shape[0], v.shape[0]) < min_trials or (paired and b.shape[0] != v.shape[0]):
            widths[key] = math.inf
            continue
        widths[key] = relative_width(*speedup_ci(b, v, paired=paired, n_boot=n_boot, seed=seed, conf=conf))
    if not widths:
        return None, widths
    best = max(widths, key=lambda k: widths[k])  # max keeps the first of equal widths
    return best, widths
