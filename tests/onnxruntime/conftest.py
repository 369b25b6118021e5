"""Fixtures over the shared tiny-ONNX helpers in tests/onnx_tiny.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.onnx_tiny import fake_gpt2_cache, fake_resnet_cache, model_cache_dir, run_route, tiny_convnet, tiny_lm


@pytest.fixture(scope="session")
def convnet_path(tmp_path_factory) -> Path:
    return tiny_convnet(tmp_path_factory.mktemp("tiny") / "convnet.onnx")


@pytest.fixture(scope="session")
def lm_path(tmp_path_factory) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("tiny") / "lm.onnx")


@pytest.fixture(scope="session")
def h():
    """The helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(tiny_convnet=tiny_convnet, tiny_lm=tiny_lm, fake_resnet_cache=fake_resnet_cache,
                           fake_gpt2_cache=fake_gpt2_cache, run_route=run_route, model_cache_dir=model_cache_dir)
