"""The real-model paths (--weights pretrained) end to end with local files: no network needed.

ResNet50: a 1000-class torchvision state dict saved locally + an Imagenette-layout folder.
GPT-2: a local HF model directory (the embedded model saved as a 'pretrained' one) + a local text file.
The accuracy numbers are meaningless (random weights / tiny data); the test checks that the same
code path that serves ImageNet and WikiText runs and writes ok rows with the right dataset names.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import IMAGENETTE_TO_IMAGENET
from utils.paths import REPO_ROOT
from utils.specs import ModelSource


def run(*args, env):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **env))


def test_pretrained_resnet50_from_local_file_and_image_folder(tmp_path):
    from models.embedded import build_classifier

    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pth"
    torch.save(build_classifier("resnet50", 1000).state_dict(), weights)
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for wnid in sorted(IMAGENETTE_TO_IMAGENET)[:2]:
            d = tmp_path / "imagenette" / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(d / f"{i}.JPEG", "JPEG")
    env = {"SUITE_CACHE_DIR": str(tmp_path / "cache")}
    common = ["--model", "resnet50", "--weights", "pretrained", "--weights-path", str(weights),
              "--data", str(tmp_path / "imagenette")]
    p = run("-m", "models.prepare", *common, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = tmp_path / "runs"
    p = run("-m", "quantization.torch.route", *common, "--methods", "eager,fx", "--calib-samples", "4",
            "--batches", "1", "--min-time", "0.01", "--min-iters", "1", "--devices", "cpu", "--runs-dir", str(runs), env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(f.read_text()) for f in sorted(runs.glob("*.json"))]
    assert [(r["method"], r["status"]) for r in rows] == [("eager", "ok"), ("fx", "ok")]
    assert all(r["dataset"] == "imagefolder:imagenette" and r["extra"]["n_eval"] == 4 for r in rows)
    assert all(r["calib_samples"] in (None, 4) for r in rows)
    assert rows[0]["environment"]["n_calib"] == 4  # calibration from train/, evaluation from val/


@pytest.mark.slow
def test_pretrained_gpt2_from_local_dir_and_text_file(tmp_path, embedded_models):
    emb = ModelSource("gpt2")  # prepared by the folder's fixture: a missing model fails, never skips
    hf_dir = emb.load_manifest()["hf_dir"]
    text = tmp_path / "corpus.txt"
    from utils.text import embedded_corpus

    text.write_text(embedded_corpus()["validation"][:60_000])
    env = {"SUITE_CACHE_DIR": str(tmp_path / "cache")}
    common = ["--model", "gpt2", "--weights", "pretrained", "--weights-path", hf_dir, "--data", str(text)]
    p = run("-m", "models.prepare", *common, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = tmp_path / "runs"
    p = run("-m", "quantization.torch.route", *common, "--methods", "eager", "--calib-samples", "2", "--batches", "1",
            "--min-time", "0.01", "--min-iters", "1", "--devices", "cpu", "--runs-dir", str(runs), env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["latency_kind"]: r for r in (json.loads(f.read_text()) for f in runs.glob("*.json"))}
    assert set(rows) == {"host-wall", "decode"}  # the full-sequence row and the KV-cache generation row
    row = rows["host-wall"]
    assert rows["decode"]["status"] == "ok" and rows["decode"]["ttft_ms"] > 0
    assert row["status"] == "ok" and row["dataset"] == "text:corpus.txt"
    assert row["extra"]["ppl_max_length"] == 128 and row["extra"]["ppl_stride"] == 64  # the local model's context
    assert 1 < row["value"] < 5000


def test_wikitext_offline_is_a_one_line_error(tmp_path, embedded_models):
    emb = ModelSource("gpt2")  # prepared by the folder's fixture: a missing model fails, never skips
    p = run("-m", "models.prepare", "--model", "gpt2", "--weights", "pretrained", "--weights-path",
            emb.load_manifest()["hf_dir"], "--data", "wikitext-2",
            env={"SUITE_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr
    assert "WikiText-2 is not cached" in errors[0] and "--data FILE" in errors[0]
