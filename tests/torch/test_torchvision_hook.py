"""`import torchvision` in the torch environment without the suite's code (utils/torchvision_hook.py, installed by
evaluation/launch/envs.py): CPU torch with the CUDA-only torchvision wheel otherwise fails with `torchvision::nms does not
exist`, e.g. for a user saving a torchvision checkpoint, and breaks `from transformers import GPT2LMHeadModel`.

The environment under test is a layered copy of the one running these tests (its own site-packages folder, the real
packages reached through a .pth path line), so the check never writes into the environment it runs in; the copy
carries a stamp of the current requirements, so `ensure_env` takes it as an existing, ready environment and has to
patch it rather than create it."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.launch import envs

NO_SUITE = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}


def layered_env(root: Path) -> Path:
    """A venv at root/torch over this interpreter's packages, stamped ready for the current requirements."""
    d = root / "torch"
    sp = d / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    sp.mkdir(parents=True)
    (d / "bin").mkdir()
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    (d / "bin" / "python").symlink_to(base)
    (d / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n"
                                  f"version = {sys.version.split()[0]}\n")
    (sp / "zz_underlying.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    (d / envs.STAMP).write_text(json.dumps({"hash": envs.requirements_hash("torch"), "optional_failed": {}}))
    return d


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    # outside the repository, no PYTHONPATH: nothing of the suite can be imported first
    return subprocess.run([str(python), "-c", code], cwd=cwd, env=NO_SUITE, capture_output=True, text=True,
                          timeout=300)


USER = ("import torch, torchvision\n"
        "m = torchvision.models.resnet50(num_classes=10)\n"
        "torch.save(m.state_dict(), 'ckpt.pth')\n"
        "print(sum(p.numel() for p in m.parameters()), torchvision.__version__)\n")


@pytest.fixture
def env_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("SUITE_VENVS_DIR", str(tmp_path / "venvs"))
    monkeypatch.setattr(envs, "OVERRIDES", {})
    return layered_env(tmp_path / "venvs")


def test_plain_import_torchvision_works_in_the_torch_environment(env_copy, tmp_path):
    python = env_copy / "bin" / "python"
    import torch

    before = run(python, USER, tmp_path)
    extension_loads = before.returncode == 0
    if not extension_loads:  # this machine has the fault: CPU torch next to the CUDA-only torchvision wheel
        assert torch.version.cuda is None and "torchvision::nms does not exist" in before.stderr, before.stderr[-800:]
    assert envs.is_ready("torch")  # an existing environment: ensure_env must patch it, not create it
    envs.ensure_env("torch")
    assert not (env_copy / envs.STAMP).read_text().count("created")  # not re-created: our stamp is still there
    (tmp_path / "ckpt.pth").unlink(missing_ok=True)
    p = run(python, USER + "import _ptq_suite_torchvision_hook as h; print(h.acted)", tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    n_params, version, acted = p.stdout.split()[0], p.stdout.split()[1], p.stdout.strip().splitlines()[-1]
    assert int(n_params) == 23_528_522 and version.startswith("0.28")  # torchvision's ResNet50, 10 classes
    assert (tmp_path / "ckpt.pth").stat().st_size > 90_000_000  # the user's checkpoint is written
    assert acted == ("torchvision's extension loads: nothing to do" if extension_loads else "op schemas defined")
    # what the same fault broke: transformers' GPT-2 class (it imports torchvision when installed)
    p = run(python, "from transformers import GPT2LMHeadModel; print(GPT2LMHeadModel.__name__)", tmp_path)
    assert p.returncode == 0 and p.stdout.split()[-1] == "GPT2LMHeadModel", p.stderr[-2000:]


def test_the_hook_costs_nothing_at_start_and_imports_no_torch(env_copy, tmp_path):
    envs.ensure_env("torch")
    python = env_copy / "bin" / "python"
    p = run(python, "import sys; print('torch' in sys.modules, 'torchvision' in sys.modules, "
                    "type(next(f for f in sys.meta_path if 'torchvision' in type(f).__module__)).__name__)", tmp_path)
    assert p.returncode == 0 and p.stdout.split() == ["False", "False", "Finder"], p.stderr[-2000:]
    t = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert run(python, "pass", tmp_path).returncode == 0
        t.append(time.perf_counter() - t0)
    assert min(t) < 0.5  # an interpreter start, not a torch import (several seconds here)


def test_ensure_env_writes_the_hook_once_and_rewrites_a_changed_one(env_copy):
    sp = envs.site_packages("torch")
    envs.ensure_env("torch")
    files = sorted(p.name for p in sp.glob("_ptq_suite_*"))
    assert files == ["_ptq_suite_torchvision_hook.pth", "_ptq_suite_torchvision_hook.py"]
    assert envs.install_site_hooks("torch") == []  # already there and equal: nothing written
    (sp / "_ptq_suite_torchvision_hook.py").write_text("# an older hook\n")
    assert envs.install_site_hooks("torch") == ["_ptq_suite_torchvision_hook.py"]
    assert "define_missing_ops" in (sp / "_ptq_suite_torchvision_hook.py").read_text()
