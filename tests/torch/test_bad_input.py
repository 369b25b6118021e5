"""Bad --data found before any work (README: "Bad input is one line and exit code 2, before anything is prepared or
written"), and --eval-limit as the cap --help says it is. Real local pretrained files, as tests/test_pretrained_paths.py
builds them: a saved 1000-class torchvision ResNet50 state dict, image folders, a saved GPT-2 directory.

Measured on the main branch before the checks moved ahead of the work (7d521ac): each of these bad inputs ended
with a good one-line error only after 45-52 s of environment checks and model preparation, and --eval-limit 50 with
4 images was an error."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import bench_proc
from utils.data import IMAGENETTE_TO_IMAGENET
from utils.paths import REPO_ROOT

FAST_S = 5.0  # "in a fraction of a second" (utils/inputs.py); generous for a loaded 2-core machine


def images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG", "JPEG")


def imagenette(root: Path, train: int, val: int) -> Path:
    for split, n in (("train", train), ("val", val)):
        for k, wnid in enumerate(sorted(IMAGENETTE_TO_IMAGENET)[:2]):
            images(root / split / wnid, n, seed=k)
    return root


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    from models.embedded import build_classifier

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    torch.save(build_classifier("resnet50", 1000).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, embedded_models) -> Path:
    """A saved GPT-2 directory (config, weights, tokenizer): the embedded one, prepared by the session fixture
    (tests/torch/conftest.py), which fails rather than skips when preparation fails."""
    dst = tmp_path_factory.mktemp("gpt2") / "gpt2-local"
    shutil.copytree(embedded_models["gpt2"]["hf_dir"], dst)
    return dst


def bench_refuses(tmp_path: Path, args: list[str]) -> tuple[str, float]:
    """Run the bench with a fresh cache and runs folder; it must exit 2 with one line, quickly, writing nothing.
    Returns (the line, seconds)."""
    work, cache = tmp_path / "work", tmp_path / "cache"
    t0 = time.time()
    p = bench_proc.bench(args + ["--runs-dir", str(work / "runs")], {"SUITE_CACHE_DIR": str(cache)},
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"the bench was still working after 120 s:\n{err[-2000:]}") from None
    took = time.time() - t0
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert p.returncode == 2, (p.returncode, (out + err)[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), lines[:20]
    assert took < FAST_S, f"{took:.1f} s before the error: {lines}"
    assert not work.exists(), sorted(str(x) for x in work.rglob("*"))  # no runs folder, no device.json, no tables
    assert not cache.exists() or not any(cache.iterdir())  # nothing prepared
    return lines[0], took


def test_a_data_folder_without_class_subfolders_stops_at_once(tmp_path, resnet_weights):
    images(tmp_path / "flat", 6)  # images straight in the folder: no root/<class>/<image>
    line, _ = bench_refuses(tmp_path, ["--models", "resnet50", "--toolchains", "torch", "--weights", "pretrained",
                                       "--weights-path", str(resnet_weights), "--data", str(tmp_path / "flat")])
    assert "no class sub-folders" in line and str(tmp_path / "flat") in line


def test_a_calibration_size_larger_than_the_data_stops_at_once(tmp_path, resnet_weights):
    root = imagenette(tmp_path / "imagenette", train=3, val=2)  # 6 train images
    line, _ = bench_refuses(tmp_path, ["--models", "resnet50", "--toolchains", "torch", "--weights", "pretrained",
                                       "--weights-path", str(resnet_weights), "--data", str(root),
                                       "--calib-samples", "64"])
    assert "calibration size 64 is larger than the 6 images" in line and "--calib-samples" in line


def test_a_ten_character_corpus_stops_at_once(tmp_path, gpt2_dir):
    text = tmp_path / "tiny.txt"
    text.write_text("0123456789")
    line, _ = bench_refuses(tmp_path, ["--models", "gpt2", "--toolchains", "torch", "--weights", "pretrained",
                                       "--weights-path", str(gpt2_dir), "--data", str(text)])
    assert f"text file {text} is too short" in line


def test_eval_limit_above_the_data_caps_and_says_so(tmp_path, resnet_weights):
    root = imagenette(tmp_path / "imagenette", train=3, val=2)  # 4 images to evaluate
    env = dict(os.environ, SUITE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO_ROOT))
    common = ["--model", "resnet50", "--weights", "pretrained", "--weights-path", str(resnet_weights),
              "--data", str(root)]
    p = subprocess.run([sys.executable, "-m", "models.prepare", *common], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = tmp_path / "runs"
    p = subprocess.run([sys.executable, "-m", "quantization.torch.route", *common, "--methods", "eager",
                        "--calib-samples", "4", "--eval-limit", "50", "--batches", "1", "--min-time", "0.01",
                        "--min-iters", "1", "--devices", "cpu", "--runs-dir", str(runs)],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--eval-limit 50 is more than the 4 images to evaluate" in p.stderr and "scoring all 4" in p.stderr
    rows = [json.loads(f.read_text()) for f in runs.glob("*.json")]
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    assert rows[0]["extra"]["n_eval"] == 4 and rows[0]["eval_limit"] == 50  # a subset row, scored on all 4 images
