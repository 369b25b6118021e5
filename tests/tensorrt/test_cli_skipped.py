"""The command, run where TensorRT (or a GPU) is missing, writes skipped rows and exits 0."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from quantization.tensorrt import route
from quantization.tensorrt.plan import NOT_INSTALLED

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("fp32", "fp16", "int8-entropy", "int8-qdq")


def trt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def test_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "quantization.tensorrt", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--qdq-method" in out.stdout and "--calib-partial" in out.stdout


@pytest.mark.skipif(trt_installed(), reason="TensorRT is installed here: the route runs instead of skipping")
def test_cli_writes_exactly_the_skipped_rows(runs_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "quantization.tensorrt", "--runs-dir", str(runs_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    got = sorted((r["model"], r["method"], r["batch"]) for r in rows)
    want = sorted([(m, v, b) for m, bs in (("resnet50", (1, 32)), ("gpt2", (1, 8))) for v in VARIANTS for b in bs])
    assert got == want
    for r in rows:
        assert r["status"] == "skipped" and r["reason"] == NOT_INSTALLED
        assert r["toolchain"] == "tensorrt" and r["device"] == "cuda"
        assert r["precision"] == {"fp32": "fp32", "fp16": "fp16"}.get(r["method"], "int8")
        assert r["metric"] == {"resnet50": "top1", "gpt2": "ppl"}[r["model"]]


def test_selected_methods_and_batches_only(runs_dir, monkeypatch):
    monkeypatch.setattr(route, "tensorrt_state", lambda: (None, None, NOT_INSTALLED))
    rc = route.main(["--model", "gpt2", "--methods", "int8-entropy,int8-qdq", "--batches", "4",
                     "--runs-dir", str(runs_dir)])
    assert rc == 0
    names = sorted(p.name for p in runs_dir.glob("*.json"))
    assert names == ["gpt2__embedded__tensorrt__int8-entropy__int8__cuda__b4.json",
                     "gpt2__embedded__tensorrt__int8-qdq__int8__cuda__b4.json"]


def test_tensorrt_without_cuda_device_skips_with_that_reason(runs_dir, monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.16.1.11"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr("quantization.tensorrt.gpu.cuda_problem", lambda: "cudaErrorNoDevice")
    rc = route.main(["--model", "resnet50", "--runs-dir", str(runs_dir)])
    assert rc == 0
    rows = [json.loads(p.read_text()) for p in runs_dir.glob("*.json")]
    assert len(rows) == 8
    assert {r["reason"] for r in rows} == {"no CUDA device (cudaErrorNoDevice)"}
    assert {r["environment"]["tensorrt"] for r in rows} == {"10.16.1.11"}


def test_bad_flag_is_a_one_line_error(runs_dir, capsys):
    assert route.main(["--model", "resnet50", "--methods", "int4", "--runs-dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'int4'") and err.count("\n") == 1
