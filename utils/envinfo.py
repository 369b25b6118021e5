"""The environment record stored in every result row."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata

from utils.paths import LOCAL_DIR, REPO_ROOT
from utils.registry import recorded_packages

DEVICE_FILE = LOCAL_DIR / "device.json"  # default; a bench run points SUITE_DEVICE_FILE at its own report folder


def device_file():
    """Where this run's device ceilings live: SUITE_DEVICE_FILE (set by the bench for its run), else results/local/."""
    from pathlib import Path

    return Path(os.environ["SUITE_DEVICE_FILE"]) if os.environ.get("SUITE_DEVICE_FILE") else DEVICE_FILE
COMMON_PACKAGES = recorded_packages()  # from the toolchain declarations (utils/registry.py)


def _is_suite_venv() -> bool:
    """This interpreter is a venv made by evaluation/launch/envs.py (it leaves its stamp file in the venv)."""
    from pathlib import Path

    return sys.prefix != sys.base_prefix and (Path(sys.prefix) / "suite-env.json").is_file()


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD (+dirty), or SUITE_GIT_COMMIT where the driver of a cluster run says which commit it shipped (a node's
    copy of the working tree has no .git)."""
    if os.environ.get("SUITE_GIT_COMMIT"):
        return os.environ["SUITE_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        # what a publish itself rewrites (results/, the README's and docs' generated blocks) is not code: a run
        # measured on committed code stays "clean" while it writes its own results
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results",
                                ":!README.md", ":!docs"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names=COMMON_PACKAGES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_ceilings() -> dict:
    try:
        return json.loads(device_file().read_text())
    except (OSError, ValueError):
        return {}


def environment_record(threads: int | None = None, gpu: str | None = None, **extra) -> dict:
    rec = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": gpu,
        "python": platform.python_version(),
        "interpreter": sys.executable,
        # a suite venv (.venvs/<env>) or an existing interpreter given with --python / --use-current-python
        "interpreter_source": os.environ.get("SUITE_ENV_SOURCE") or (
            "suite venv" if _is_suite_venv() else "not a suite venv (run directly)"),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "launcher": os.environ.get("SUITE_LAUNCHER", "local"),
        "ceilings": device_ceilings(),
    }
    rec.update(extra)
    return rec
