"""models.prepare on a copied (relocated) cache: verified by hash, reused without retraining, a changed file is
made again; bad weight files are one line naming the file and leave no half-made cache folder."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.paths import REPO_ROOT
from utils.specs import ModelSource


def prepare(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUITE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "models.prepare", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def moved(tmp_path, embedded_models):  # prepared by the folder's fixture: a missing model fails, never skips
    src = ModelSource("resnet50")
    cache = tmp_path / "moved-cache"
    shutil.copytree(src.cache_dir, cache / src.cache_dir.name, ignore=shutil.ignore_patterns("onnxruntime", "torch",
                                                                                            "modelopt-onnx"))
    return cache, cache / src.cache_dir.name


def test_relocated_cache_is_verified_and_reused(moved):
    cache, d = moved
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["onnx"] == "fp32.onnx" and manifest["checkpoint"] == "model.pt"  # stored relative
    r = prepare(cache, "--model", "resnet50")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cached at" in r.stderr and "hashes verified" in r.stderr and "train resnet50" not in r.stderr


def test_changed_onnx_is_exported_again(moved):
    cache, d = moved
    rec = json.loads((d / "manifest.json").read_text())["files"]["onnx"]
    data = (d / "fp32.onnx").read_bytes()
    (d / "fp32.onnx").write_bytes(data[: len(data) // 3])  # truncated in place
    r = prepare(cache, "--model", "resnet50")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "changed since it was made" in r.stderr and "exported" in r.stderr and "train resnet50" not in r.stderr
    manifest = json.loads((d / "manifest.json").read_text())
    new = manifest["files"]["onnx"]
    assert new["sha256"] == rec["sha256"]  # the export is deterministic: the same bytes again
    # the remade manifest carries the MACs per layer counted from the ONNX: 2 x their sum is torch's FLOP count
    t = manifest["layer_macs"]
    assert t["onnx_sha"] == new["sha256"][:16] and len(t["layers"]) == 54 and t["unit"] == "image"
    assert 2 * t["total"] == manifest["ops_per_item"]
    assert t["layers"]["fc"] == 2048 * manifest["num_classes"] and "layer1.0.downsample.0" in t["layers"]


def test_route_refuses_a_changed_checkpoint_with_one_line(moved):
    cache, d = moved
    (d / "model.pt").write_bytes(b"")
    env = {**os.environ, "SUITE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-m", "quantization.torch.route", "--model", "resnet50", "--methods", "eager",
                        "--runs-dir", str(cache / "runs")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(d / "model.pt") in last and "is empty" in last and "--force" in last
    assert not (cache / "runs").exists()


def test_empty_weights_file_is_one_line_and_leaves_no_cache_folder(tmp_path):
    from PIL import Image

    data = tmp_path / "images"
    for c in ("n01440764", "n01443537"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)).save(
                data / c / f"{i}.png")
    empty = tmp_path / "resnet50.pth"
    empty.write_bytes(b"")
    cache = tmp_path / "cache"
    r = prepare(cache, "--model", "resnet50", "--weights", "pretrained", "--weights-path", str(empty), "--data",
                str(data))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and str(empty) in lines[0] and "empty" in lines[0] and "Traceback" not in r.stderr
    assert not cache.exists() or not any(cache.iterdir())
