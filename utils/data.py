"""Datasets shared by every route: the same samples, the same preprocessing, in every environment.

NumPy + scikit-learn + Pillow only (no torch), so ONNX Runtime, ModelOpt and TensorRT
environments feed exactly the arrays the Torch route sees.

Index sets are fixed and seeded: calibration samples are drawn from the training split,
evaluation samples from the held-out split, never overlapping. Every split carries a
SHA-256 of its indices (and its arrays) that goes into each result row.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import SuiteError

DIGITS_SEED = 0
from utils.inputs import DIGITS_TEST_FRACTION  # noqa: E402 (the stdlib checks size the split with it)
DIGITS_RESOLUTION = 16  # 8x8 digits upscaled 2x; the network is fully convolutional
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
from utils.inputs import IMAGENETTE_TO_IMAGENET, IMG_EXTENSIONS  # noqa: E402,F401 (one list, stdlib module)


@dataclass(frozen=True)
class Split:
    """Images (N, 3, H, W) float32, already normalised, and labels (N,) int64."""

    name: str
    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray  # indices into the source dataset

    @property
    def sha(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


def _resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) -> (N, size, size), align_corners=False bilinear, NumPy only."""
    n, h, w = img.shape

    def coords(src: int):
        c = (np.arange(size) + 0.5) * src / size - 0.5
        c = np.clip(c, 0, src - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (c - lo).astype(np.float32)

    y0, y1, wy = coords(h)
    x0, x1, wx = coords(w)
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bot = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    return (top * (1 - wy)[None, :, None] + bot * wy[None, :, None]).astype(np.float32)


def digits_index_split(n: int, seed: int = DIGITS_SEED, test_fraction: float = DIGITS_TEST_FRACTION):
    """Seeded permutation -> (train indices, test indices), disjoint."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def digits_splits(resolution: int = DIGITS_RESOLUTION, seed: int = DIGITS_SEED) -> dict[str, Split]:
    """scikit-learn's 1,797 real handwritten digits: 'train' (for training and calibration) and 'test'."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images.astype(np.float32) / 16.0)  # (N, 8, 8) in [0, 1]
    up = _resize_bilinear(imgs, resolution)
    x = np.repeat(((up - 0.5) / 0.5)[:, None], 3, axis=1).astype(np.float32)
    y = d.target.astype(np.int64)
    tr, te = digits_index_split(len(y), seed)
    return {"train": Split("train", x[tr], y[tr], tr), "test": Split("test", x[te], y[te], te)}


def digits_inputs(resolution: int, n_calib: int, n_eval: int) -> tuple[Split, Split]:
    """The digits' calibration subset (from train) and `n_eval` test images, upscaled to `resolution` only after
    they are picked (all 1,797 at 224x224 would take 1 GB): inputs for models whose weights are not the digits'
    (--weights random). Bilinear resizing commutes with the normalisation, so these equal digits_splits(224)'s."""
    sp = digits_splits(resolution=8)
    cal = calibration_subset(sp["train"], n_calib)
    ev = subset(sp["test"], min(n_eval, len(sp["test"])), seed=0, name="test", what="evaluation")

    def up(split: Split) -> Split:
        x = np.repeat(_resize_bilinear(split.x[:, 0], resolution)[:, None], 3, axis=1)
        return Split(split.name, np.ascontiguousarray(x, dtype=np.float32), split.y, split.indices)

    return up(cal), up(ev)


def subset(split: Split, n: int | None, *, seed: int, name: str, what: str = "calibration") -> Split:
    """The first n of a seeded permutation of `split` (n=None: all). Raises SuiteError on a bad size."""
    if n is None:
        n = len(split)
    if n <= 0:
        raise SuiteError(f"{what} size must be >= 1 (got {n})")
    if n > len(split):
        raise SuiteError(f"{what} size {n} is larger than the {split.name} split ({len(split)} samples)")
    pick = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return Split(name, split.x[pick], split.y[pick], split.indices[pick])


CALIB_SEED = 1234


def calibration_subset(train: Split, n: int) -> Split:
    """The shared calibration subset every route uses: drawn from train, never from test."""
    return subset(train, n, seed=CALIB_SEED, name="calibration")


# ---------------------------------------------------------------- ImageNet-layout folders

# torchvision/ImageNet class index of each Imagenette class (its folder names are WordNet ids)
def list_image_folder(root: Path | str) -> tuple[list[Path], np.ndarray, list[str]]:
    """ImageFolder layout (root/<class>/<image>): files, ImageNet label per file, class names."""
    root = Path(root)
    if not root.is_dir():
        raise SuiteError(f"dataset folder {root} does not exist (expected an ImageNet-layout folder root/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SuiteError(f"dataset folder {root} has no class sub-folders (expected root/<class>/<image>)")
    if len(classes) == 1000:
        mapping = {c: i for i, c in enumerate(classes)}  # full ImageNet: sorted WordNet ids = torchvision order
    elif all(c in IMAGENETTE_TO_IMAGENET for c in classes):
        mapping = {c: IMAGENETTE_TO_IMAGENET[c] for c in classes}
    else:
        raise SuiteError(
            f"dataset folder {root}: {len(classes)} classes that are neither the 1000 ImageNet classes nor "
            f"Imagenette WordNet ids, so labels cannot be mapped to the pretrained model's classes")
    files, labels = [], []
    for c in classes:
        for p in sorted((root / c).iterdir()):
            if p.suffix in IMG_EXTENSIONS or p.suffix.lower() in IMG_EXTENSIONS:
                files.append(p)
                labels.append(mapping[c])
    if not files:
        raise SuiteError(f"dataset folder {root} contains no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
    return files, np.asarray(labels, dtype=np.int64), classes


def load_imagenet_images(files: list[Path], size: int = 224, resize: int = 256) -> np.ndarray:
    """torchvision's ImageNet eval transform (resize 256, centre-crop 224, normalise) with Pillow."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), 3, size, size), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = resize / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise SuiteError(f"cannot read image {f}: {exc.__class__.__name__}") from None
        out[i] = ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def image_folder_splits(root: Path | str, *, n_eval: int | None = None, n_calib: int = 128,
                        seed: int = 0) -> tuple[Split, Split]:
    """(calibration, evaluation) from an ImageNet-layout folder.

    With root/train and root/val (Imagenette), calibration comes from train and evaluation from
    val. With a single folder (e.g. ImageNet val), a seeded permutation is cut into two disjoint
    parts: calibration first, evaluation from the rest.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        tf, tl, _ = list_image_folder(root / "train")
        vf, vl, _ = list_image_folder(root / "val")
        cal_idx = np.sort(np.random.default_rng(seed).permutation(len(tf))[:_check_n(n_calib, len(tf), "calibration")])
        ev_idx = np.sort(np.random.default_rng(seed + 1).permutation(len(vf))[:_cap(n_eval, len(vf), root / "val")])
        cal = Split("calibration", load_imagenet_images([tf[i] for i in cal_idx]), tl[cal_idx], cal_idx)
        ev = Split("test", load_imagenet_images([vf[i] for i in ev_idx]), vl[ev_idx], ev_idx + len(tf))
        return cal, ev
    files, labels, _ = list_image_folder(root)
    _check_n(n_calib, len(files) - 1, "calibration")
    perm = np.random.default_rng(seed).permutation(len(files))
    cal_idx = np.sort(perm[:n_calib])
    rest = perm[n_calib:]
    ev_idx = np.sort(rest[:_cap(n_eval, len(rest), root)])
    cal = Split("calibration", load_imagenet_images([files[i] for i in cal_idx]), labels[cal_idx], cal_idx)
    ev = Split("test", load_imagenet_images([files[i] for i in ev_idx]), labels[ev_idx], ev_idx)
    return cal, ev


def _check_n(n: int, available: int, what: str) -> int:
    if n <= 0:
        raise SuiteError(f"{what} size must be >= 1 (got {n})")
    if n > available:
        raise SuiteError(f"{what} size {n} is larger than the {available} images available for it")
    return n


def _cap(n_eval: int | None, available: int, where) -> int:
    """--eval-limit is a cap: above what the data holds, every sample is scored (and that is said once)."""
    if n_eval is not None and n_eval > available:
        import logging

        logging.getLogger("utils.data").info("--eval-limit %d is more than the %d images to evaluate in %s: scoring "
                                             "all %d", n_eval, available, where, available)
    return _check_n(min(n_eval or available, available), available, "evaluation")


def latency_input(batch: int, resolution: int = 224, seed: int = 0) -> np.ndarray:
    """Fixed random 3xHxW batch for latency (values do not change the work a dense CNN does)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
