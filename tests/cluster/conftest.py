"""The cluster tests run in the `ray` environment and drive the bench (`--cluster local`) end to end: they need the
model-preparing (torch) and onnxruntime environments; the tiny fake caches are made in the onnxruntime environment
(tests/onnx_tiny.py needs onnx, which the ray environment does not have)."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from evaluation.launch import envs
from tests import bench_proc
from utils.registry import PREPARE_TOOLCHAIN, TOOLCHAINS

ORT = "onnxruntime"


def need_envs(*names: str) -> None:
    missing = [n for n in names if not envs.is_ready(n)]
    if missing:
        pytest.skip(f"environment(s) {', '.join(missing)} not created yet (python3 -m evaluation.launch.envs {' '.join(missing)})")


def bench(args: list[str], cache: Path, node_cache: Path, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    env = {"SUITE_CACHE_DIR": str(cache), "SUITE_NODE_CACHE_DIR": str(node_cache), **(extra_env or {})}
    return bench_proc.bench(args, env, **kw)


def run_bench(args, cache, node_cache, extra_env=None, timeout=600) -> tuple[int, str]:
    p = bench(args, cache, node_cache, extra_env)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """A copy of the prepared embedded ResNet50 (manifest + FP32 files, no route artifacts) in a fresh cache folder:
    the tests never write into the shared cache. Missing: a failure after the test command's torch folder prepared
    the models, a skip (saying why) when this folder runs alone (tests/prepared.py)."""
    need_envs(TOOLCHAINS[PREPARE_TOOLCHAIN].env.name, ORT)
    from tests.prepared import embedded_manifest
    from utils.specs import ModelSource

    embedded_manifest("resnet50")
    src = ModelSource("resnet50").cache_dir
    dst = tmp_path_factory.mktemp("real") / "cache" / src.name
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            shutil.copy2(p, dst / p.name)  # keeps mtimes: the manifest's records still match
    return dst.parent


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """tests/onnx_tiny.py's fake ResNet50 cache (a tiny ONNX convnet), made in the onnxruntime environment."""
    need_envs(TOOLCHAINS[PREPARE_TOOLCHAIN].env.name, ORT)
    cache = tmp_path_factory.mktemp("tiny") / "cache"
    code = f"from pathlib import Path; from tests.onnx_tiny import fake_resnet_cache; fake_resnet_cache(Path({str(cache)!r}))"
    envs.run_in_env(ORT, ["-c", code], extra_env={"SUITE_CACHE_DIR": cache}, check=True, capture_output=True, timeout=120)
    return cache


def route_processes(marker: str) -> list[int]:
    """Live route processes whose environment mentions `marker` (the test's node cache folder)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if b"quantization.kit" in cmd and marker.encode() in env:
            out.append(int(d.name))
    return out


def wait_for(proc, text: str, timeout: float = 300) -> str:
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)[-4000:]}")
