import numpy as np
import pytest

from utils.metrics import (classification_score, pack_bits, relative_error, sqnr_db, strided_perplexity,
                                strided_windows, unpack_bits)


@pytest.mark.parametrize("n,L,s", [(1000, 128, 64), (1000, 128, 128), (130, 128, 64), (50, 128, 32), (2, 4, 1)])
def test_strided_windows_score_each_token_once(n, L, s):
    scored = []
    for begin, end, k in strided_windows(n, L, s):
        assert end - begin <= L
        scored += list(range(end - k, end))
    # every token except the first is predicted exactly once
    assert sorted(t for t in scored if t >= 1) == list(range(1, n))


def test_uniform_logits_give_vocab_size_perplexity():
    V = 37
    ids = np.random.default_rng(0).integers(0, V, 500)
    score = strided_perplexity(lambda x: np.zeros((1, x.shape[1], V)), ids, max_length=64, stride=32)
    assert score.ppl == pytest.approx(V, rel=1e-9)
    assert score.n_tokens == 499
    assert sum(score.window_tokens) == 499


def test_perfect_predictor_perplexity_one():
    ids = np.arange(200) % 50

    def logits(x):
        out = np.full((1, x.shape[1], 50), -1e4)
        nxt = (x[0] + 1) % 50
        out[0, np.arange(x.shape[1]), nxt] = 0.0
        return out

    assert strided_perplexity(logits, ids, max_length=32, stride=16).ppl == pytest.approx(1.0, abs=1e-6)


def test_classification_topk_and_bits():
    logits = np.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [1, 0, 0, 0, 0, 0]], dtype=float)
    labels = np.array([0, 0, 5])
    s = classification_score([(logits, labels)])
    assert s.top1 == pytest.approx(100 / 3)
    assert s.top5 == pytest.approx(100 / 3)  # sample 1: label 0 is the lowest logit; sample 2: label 5 ties low
    assert list(unpack_bits(pack_bits(s.correct), 3)) == [True, False, False]


def test_error_measures():
    a = np.ones(100)
    assert relative_error(a, a * 1.01) == pytest.approx(0.01)
    assert sqnr_db(a, a * 1.01) == pytest.approx(40.0)
