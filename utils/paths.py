"""Repository-relative locations. Every default path in the suite comes from here."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
# Git-ignored: trained embedded checkpoints, ONNX files, engines, calibration caches.
CACHE_DIR = Path(os.environ.get("SUITE_CACHE_DIR", MODELS_DIR / "cache"))
# The published reference (committed): rows in results/runs, tables beside them; rewritten only by a command given
# --publish. A user's runs go to results/local/ (git-ignored): runs/ for the rows, the tables beside it.
RESULTS_DIR = REPO_ROOT / "results"
PUBLISHED_RUNS_DIR = RESULTS_DIR / "runs"
LOCAL_DIR = RESULTS_DIR / "local"
RUNS_DIR = LOCAL_DIR / "runs"  # every command's default runs folder
REQUIREMENTS_DIR = REPO_ROOT / "requirements"
VENVS_DIR = Path(os.environ.get("SUITE_VENVS_DIR", REPO_ROOT / ".venvs"))


def report_dir_for(runs_dir: Path, out: Path | None = None) -> Path:
    """Where a runs folder's tables go: `out` when given, else the folder holding it when it is named 'runs'
    (results/local/runs -> results/local/), else `<runs_dir>-report`."""
    if out is not None:
        return Path(out)
    runs_dir = Path(runs_dir)
    return runs_dir.parent if runs_dir.name == "runs" else runs_dir.with_name(runs_dir.name + "-report")
