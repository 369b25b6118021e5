"""utils.fidelity: classifier and LM fidelity, top-k KL across processes, save/load (NumPy; report env)."""
import math

import numpy as np
import pytest

from utils.fidelity import (SQNR_CAP_DB, ClassifierOutputs, LMFidelity, LMOutputs, classifier_fidelity, compare,
                            kl_mean, load_outputs, log_softmax, save_outputs, sqnr_db, topk_kl)


def _direct_kl(a, b):
    """KL(softmax(a) || softmax(b)) per row, textbook form (scipy when present)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    p = np.exp(a - a.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    q = np.exp(b - b.max(-1, keepdims=True)); q /= q.sum(-1, keepdims=True)
    try:
        from scipy.special import rel_entr

        return rel_entr(p, q).sum(-1)
    except ImportError:
        return (p * np.log(p / q)).sum(-1)


# -------------------------------------------------------------------------------------- classifiers
def test_identical_logits_are_perfect():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 10)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    f = classifier_fidelity(x, x.copy(), y)
    assert f["agreement"] == 100.0 and f["kl"] == 0.0 and f["flips_lost"] == 0 and f["flips_gained"] == 0
    assert f["sqnr_db"] == SQNR_CAP_DB and f["mcnemar_p"] == 1.0 and f["top1_ref"] == f["top1_q"]
    assert f["n"] == 50


def test_known_perturbation_gives_known_sqnr():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1.0, (400, 100))
    noise = rng.normal(0, 0.1, ref.shape)  # 20 dB below the signal
    assert sqnr_db(ref, ref + noise) == pytest.approx(20.0, abs=0.1)
    assert sqnr_db(ref, ref * 1.01) == pytest.approx(40.0, abs=1e-9)  # error = 1% of ref exactly
    assert sqnr_db(np.zeros(3), np.ones(3)) == -SQNR_CAP_DB
    assert sqnr_db(np.zeros(3), np.zeros(3)) == SQNR_CAP_DB
    assert classifier_fidelity(ref, ref + noise)["sqnr_db"] == pytest.approx(20.0, abs=0.1)


def test_kl_matches_direct_computation_and_is_stable():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 3, (64, 30))
    b = a + rng.normal(0, 0.5, a.shape)
    assert kl_mean(a, b) == pytest.approx(np.mean(_direct_kl(a, b)), rel=1e-10)
    assert kl_mean(a + 1e4, b - 1e4) == pytest.approx(kl_mean(a, b), rel=1e-9)  # shift-invariant, no overflow
    assert classifier_fidelity(a.astype(np.float32), b.astype(np.float32))["kl"] == \
        pytest.approx(np.mean(_direct_kl(a.astype(np.float32), b.astype(np.float32))), rel=1e-6)
    lp = log_softmax(a)
    assert np.allclose(np.exp(lp).sum(-1), 1.0)


def test_flips_and_agreement_counts():
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1]] * 5.0  # FP32 predicts 0 1 2 3 0 1
    q = np.eye(4)[[0, 2, 2, 3, 1, 1]] * 5.0   # quantized predicts 0 2 2 3 1 1
    y = np.array([0, 1, 2, 0, 1, 1])          # FP32 right on 0,1,2,5; quantized right on 0,2,4,5
    f = classifier_fidelity(ref, q, y)
    assert f["agreement"] == pytest.approx(100 * 4 / 6)
    assert (f["flips_lost"], f["flips_gained"]) == (1, 1)
    assert f["top1_ref"] == pytest.approx(100 * 4 / 6) and f["top1_q"] == pytest.approx(100 * 4 / 6)
    assert classifier_fidelity(ref, q)["flips_lost"] is None
    with pytest.raises(ValueError):
        classifier_fidelity(ref, q[:3])


def test_classifier_outputs_roundtrip_across_processes(tmp_path):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(20, 5)).astype(np.float32)
    q = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    y = rng.integers(0, 5, 20)
    p = save_outputs(tmp_path / "fp32.npz", ClassifierOutputs(ref, y), meta={"model": "m"})
    back = load_outputs(p)
    assert isinstance(back, ClassifierOutputs) and back.meta == {"model": "m"}
    assert compare(back, ClassifierOutputs(q, y)) == classifier_fidelity(ref, q, y)
    half = load_outputs(save_outputs(tmp_path / "h.npz", ClassifierOutputs(ref, y), logits_dtype="float16"))
    assert half.logits.dtype == np.float16
    assert compare(half, ClassifierOutputs(q, y))["agreement"] == classifier_fidelity(ref, q, y)["agreement"]
    with pytest.raises(ValueError):
        compare(back, ClassifierOutputs(q, (y + 1) % 5))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


# ----------------------------------------------------------------------------------------- LMs
V = 300


def _lm_windows(seed=0, n_windows=6, T=40, noise=0.3):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 2.0, (n_windows, T, V)).astype(np.float32)
    q = (ref + rng.normal(0, noise, ref.shape)).astype(np.float32)
    targets = rng.integers(0, V, (n_windows, T))
    mask = np.ones((n_windows, T), bool)
    mask[1:, : T // 2] = False  # strided evaluation: context-only tokens are not scored
    return ref, q, targets, mask


def test_lm_identical_logits():
    ref, _, tg, mask = _lm_windows()
    acc = LMFidelity()
    for w in range(ref.shape[0]):
        acc.update(ref[w], ref[w].copy(), tg[w], mask[w])
    r = acc.result(n_boot=200)
    assert r["agreement"] == 100.0 and r["kl"] == 0.0 and r["kl_exact"] is True
    assert r["ppl_ratio"] == 1.0 and r["ppl_delta"] == 0.0 and r["n_tokens"] == int(mask.sum())
    assert r["n_windows"] == ref.shape[0]


def test_lm_in_process_numbers_match_direct():
    ref, q, tg, mask = _lm_windows()
    acc = LMFidelity(topk=16)
    acc.update(ref[:3], q[:3], tg[:3], mask[:3])  # batch of windows ...
    for w in range(3, ref.shape[0]):                # ... or one at a time
        acc.update(ref[w], q[w], tg[w], mask[w])
    r = acc.result(n_boot=300)
    R, Q, T = ref[mask], q[mask], tg[mask]
    lr, lq = log_softmax(R), log_softmax(Q)
    nll_r, nll_q = -lr[np.arange(T.size), T], -lq[np.arange(T.size), T]
    assert r["agreement"] == pytest.approx(100 * np.mean(R.argmax(1) == Q.argmax(1)))
    assert r["kl"] == pytest.approx(np.mean(_direct_kl(R, Q)), rel=1e-9)
    assert r["ppl_ref"] == pytest.approx(math.exp(nll_r.mean()))
    assert r["ppl_ratio"] == pytest.approx(math.exp(nll_q.mean() - nll_r.mean()))
    assert r["ppl_delta"] == pytest.approx(math.exp(nll_q.mean()) - math.exp(nll_r.mean()))
    b = r["ppl_bootstrap"]
    assert b["ratio_ci_low"] <= r["ppl_ratio"] <= b["ratio_ci_high"] and b["n_windows"] == 6
    ro = acc.reference_outputs()
    assert np.allclose(ro.nll, nll_r) and ro.topk_idx.shape == (T.size, 16) and ro.topk_idx.dtype == np.uint16
    sums, tok = ro.window_sums()
    assert tok.tolist() == mask.sum(1).tolist() and sums.sum() == pytest.approx(nll_r.sum())


def test_topk_kl_is_a_lower_bound_exact_at_full_vocab():
    rng = np.random.default_rng(5)
    a = rng.normal(0, 3, (200, V))
    b = a + rng.normal(0, 0.4, a.shape)
    lp, lq = log_softmax(a), log_softmax(b)
    exact = _direct_kl(a, b)
    from utils.fidelity import _topk

    prev = np.zeros(200)
    for k in (4, 32, 128, V):
        idx, top, tail = _topk(lp, k)
        kl, pt = topk_kl(idx, top, tail, lq)
        assert np.all(kl <= exact + 1e-12) and np.all(kl >= prev - 1e-12)  # monotone in k (finer partition)
        # the gap is exactly p_T * KL(P|T || Q|T)
        rest = np.ones_like(lp, bool)
        np.put_along_axis(rest, idx, False, -1)
        if k < V:
            pT = np.where(rest, np.exp(lp), 0).sum(1)
            qT = np.where(rest, np.exp(lq), 0).sum(1)
            pc = np.where(rest, np.exp(lp), 0) / pT[:, None]
            qc = np.where(rest, np.exp(lq), 0) / qT[:, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                within = np.where(rest, pc * np.log(np.where(rest, pc / qc, 1.0)), 0).sum(1)
            assert np.allclose(exact - kl, pT * within, atol=1e-10)
            assert np.allclose(pt, pT)
        prev = kl
    assert np.allclose(kl, exact, rtol=1e-10)  # k = V


def test_lm_cross_process_via_npz(tmp_path):
    ref, q, tg, mask = _lm_windows(seed=7)
    both = LMFidelity(topk=64)
    fp32 = LMFidelity(topk=64)
    for w in range(ref.shape[0]):
        both.update(ref[w], q[w], tg[w], mask[w])
        fp32.update(ref_logits=ref[w], targets=tg[w], mask=mask[w])  # FP32 process: reference only
    path = save_outputs(tmp_path / "ref.npz", fp32.reference_outputs(), meta={"eval_sha": "x"})
    reference = load_outputs(path)
    assert isinstance(reference, LMOutputs) and reference.vocab == V and reference.meta["eval_sha"] == "x"
    quant = LMFidelity(reference=reference)  # quantized process, another virtualenv
    quant.update(q_logits=q[:2], targets=tg[:2], mask=mask[:2])
    for w in range(2, ref.shape[0]):
        quant.update(q_logits=q[w], targets=tg[w], mask=mask[w])
    cross, exact = quant.result(n_boot=300), both.result(n_boot=300)
    assert cross["kl_exact"] is False and exact["kl_exact"] is True
    for key in ("agreement", "top1_ref", "top1_q", "ppl_ref", "ppl_q", "ppl_ratio", "ppl_delta", "n_tokens"):
        assert cross[key] == pytest.approx(exact[key], rel=1e-6), key
    assert cross["kl"] <= exact["kl"] + 1e-9
    assert cross["kl"] == pytest.approx(exact["kl"], rel=0.25)
    assert 0 < cross["kl_tail_mass_mean"] < 0.5
    # the saved quantized side compares the same way
    qpath = save_outputs(tmp_path / "q.npz", quant.quantized_outputs())
    assert compare(reference, load_outputs(qpath), n_boot=300)["kl"] == pytest.approx(cross["kl"])
    # feeding other windows is caught
    bad = LMFidelity(reference=reference)
    with pytest.raises(ValueError):
        bad.update(q_logits=q[1], targets=tg[1], mask=mask[1])


def test_lm_full_vocab_reference_is_exact(tmp_path):
    ref, q, tg, mask = _lm_windows(seed=8, n_windows=3)
    fp32, both = LMFidelity(topk=V), LMFidelity()
    for w in range(3):
        fp32.update(ref_logits=ref[w], targets=tg[w], mask=mask[w])
        both.update(ref[w], q[w], tg[w], mask[w])
    quant = LMFidelity(reference=load_outputs(save_outputs(tmp_path / "r.npz", fp32.reference_outputs())))
    for w in range(3):
        quant.update(q_logits=q[w], targets=tg[w], mask=mask[w])
    r = quant.result(n_boot=100)
    assert r["kl_exact"] is True and r["kl"] == pytest.approx(both.result(n_boot=100)["kl"], rel=1e-5)


def test_lm_block_bootstrap_wider_than_token_iid():
    """Per-token NLL deltas correlated within windows: resampling whole windows gives the honest, wider CI."""
    rng = np.random.default_rng(11)
    n_w, T = 60, 50
    w_shift = rng.normal(0, 0.3, n_w)  # the quantization damage differs by passage
    nll_r = rng.gamma(2.0, 1.5, (n_w, T))
    nll_q = nll_r + 0.05 + w_shift[:, None] + rng.normal(0, 0.05, (n_w, T))
    win = np.repeat(np.arange(n_w), T).astype(np.int32)
    tg = np.zeros(n_w * T, np.int32)
    ref = LMOutputs(window=win, targets=tg, top1=tg, nll=nll_r.ravel())
    q = LMOutputs(window=win, targets=tg, top1=tg, nll=nll_q.ravel())
    blk = compare(ref, q, block_len=1)["ppl_bootstrap"]
    from utils.stats import block_bootstrap_ppl

    tok_iid = block_bootstrap_ppl(nll_r.ravel(), nll_q.ravel(), np.ones(n_w * T), block_len=1)
    assert (blk["ratio_ci_high"] - blk["ratio_ci_low"]) > 3 * (tok_iid["ratio_ci_high"] - tok_iid["ratio_ci_low"])
    assert blk["ratio"] == pytest.approx(tok_iid["ratio"])


def test_compare_rejects_mixed_kinds():
    with pytest.raises(TypeError):
        compare(ClassifierOutputs(np.zeros((1, 2))), LMOutputs(*(np.zeros(0),) * 4))
