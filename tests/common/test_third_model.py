"""A third model through its declaration alone: tests/models/tiny_llama.py declares a Llama-style decoder (a user's
models file, passed by --models-file); the bench prepares it (trains one epoch offline, exports both ONNX graphs)
and runs it through torch and onnxruntime on the CPU like the suite's own models. Nothing outside tests/ names it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils.paths import REPO_ROOT

DECL = REPO_ROOT / "tests" / "models" / "tiny_llama.py"
NAME = "tiny-llama"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("third")
    cmd = [sys.executable, "-m", "evaluation.bench", "--models-file", str(DECL), "--models", NAME,
           "--toolchains", "torch,onnxruntime", "--methods", "eager,dynamic,fp32,minmax", "--devices", "cpu",
           "--no-ceilings", "--min-iters", "5", "--min-time", "0.1", "--runs-dir", str(work / "runs")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SUITE_CACHE_DIR": str(work / "cache")}
    env.pop("SUITE_MODELS", None)
    p = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return work, pd.read_csv(work / "summary.csv"), p.stderr


def test_the_declared_model_runs_through_torch_and_onnxruntime(run):
    work, df, _ = run
    assert set(df["model"]) == {NAME} and (df["status"] == "ok").all(), df[df["status"] != "ok"][["method", "reason"]]
    full = df[df["latency_kind"] != "decode"]
    got = {(t, m, b) for t, m, b in zip(full["toolchain"], full["method"], full["batch"])}
    assert got == {(t, m, b) for t, ms in (("torch", ("eager", "dynamic")), ("onnxruntime", ("fp32", "minmax")))
                   for m in ms for b in (1, 2)}
    decode = df[df["latency_kind"] == "decode"]
    assert sorted(decode["method"]) == ["dynamic", "eager", "fp32", "minmax"]  # KV-cache generation on both runtimes
    ppl = full.groupby(["toolchain", "method"])["value"].first()
    # the same weights on the same windows: torch's FP32 and ONNX Runtime's FP32 perplexity agree
    assert ppl["onnxruntime", "fp32"] == pytest.approx(ppl["torch", "eager"], rel=1e-4)
    for tc, m in (("torch", "dynamic"), ("onnxruntime", "minmax")):
        assert ppl[tc, m] != ppl[tc, "eager" if tc == "torch" else "fp32"]  # quantized, not the FP32 model again
        assert ppl[tc, m] == pytest.approx(ppl["torch", "eager"], rel=0.05)
    assert (full["metric"] == "ppl").all() and (full["throughput_unit"] == "tokens/s").all()
    assert (full["latency_p50_ms"] > 0).all()


def test_coverage_follows_the_declared_scope(run):
    """The LM head stays FP32 (the declaration's LM_SCOPES default): both INT8 variants cover exactly the blocks'
    linear layers' share of the multiply-accumulates the prepared model's MAC table counts."""
    work, df, _ = run
    (manifest,) = (work / "cache").glob(f"{NAME}-embedded-*/manifest.json")
    man = json.loads(manifest.read_text())
    table = man["layer_macs"]
    blocks = sum(v for k, v in table["layers"].items() if ":" not in k and k != "lm_head")
    assert "lm_head" in table["layers"] and any(k.endswith(":scores") for k in table["layers"])
    expect = round(100 * blocks / table["total"], 2)
    q = df[df["method"].isin(["dynamic", "minmax"]) & (df["latency_kind"] != "decode")]
    assert list(q["coverage_pct"].round(2).unique()) == [expect]
    # what preparation recorded from the config: grouped-query attention and a gated MLP
    assert (man["arch"], man["n_head"], man["n_kv_head"], man["head_dim"], man["mlp_gated"]) == ("hf:llama", 4, 2, 16, True)
    train = json.loads((manifest.parent / "train.json").read_text())
    assert train["ppl_trained"] < train["ppl_untrained"] / 5  # it learned the corpus in its one epoch


def test_nothing_outside_tests_names_the_third_model():
    code = [p for p in REPO_ROOT.rglob("*.py") if ".venvs" not in p.parts and "tests" not in p.relative_to(
        REPO_ROOT).parts[:1]]
    assert code
    hits = [str(p) for p in code if NAME in p.read_text() or "hf:llama" in p.read_text()]
    assert hits == []


def test_a_bad_models_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "models.py"
    bad.write_text("MODELS = [1]\n")
    p = subprocess.run([sys.executable, "-m", "evaluation.bench", "--models-file", str(bad), "--dry-run"],
                       cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                       timeout=60)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert p.returncode == 2 and lines == [f"error: models file {bad} must define MODELS = [ModelDecl(...), ...] "
                                           "(from models.catalog import ModelDecl)"], lines
    bad.write_text("from models.catalog import ModelDecl\nMODELS = [ModelDecl('x', 'language-model', 'torchvision:"
                   "vit_b_16', (1,), 8)]\n")
    p = subprocess.run([sys.executable, "-m", "evaluation.bench", "--models-file", str(bad), "--dry-run"],
                       cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "arch 'torchvision:vit_b_16' is not one of hf:<name>" in p.stderr, p.stderr[-500:]
