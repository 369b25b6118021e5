"""What a --data path must hold, checked by the launchers before anything is prepared or written (stdlib only).

The routes check the same data again when they load it (utils/data.py, models/prepare.py); this module lets the
bench refuse bad input in a fraction of a second, with one line, instead of after a minute of preparation.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.errors import SuiteError
from utils.registry import task_of

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".JPEG")
# Imagenette's 10 WordNet ids -> their ImageNet class index (the pretrained ResNet50's outputs)
IMAGENETTE_TO_IMAGENET = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888605": 701,
}
TEXT_CALIB_FRACTION = 0.8  # a local text file: the first 80% for calibration, the rest for evaluation
LM_CALIB_WINDOW = 256  # utils/specs.py LM_CALIB_WINDOW (tokens of a calibration window at most)


def is_image(p: Path) -> bool:
    return p.suffix in IMG_EXTENSIONS or p.suffix.lower() in IMG_EXTENSIONS


def image_classes(root: Path) -> dict[str, int]:
    """class folder -> images in it, for an ImageNet-layout folder root/<class>/<image>; SuiteError when the layout
    or the class names cannot be used with the pretrained model."""
    if not root.is_dir():
        raise SuiteError(f"dataset folder {root} does not exist (expected an ImageNet-layout folder root/<class>/<image>)")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SuiteError(f"dataset folder {root} has no class sub-folders (expected root/<class>/<image>)")
    names = [c.name for c in classes]
    if len(names) != 1000 and not all(n in IMAGENETTE_TO_IMAGENET for n in names):
        raise SuiteError(f"dataset folder {root}: {len(names)} classes that are neither the 1000 ImageNet classes nor "
                         "Imagenette WordNet ids, so labels cannot be mapped to the pretrained model's classes")
    counts = {c.name: sum(1 for p in c.iterdir() if p.is_file() and is_image(p)) for c in classes}
    if not sum(counts.values()):
        raise SuiteError(f"dataset folder {root} contains no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
    return counts


def check_images(root: Path, n_calib: int) -> str:
    """An ImageNet-layout folder (root/train + root/val, or one folder cut in two): enough images for the
    calibration subset and at least one to evaluate. Returns a one-line description."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        n_train = sum(image_classes(root / "train").values())
        n_val = sum(image_classes(root / "val").values())
        if n_calib > n_train:
            raise SuiteError(f"calibration size {n_calib} is larger than the {n_train} images of {root / 'train'}: "
                             "pass a smaller --calib-samples")
        return f"{n_train} train / {n_val} val images"
    n = sum(image_classes(root).values())
    if n_calib > n - 1:
        raise SuiteError(f"calibration size {n_calib} leaves no image of {root} ({n} images) to evaluate: pass a "
                         "smaller --calib-samples")
    return f"{n} images ({n_calib} for calibration, {n - n_calib} to evaluate)"


def check_text(path: Path, n_calib: int, context: int | None = None) -> str:
    """A local text file for a language model: the calibration part must hold `n_calib` windows. Byte-level BPE
    tokens are at least one byte each, so a part with fewer bytes than the tokens it must give is too short for
    any tokenizer of that kind (checked without one)."""
    if not path.is_file():
        raise SuiteError(f"text file {path} does not exist (or pass --data wikitext-2)")
    size = path.stat().st_size
    if size == 0:
        raise SuiteError(f"text file {path} is empty: pass a text file with the evaluation corpus")
    window = min(context or LM_CALIB_WINDOW, LM_CALIB_WINDOW)
    need = n_calib * window
    calib_bytes = int(size * TEXT_CALIB_FRACTION)
    if calib_bytes < need:
        raise SuiteError(f"text file {path} is too short: its first {TEXT_CALIB_FRACTION:.0%} ({calib_bytes} bytes, so "
                         f"at most {calib_bytes} tokens) cannot give {n_calib} calibration windows of {window} tokens "
                         f"({need} tokens); pass a longer text or a smaller --calib-samples")
    if size - calib_bytes < 2:
        raise SuiteError(f"text file {path} leaves nothing to evaluate after its calibration part")
    return f"{size} bytes"


def model_context(weights_path: str | None) -> int | None:
    """The context length of a local Hugging Face model directory (config.json: max_position_embeddings, or GPT-2's
    n_positions), else None."""
    if not weights_path:
        return None
    cfg = Path(weights_path) / "config.json"
    try:
        conf = json.loads(cfg.read_text())
        return int(conf.get("max_position_embeddings") or conf.get("n_positions") or 0) or None
    except (OSError, ValueError, TypeError):
        return None


DIGITS_N = 1797  # scikit-learn's load_digits(): a fixed data set
DIGITS_TEST_FRACTION = 0.2


def digits_train_size() -> int:
    return DIGITS_N - int(round(DIGITS_N * DIGITS_TEST_FRACTION))


def npy_length(path: Path) -> int | None:
    """Elements of a 1-D .npy file, from its header (no NumPy needed), or None."""
    import ast

    try:
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                return None
            major = fh.read(2)[0]
            n = int.from_bytes(fh.read(2 if major == 1 else 4), "little")
            header = ast.literal_eval(fh.read(n).decode("latin1"))
        shape = header.get("shape") or ()
        out = 1
        for d in shape:
            out *= int(d)
        return out
    except (OSError, ValueError, SyntaxError, IndexError, AttributeError):
        return None


def check_calibration(model: str, weights: str, n_calib: int, cache_dir: Path | None = None) -> None:
    """The calibration size against the split it is drawn from, where that is known before preparation (the
    digits; the random-weights token ids; a prepared embedded corpus)."""
    from utils.registry import model_decl

    if task_of(model) == "image-classification":
        if weights in ("embedded", "random") and n_calib > digits_train_size():
            raise SuiteError(f"calibration size {n_calib} is larger than the digits' train split "
                             f"({digits_train_size()} images): pass --calib-samples {digits_train_size()} or fewer")
        return
    if weights == "random":
        cfg = model_decl(model).random or {}
        avail = cfg["train_tokens"] // cfg["seq_len"] if cfg.get("train_tokens") and cfg.get("seq_len") else None
    elif weights == "embedded" and cache_dir is not None:
        try:
            manifest = json.loads((cache_dir / "manifest.json").read_text())
            tokens = npy_length(cache_dir / manifest["train_ids"])
            avail = tokens // int(manifest["seq_len"]) if tokens else None
        except (OSError, ValueError, KeyError, TypeError):
            avail = None
    else:
        avail = None
    if avail is not None and n_calib > avail:
        raise SuiteError(f"calibration size {n_calib} is larger than the train split of {model} ({weights}): "
                         f"{avail} windows; pass --calib-samples {avail} or fewer")


def check_data(model: str, path: Path, n_calib: int, weights_path: str | None = None) -> str:
    """The --data of `model` holds what the run will take from it (one line, exit 2, when it does not)."""
    if task_of(model) == "image-classification":
        return check_images(path, n_calib)
    return check_text(path, n_calib, model_context(weights_path))
