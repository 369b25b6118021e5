from utils.torchvision_compat import import_torchvision

# CPU torch + the CUDA-only torchvision wheel: define the missing op schemas before transformers
# imports torchvision (FACTS.md); a no-op where torchvision's extension loads.
import_torchvision()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def embedded_models() -> dict:
    """The embedded ResNet50 and GPT-2, prepared by models.prepare (trained on first use, then verified by hash and
    reused): this folder's environment is the one that prepares models, so a test that needs them gets them here and
    FAILS when preparing them fails; it never skips for a missing model."""
    from utils.paths import REPO_ROOT
    from utils.specs import ModelSource

    p = subprocess.run([sys.executable, "-m", "models.prepare", "--model", "resnet50,gpt2"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 0, f"models.prepare failed (exit {p.returncode}): {p.stderr[-2000:]}"
    return {m: ModelSource(m).load_manifest() for m in ("resnet50", "gpt2")}
