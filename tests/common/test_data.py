import numpy as np
import pytest
from PIL import Image

from utils.data import (IMAGENETTE_TO_IMAGENET, calibration_subset, digits_splits, image_folder_splits,
                        list_image_folder)
from utils.errors import SuiteError
from utils.text import embedded_corpus, lm_calibration


def test_digits_splits_are_disjoint_seeded_and_normalised():
    sp = digits_splits()
    tr, te = sp["train"], sp["test"]
    assert len(tr) + len(te) == 1797 and len(te) == 359
    assert set(tr.indices).isdisjoint(te.indices)
    assert tr.x.shape[1:] == (3, 16, 16) and tr.x.dtype == np.float32
    assert -1.0 <= tr.x.min() and tr.x.max() <= 1.0
    assert digits_splits()["test"].sha == te.sha  # same samples every time, in every environment


def test_calibration_subset_comes_from_train_and_never_from_test():
    sp = digits_splits()
    cal = calibration_subset(sp["train"], 128)
    assert len(cal) == 128 and len(set(cal.indices)) == 128
    assert set(cal.indices) <= set(sp["train"].indices)
    assert set(cal.indices).isdisjoint(sp["test"].indices)
    assert calibration_subset(sp["train"], 128).sha == cal.sha


@pytest.mark.parametrize("n", [0, -3, 5000])
def test_bad_calibration_size_is_a_one_line_error(n):
    with pytest.raises(SuiteError) as e:
        calibration_subset(digits_splits()["train"], n)
    assert "\n" not in str(e.value) and "calibration size" in str(e.value)


def _folder(root, classes, per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagenette_layout_maps_labels_and_splits_disjointly(tmp_path):
    wnids = sorted(IMAGENETTE_TO_IMAGENET)[:3]
    _folder(tmp_path / "train", wnids, per_class=4)
    _folder(tmp_path / "val", wnids, per_class=2)
    files, labels, classes = list_image_folder(tmp_path / "val")
    assert classes == wnids and sorted(set(labels)) == sorted(IMAGENETTE_TO_IMAGENET[w] for w in wnids)
    cal, ev = image_folder_splits(tmp_path, n_calib=5)
    assert cal.x.shape == (5, 3, 224, 224) and ev.x.shape == (6, 3, 224, 224)
    assert set(cal.indices).isdisjoint(ev.indices)


def test_single_folder_is_cut_into_disjoint_parts(tmp_path):
    _folder(tmp_path, sorted(IMAGENETTE_TO_IMAGENET)[:2], per_class=5)
    cal, ev = image_folder_splits(tmp_path, n_calib=4)
    assert len(cal) == 4 and len(ev) == 6 and set(cal.indices).isdisjoint(ev.indices)


def test_bad_dataset_folders_give_one_line_errors(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        list_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SuiteError, match="no class sub-folders"):
        list_image_folder(tmp_path / "empty")
    _folder(tmp_path / "odd", ["cats", "dogs"])
    with pytest.raises(SuiteError, match="cannot be mapped"):
        list_image_folder(tmp_path / "odd")
    bad = tmp_path / "corrupt"
    _folder(bad, sorted(IMAGENETTE_TO_IMAGENET)[:1], per_class=3)
    (bad / sorted(IMAGENETTE_TO_IMAGENET)[0] / "1.png").write_bytes(b"not a png")
    with pytest.raises(SuiteError, match="cannot read image"):
        image_folder_splits(bad, n_calib=1)
    with pytest.raises(SuiteError, match="calibration size"):
        image_folder_splits(bad, n_calib=0)


def test_text_corpus_documents_and_calibration_windows_are_disjoint():
    c = embedded_corpus()
    assert set(c["train_docs"]).isdisjoint(c["validation_docs"])
    assert len(c["train"]) > 300_000 and len(c["validation"]) > 20_000
    ids = np.arange(10_000)
    cal = lm_calibration(ids, 16, 128)
    assert cal.shape == (16, 128)
    starts = cal[:, 0]
    assert len(set(starts)) == 16 and all(s % 128 == 0 for s in starts)  # non-overlapping windows
    assert np.array_equal(cal, lm_calibration(ids, 16, 128))
    with pytest.raises(SuiteError, match="larger than the train split"):
        lm_calibration(ids, 79, 128)
    with pytest.raises(SuiteError, match=">= 1"):
        lm_calibration(ids, 0, 128)


def test_text_split_is_disjoint_by_text_not_only_by_document():
    """pydoc_data.topics repeats sections across documents: no 200-character span of the
    validation text may occur in the training text."""
    c = embedded_corpus()
    tr, va, k = c["train"], c["validation"], 200
    shingles = {tr[i:i + k] for i in range(len(tr) - k + 1)}
    assert not any(va[i:i + k] in shingles for i in range(0, len(va) - k + 1, 25))
    assert 0.1 <= len(va) / (len(va) + len(tr)) <= 0.25
