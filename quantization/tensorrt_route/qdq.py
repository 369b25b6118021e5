"""Find the explicit Q/DQ ONNX the ModelOpt-ONNX route wrote (plain Python).

That route writes `<cache_dir>/modelopt-onnx/index.json`:
`{"max": {"path": ..., "calib_sha": ..., "calib_samples": ...}, "entropy": {...}}`.
A relative `path` is read relative to the index's folder first, then to the repository root.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from utils.paths import REPO_ROOT

QDQ_METHODS = ("max", "entropy")


@dataclass(frozen=True)
class QdqEntry:
    method: str
    path: Path
    calib_sha: str | None
    calib_samples: int | None
    meta: dict = field(default_factory=dict)  # the whole index entry (src_onnx_sha, high_precision_dtype, ...)


def index_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / "modelopt-onnx" / "index.json"


def run_first(model: str, method: str) -> str:
    return (f"no Q/DQ ONNX from ModelOpt ({method!r} calibration) for {model}: run the modelopt-onnx route first "
            f"(python3 -m evaluation.bench --toolchains modelopt-onnx, or in its environment `python -m "
            f"quantization.modelopt_onnx_route --model {model} --methods {method}`)")


def find_qdq(cache_dir: Path, model: str, method: str = "max") -> tuple[QdqEntry | None, str]:
    """(entry, "") when the Q/DQ model exists, else (None, reason for a skipped row)."""
    idx = index_path(cache_dir)
    try:
        index = json.loads(idx.read_text())
    except FileNotFoundError:
        return None, run_first(model, method)
    except (OSError, ValueError):
        return None, f"{idx} is unreadable; " + run_first(model, method)
    entry = index.get(method) if isinstance(index, dict) else None
    if not isinstance(entry, dict) or not entry.get("path"):
        return None, run_first(model, method)
    p = Path(entry["path"])
    candidates = [p] if p.is_absolute() else [idx.parent / p, REPO_ROOT / p]
    for c in candidates:
        if c.is_file():
            n = entry.get("calib_samples")
            return QdqEntry(method, c, entry.get("calib_sha"), int(n) if n is not None else None, dict(entry)), ""
    return None, f"{idx} lists {entry['path']} for {method!r}, which does not exist; " + run_first(model, method)
