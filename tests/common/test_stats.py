import numpy as np
import pytest

from utils.stats import bootstrap_ppl_delta, mcnemar_exact


def test_mcnemar_exact_known_values():
    base = np.array([True] * 100)
    other = base.copy()
    other[:10] = False  # 10 discordant pairs, all against the quantized model
    t = mcnemar_exact(base, other)
    assert (t["n_base_only"], t["n_other_only"]) == (10, 0)
    assert t["p_value"] == pytest.approx(2 * 0.5 ** 10)  # two-sided exact binomial
    one = base.copy()
    one[0] = False
    assert mcnemar_exact(base, one)["p_value"] == pytest.approx(1.0)  # a single flip is not evidence
    assert mcnemar_exact(base, base)["p_value"] == 1.0


def test_bootstrap_flags_real_shift_and_not_noise():
    rng = np.random.default_rng(0)
    tokens = np.full(200, 64)
    base = rng.normal(3.0, 0.2, 200) * tokens
    same = bootstrap_ppl_delta(base, base, tokens)
    assert same["delta"] == 0 and not same["significant"]
    worse = bootstrap_ppl_delta(base, base + 0.2 * tokens, tokens)
    assert worse["significant"] and worse["ci_low"] > 0
    assert worse["delta"] == pytest.approx(np.exp(base.sum() / tokens.sum() + 0.2) - np.exp(base.sum() / tokens.sum()))
