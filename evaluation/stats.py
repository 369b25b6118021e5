"""Is a difference real? Paired tests on the same evaluation samples (NumPy/SciPy).

- Classifiers: McNemar's exact test on per-sample correctness of the FP32 and quantized models
  (only the discordant pairs carry information; two-sided binomial test with p = 0.5).
- Language models: paired bootstrap over evaluation windows of the perplexity difference.
"""
from __future__ import annotations

import numpy as np


def mcnemar_exact(base_correct: np.ndarray, other_correct: np.ndarray) -> dict:
    b = np.asarray(base_correct, dtype=bool)
    o = np.asarray(other_correct, dtype=bool)
    if b.shape != o.shape:
        raise ValueError("paired test needs the same samples")
    n01 = int((b & ~o).sum())  # baseline right, quantized wrong
    n10 = int((~b & o).sum())  # baseline wrong, quantized right
    n = n01 + n10
    if n == 0:
        p = 1.0
    else:
        from scipy.stats import binomtest

        p = float(binomtest(min(n01, n10), n, 0.5).pvalue)
    return {"test": "mcnemar-exact", "n_base_only": n01, "n_other_only": n10, "p_value": p}


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
