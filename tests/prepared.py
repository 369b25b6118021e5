"""The prepared embedded models, for test folders whose environment cannot prepare them (no torch/transformers
training there): the test command (`python3 -m evaluation.test`) runs the model-preparing folder (tests/torch) first,
which prepares them, and then tells every later folder so (PREPARED_ENV_VAR). A model missing after that is a
failure; only a folder run on its own, before any preparation, skips, saying why."""
from __future__ import annotations

import os

import pytest

PREPARED_ENV_VAR = "SUITE_TESTS_MODELS_PREPARED"


def embedded_manifest(model: str) -> dict:
    """The embedded model's verified manifest; fails when the test command's preparing folder ran before this one
    yet the model is missing or damaged, skips (with the reason) when nothing has prepared it."""
    from utils.errors import SuiteError
    from utils.registry import PREPARE_TOOLCHAIN
    from utils.specs import ModelSource

    try:
        return ModelSource(model).load_manifest()
    except SuiteError as exc:
        if os.environ.get(PREPARED_ENV_VAR):
            pytest.fail(f"embedded {model} missing although this test run's {PREPARE_TOOLCHAIN} folder prepared the "
                        f"embedded models first: {exc}")
        pytest.skip(f"embedded {model} not prepared ({exc}) and this folder's environment cannot train it: run the "
                    f"{PREPARE_TOOLCHAIN} tests first (python3 -m evaluation.test does), then a missing model fails")
