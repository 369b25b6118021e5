"""Repository-relative locations. Every default path in the suite comes from here."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
# Git-ignored: trained embedded checkpoints, ONNX files, engines, calibration caches.
CACHE_DIR = Path(os.environ.get("SUITE_CACHE_DIR", MODELS_DIR / "cache"))
RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = RESULTS_DIR / "runs"
REQUIREMENTS_DIR = REPO_ROOT / "requirements"
VENVS_DIR = Path(os.environ.get("SUITE_VENVS_DIR", REPO_ROOT / ".venvs"))
