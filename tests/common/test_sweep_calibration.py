"""Calibration sets at every sweep size come from train and never overlap the evaluation samples (report env).

tests/common/test_data.py checks the default sizes on the digits split, image folders and synthetic token
ids; the calibration sweep feeds every size up to the whole train split, so this checks all sweep sizes,
that a larger set extends a smaller one (the curve's points differ by added samples only), and the
embedded GPT-2's real token files (skipped with a reason when it has not been prepared).
"""
import numpy as np
import pytest

from evaluation.launch.sweep import DEFAULT_CALIB_SIZES
from utils.data import calibration_subset, digits_splits
from utils.errors import SuiteError
from utils.text import lm_calibration

SIZES = (*DEFAULT_CALIB_SIZES, 1438)


def test_digits_calibration_at_every_sweep_size_is_nested_and_disjoint_from_test():
    sp = digits_splits()
    test = set(sp["test"].indices.tolist())
    prev: set = set()
    for n in SIZES:
        cal = set(calibration_subset(sp["train"], n).indices.tolist())
        assert len(cal) == n and cal.isdisjoint(test) and cal <= set(sp["train"].indices.tolist())
        assert prev <= cal  # the first n of one seeded permutation: bigger sets extend smaller ones
        prev = cal
    with pytest.raises(SuiteError, match="larger than the train split"):
        calibration_subset(sp["train"], 1439)


def _gpt2():
    from tests.prepared import embedded_manifest

    manifest = embedded_manifest("gpt2")  # fails after the test command's torch folder; skips (saying why) run alone
    return np.load(manifest["train_ids"]), np.load(manifest["val_ids"]), int(manifest["seq_len"])


def test_gpt2_calibration_windows_are_distinct_nested_windows_of_the_train_ids():
    train, val, L = _gpt2()
    available = train.size // L
    prev: set = set()
    for n in (1, 8, 64, available):
        cal = lm_calibration(train, n, L)
        starts = set()
        for w in cal:
            hits = np.flatnonzero(train[:train.size - L + 1:L] == w[0])  # window starts are multiples of L
            starts.add(next(int(h) * L for h in hits if np.array_equal(train[h * L:h * L + L], w)))
        assert len(starts) == n  # distinct, non-overlapping windows of the train ids
        assert prev <= starts
        prev = starts
    with pytest.raises(SuiteError, match="larger than the train split"):
        lm_calibration(train, available + 1, L)


def test_gpt2_calibration_text_never_appears_in_the_evaluation_text():
    train, val, L = _gpt2()
    # every L-token window of the validation ids (what perplexity is computed on), as bytes
    val_windows = {val[i:i + L].tobytes() for i in range(0, val.size - L + 1)}
    cal = lm_calibration(train, train.size // L, L)
    shared = [i for i, w in enumerate(cal) if w.tobytes() in val_windows]
    assert shared == [], f"{len(shared)} of {len(cal)} calibration windows occur verbatim in the validation ids"
