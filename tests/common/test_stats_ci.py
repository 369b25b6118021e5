"""utils.stats: the ports equal the old evaluation/stats.py, block bootstrap and paired speedup CIs (NumPy)."""
import math

import numpy as np
import pytest

from utils.stats import (binom_two_sided_p, block_bootstrap_ppl, bootstrap_ppl_delta, mcnemar_exact,
                         relative_width, speedup_ci, widest_interval)


# --------------------------------------------------------------------------- ports are identical
def _old_bootstrap_ppl_delta(base_nll, other_nll, tokens, *, n_boot=2000, seed=0, alpha=0.05):
    """evaluation/stats.py before this branch, verbatim."""
    bn, on, t = (np.asarray(a, dtype=np.float64) for a in (base_nll, other_nll, tokens))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, bn.size, size=(n_boot, bn.size))
    tt = t[idx].sum(1)
    d = np.exp(on[idx].sum(1) / tt) - np.exp(bn[idx].sum(1) / tt)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    point = float(np.exp(on.sum() / t.sum()) - np.exp(bn.sum() / t.sum()))
    return {"test": "paired-bootstrap-windows", "delta": point, "ci_low": float(lo), "ci_high": float(hi),
            "n_boot": n_boot, "significant": bool(lo > 0 or hi < 0)}


def test_bootstrap_ppl_delta_port_is_bit_identical():
    rng = np.random.default_rng(3)
    tokens = rng.integers(100, 512, 57)
    base = rng.normal(3.0, 0.3, 57) * tokens
    other = base + rng.normal(0.02, 0.05, 57) * tokens
    assert bootstrap_ppl_delta(base, other, tokens) == _old_bootstrap_ppl_delta(base, other, tokens)
    assert bootstrap_ppl_delta(base, other, tokens, n_boot=300, seed=7, alpha=0.1) == \
        _old_bootstrap_ppl_delta(base, other, tokens, n_boot=300, seed=7, alpha=0.1)


def test_one_significance_module():
    """evaluation/stats.py is gone: every caller uses utils.stats."""
    from utils.paths import REPO_ROOT

    assert not (REPO_ROOT / "evaluation" / "stats.py").exists()
    for p in list((REPO_ROOT / "evaluation").rglob("*.py")) + list((REPO_ROOT / "quantization").rglob("*.py")):
        assert "evaluation.stats" not in p.read_text(), p


@pytest.mark.parametrize("k,n", [(0, 1), (0, 10), (3, 10), (5, 10), (4, 9), (17, 60), (120, 301), (0, 2000),
                                 (950, 2000)])
def test_exact_binomial_equals_scipy(k, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert binom_two_sided_p(k, n) == pytest.approx(scipy_stats.binomtest(k, n, 0.5).pvalue, rel=1e-12, abs=1e-300)
    assert binom_two_sided_p(n - k, n) == binom_two_sided_p(k, n)  # symmetric


def test_mcnemar_known_values_without_scipy():
    base = np.ones(100, bool)
    other = base.copy()
    other[:10] = False
    other_gain = ~base.copy()
    t = mcnemar_exact(base, other)
    assert (t["n_base_only"], t["n_other_only"]) == (10, 0)
    assert t["p_value"] == 2 * 0.5 ** 10
    assert mcnemar_exact(base, base)["p_value"] == 1.0
    assert mcnemar_exact(other_gain, other_gain)["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(base, base[:5])


# ---------------------------------------------------------------------------- block bootstrap
def _ar1_windows(n, rho, rng, sd=0.3):
    e = np.empty(n)
    e[0] = rng.normal(0, sd)
    for i in range(1, n):
        e[i] = rho * e[i - 1] + math.sqrt(1 - rho ** 2) * rng.normal(0, sd)
    return e


def test_block_bootstrap_is_wider_on_autocorrelated_windows():
    rng = np.random.default_rng(0)
    n, tok = 240, 128
    tokens = np.full(n, tok)
    base_mean = 3.0 + 0.3 * rng.standard_normal(n)
    delta_mean = 0.05 + _ar1_windows(n, 0.9, rng, sd=0.05)  # the quantization damage drifts slowly over the text
    base, other = base_mean * tokens, (base_mean + delta_mean) * tokens
    iid = block_bootstrap_ppl(base, other, tokens, block_len=1)
    blk = block_bootstrap_ppl(base, other, tokens, block_len=12)
    w_iid = iid["ratio_ci_high"] - iid["ratio_ci_low"]
    w_blk = blk["ratio_ci_high"] - blk["ratio_ci_low"]
    assert w_blk > 1.8 * w_iid  # AR(1) rho=.9: the iid interval is about sqrt((1+rho)/(1-rho)) ~ 4x too narrow
    for r in (iid, blk):
        assert r["ratio"] == pytest.approx(math.exp(other.sum() / tokens.sum() - base.sum() / tokens.sum()))
        assert r["ratio_ci_low"] < r["ratio"] < r["ratio_ci_high"]
        assert r["ci_low"] < r["delta"] < r["ci_high"]
    # the iid window bootstrap draws the same resamples as bootstrap_ppl_delta -> identical delta CI
    old = bootstrap_ppl_delta(base, other, tokens)
    assert (iid["ci_low"], iid["ci_high"], iid["delta"]) == pytest.approx((old["ci_low"], old["ci_high"], old["delta"]))


def test_block_bootstrap_on_independent_windows_matches_iid():
    rng = np.random.default_rng(1)
    n = 400
    tokens = np.full(n, 64)
    base = rng.normal(3.0, 0.3, n) * tokens
    other = base + rng.normal(0.01, 0.05, n) * tokens
    w = [block_bootstrap_ppl(base, other, tokens, block_len=L, n_boot=4000) for L in (1, 8)]
    widths = [r["ratio_ci_high"] - r["ratio_ci_low"] for r in w]
    assert widths[1] == pytest.approx(widths[0], rel=0.2)  # no correlation -> blocks change little
    same = block_bootstrap_ppl(base, base, tokens)
    assert same["ratio"] == 1.0 and same["delta"] == 0.0 and not same["significant"]
    assert same["block_len"] == round(n ** (1 / 3))


# --------------------------------------------------------------------------------- speedup CIs
def _drifting_trials(seed=0, n_trials=30, k=20, true_ratio=2.0, drift_sd=0.3, noise_sd=0.02):
    rng = np.random.default_rng(seed)
    drift = np.exp(rng.normal(0, drift_sd, n_trials))[:, None]  # machine state of trial i, shared by both blocks
    base = 10.0 * drift * np.exp(rng.normal(0, noise_sd, (n_trials, k)))
    var = 10.0 / true_ratio * drift * np.exp(rng.normal(0, noise_sd, (n_trials, k)))
    return base, var


def test_paired_speedup_ci_cancels_common_drift():
    """Fails if the pairing is dropped: with +-30% drift across trials only joint resampling is narrow."""
    base, var = _drifting_trials()
    p, lo, hi = speedup_ci(base, var, paired=True)
    up, ulo, uhi = speedup_ci(base, var, paired=False)
    assert p == up == pytest.approx(np.median(base) / np.median(var))
    assert lo <= 2.0 <= hi and lo <= p <= hi
    assert relative_width(p, lo, hi) < 0.05  # an unpaired bootstrap is ~0.5 wide on this data
    assert (hi - lo) < 0.25 * (uhi - ulo)
    assert ulo <= 2.0 <= uhi


def test_paired_speedup_ci_coverage_over_seeds():
    hits = sum(lo <= 2.0 <= hi for lo, hi in (speedup_ci(*_drifting_trials(seed=s), n_boot=500)[1:] for s in range(20)))
    assert hits >= 16  # nominal 95%: 19 of 20 expected


def test_speedup_ci_input_forms_and_errors():
    base, var = _drifting_trials(n_trials=8, k=5)
    ragged_b = [row[: 3 + i % 3] for i, row in enumerate(base)]
    ragged_v = [row[: 5 - i % 2] for i, row in enumerate(var)]
    p, lo, hi = speedup_ci(ragged_b, ragged_v, n_boot=200)
    assert p == pytest.approx(np.median(np.concatenate(ragged_b)) / np.median(np.concatenate(ragged_v)))
    assert lo <= p <= hi
    one = speedup_ci(base[:, 0], var[:, 0], n_boot=200)  # one sample per trial
    assert one[0] == pytest.approx(np.median(base[:, 0]) / np.median(var[:, 0]))
    assert speedup_ci(base, var, n_boot=200) == speedup_ci(base.tolist(), var.tolist(), n_boot=200)
    with pytest.raises(ValueError):
        speedup_ci(base, var[:5])  # paired needs the same trials
    # unpaired: 8 baseline trials against 5 variant trials, each side resampled on its own
    p, lo, hi = speedup_ci(base, var[:5], paired=False, n_boot=400)
    assert p == pytest.approx(np.median(base) / np.median(var[:5]))
    assert lo < p < hi and lo < 2.0 < hi  # the true ratio of _drifting_trials
    # resampled apart, the +-30 % drift between trials no longer cancels: far wider than the paired interval
    _, plo, phi = speedup_ci(base[:5], var[:5], paired=True, n_boot=400)
    _, ulo, uhi = speedup_ci(base[:5], var[:5], paired=False, n_boot=400)
    assert (uhi - ulo) > 5 * (phi - plo)


def test_widest_interval_picks_the_noisiest_row():
    quiet = _drifting_trials(seed=1, noise_sd=0.01)
    noisy = _drifting_trials(seed=2, noise_sd=0.2)
    key, widths = widest_interval({"quiet": quiet, "noisy": noisy}, n_boot=300)
    assert key == "noisy" and widths["noisy"] > 3 * widths["quiet"]
    key, widths = widest_interval({"quiet": quiet, "new": (quiet[0][:2], quiet[1][:2])}, n_boot=300)
    assert key == "new" and widths["new"] == math.inf
    assert widest_interval({}) == (None, {})
    assert relative_width(0.0, -1, 1) == math.inf
