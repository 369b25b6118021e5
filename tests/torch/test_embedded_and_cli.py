"""The embedded default end to end (trains on first use, then cached) and the route's CLI errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from utils.paths import REPO_ROOT
from models.catalog import MODEL_DECLS
from utils.specs import ModelSource


def run(*args, env=None, timeout=1500):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def prepared(embedded_models):
    return embedded_models  # tests/torch/conftest.py: models.prepare, once per session


@pytest.mark.slow
def test_embedded_resnet50_meets_its_bar(prepared):
    m = prepared["resnet50"]
    assert m["train_test_top1"] >= 95.0
    assert m["resolution"] == 16 and m["num_classes"] == 10
    # ResNet50 at 3x224x224 is ~4.1 GMAC; the 10-class head removes ~2 MFLOP from the 1000-class count
    assert 8.0e9 < m["ops_per_item"] < 8.4e9
    import onnx

    model = onnx.load(m["onnx"])
    assert model.opset_import[0].version == 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 3


@pytest.mark.slow
def test_embedded_gpt2_learned_the_corpus(prepared):
    m = prepared["gpt2"]
    assert m["ppl_untrained"] > 1500  # about the vocabulary size (2048) for a random model
    assert m["ppl_trained"] < m["ppl_untrained"] / 10
    assert m["seq_len"] == 128 and m["vocab_size"] == 2048
    train, val = np.load(m["train_ids"]), np.load(m["val_ids"])
    assert train.size > 50_000 and val.size > 5_000


def test_resnet_training_is_deterministic(tmp_path):
    """Same config, same seed -> bit-identical weights (so a rerun gives identical accuracy)."""
    import torch

    from models.embedded import train_classifier

    cfg = dict(MODEL_DECLS["resnet50"].embedded, epochs=1, batch_size=256)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra = train_classifier(tmp_path / "a", cfg, "resnet50")
    rb = train_classifier(tmp_path / "b", cfg, "resnet50")
    assert ra["train_test_top1"] == rb["train_test_top1"]
    sa, sb = torch.load(ra["checkpoint"]), torch.load(rb["checkpoint"])
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_route_twice_gives_identical_accuracy(prepared, tmp_path):
    vals = []
    for i in range(2):
        d = tmp_path / f"runs{i}"
        p = run("-m", "quantization.torch.route", "--model", "resnet50", "--methods", "eager,fx", "--batches", "1",
                "--min-time", "0.05", "--min-iters", "2", "--devices", "cpu", "--runs-dir", str(d))
        assert p.returncode == 0, p.stderr[-2000:]
        rows = {f.name: json.loads(f.read_text()) for f in sorted(d.glob("*.json"))}
        assert len(rows) == 2 and all(r["status"] == "ok" for r in rows.values())
        vals.append({k: (r["value"], r["top5"], r["extra"]["correct_bits"]) for k, r in rows.items()})
    assert vals[0] == vals[1]
    fx = vals[0]["resnet50__embedded__torch__fx__int8__cpu__b1.json"][0]
    eager = vals[0]["resnet50__embedded__torch__eager__fp32__cpu__b1.json"][0]
    assert abs(fx - eager) <= 1.0  # the bar: INT8 within 1 top-1 point of FP32


def _one_error_line(p):
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2, p.stderr[-1500:]
    assert len(lines) == 1 and "Traceback" not in p.stderr
    return lines[0]


@pytest.mark.parametrize("args,expect", [
    (["--model", "vgg"], "unknown model 'vgg'; valid: resnet50, gpt2"),
    (["--model", "resnet50", "--methods", "awq"], "unknown method 'awq' for torch on resnet50; valid: eager, "
                                                 "eager-bf16, eager-fp16, fx, inductor, inductor-bf16"),
    (["--model", "resnet50", "--calib-samples", "0"], "argument --calib-samples: must be >= 1, got 0"),
    (["--model", "resnet50", "--threads", "-2"], "argument --threads: must be >= 1, got -2"),
    (["--model", "resnet50", "--min-time", "-1"], "argument --min-time: must be > 0"),
    (["--model", "resnet50", "--calib-samples", "5000"], "larger than the train split"),
    (["--model", "resnet50", "--weights", "pretrained"], "needs an ImageNet-layout folder"),
    (["--model", "gpt2", "--calib-samples", "100000"], "larger than the train split"),
])
def test_route_bad_input(prepared, args, expect, tmp_path):
    line = _one_error_line(run("-m", "quantization.torch.route", *args, "--runs-dir", str(tmp_path)))
    assert expect in line
    assert not list(tmp_path.glob("*.json"))  # nothing written


def test_missing_dataset_folder_and_corrupt_checkpoint(tmp_path):
    line = _one_error_line(run("-m", "models.prepare", "--model", "resnet50", "--weights", "pretrained",
                               "--weights-path", str(tmp_path / "w.pt"), "--data", str(tmp_path / "nope"),
                               env={"SUITE_CACHE_DIR": str(tmp_path / "cache")}))
    assert str(tmp_path / "w.pt") in line and "do not exist" in line  # the weights are checked first
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "imgs").mkdir()
    line = _one_error_line(run("-m", "models.prepare", "--model", "resnet50", "--weights", "pretrained",
                               "--weights-path", str(bad), "--data", str(tmp_path / "imgs"),
                               env={"SUITE_CACHE_DIR": str(tmp_path / "cache")}))
    assert f"cannot load resnet50 weights from {bad}" in line and "state dict" in line


@pytest.mark.slow
def test_truncated_cached_checkpoint_is_one_line_error(prepared, tmp_path):
    src = ModelSource("resnet50")
    cache = tmp_path / "cache"
    shutil.copytree(src.cache_dir, cache / src.cache_dir.name)
    ckpt = cache / src.cache_dir.name / "model.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    manifest = json.loads((cache / src.cache_dir.name / "manifest.json").read_text())
    manifest["checkpoint"] = str(ckpt)
    (cache / src.cache_dir.name / "manifest.json").write_text(json.dumps(manifest))
    line = _one_error_line(run("-m", "quantization.torch.route", "--model", "resnet50", "--methods", "eager",
                               "--runs-dir", str(tmp_path / "runs"), env={"SUITE_CACHE_DIR": str(cache)}))
    assert str(ckpt) in line and "changed since it was made" in line and "--force" in line  # the recorded hash


def test_gpt2_offline_pretrained_fails_fast(tmp_path):
    p = run("-m", "models.prepare", "--model", "gpt2", "--weights", "pretrained", "--weights-path", "gpt2",
            "--data", "wikitext-2", env={"HF_HUB_OFFLINE": "1", "SUITE_CACHE_DIR": str(tmp_path)}, timeout=120)
    line = _one_error_line(p)
    assert "not found locally" in line and "--weights-path DIR" in line
