"""Shared test helpers. Each tests/<env>/ folder runs inside that toolchain's own virtualenv."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cuda_available() -> bool:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python
    except ImportError:
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


def pytest_collection_modifyitems(config, items):
    if any("requires_cuda" in item.keywords for item in items) and not cuda_available():
        skip = pytest.mark.skip(reason="CUDA is not available (no GPU or driver on this machine)")
        for item in items:
            if "requires_cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def runs_dir(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d
