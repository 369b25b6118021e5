"""Find the explicit Q/DQ ONNX the ModelOpt-ONNX route wrote (plain Python).

That route writes `<model cache>/modelopt-onnx/index.json`: `{"entries": {config key: entry}}`, one
entry per artifact (method, path relative to the index's folder, file hash, calibration hash, source
ONNX hash, options). The entry matching this run's calibration set and FP32 ONNX is preferred; else
the newest entry of the method, with notes saying what differs. A listed file that changed since
ModelOpt wrote it is never used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from utils import artifacts

QDQ_METHODS = ("max", "entropy")
INDEX = "index.json"


@dataclass(frozen=True)
class QdqEntry:
    method: str
    path: Path
    calib_sha: str | None
    calib_samples: int | None
    meta: dict = field(default_factory=dict)  # the whole index entry (src_onnx_sha, high_precision_dtype, ...)
    notes: tuple[str, ...] = ()


def index_path(modelopt_dir: Path) -> Path:
    return Path(modelopt_dir) / INDEX


def run_first(model: str, method: str) -> str:
    return (f"no Q/DQ ONNX from ModelOpt ({method!r} calibration) for {model}: run the modelopt-onnx route first "
            f"(python3 -m evaluation.bench --toolchains modelopt-onnx, or in its environment `python -m "
            f"quantization.modelopt_onnx.route --model {model} --methods {method}`)")


def find_qdq(modelopt_dir: Path, model: str, method: str = "max", *, calib_sha: str | None = None,
             src_sha: str | None = None) -> tuple[QdqEntry | None, str]:
    """(entry, "") when a usable Q/DQ model exists, else (None, reason for a skipped row)."""
    idx = index_path(modelopt_dir)
    try:
        index = json.loads(idx.read_text())
    except FileNotFoundError:
        return None, run_first(model, method)
    except (OSError, ValueError):
        return None, f"{idx} is unreadable; " + run_first(model, method)
    entries = index.get("entries") if isinstance(index, dict) else None
    if not isinstance(entries, dict):
        return None, f"{idx} is in an older format; " + run_first(model, method)
    cands = [e for e in entries.values() if isinstance(e, dict) and e.get("method") == method and e.get("path")]
    if not cands:
        return None, run_first(model, method)

    def rank(e: dict) -> tuple:
        return (e.get("calib_sha") == calib_sha, e.get("src_onnx_sha") == src_sha, e.get("made") or 0)

    problems = []
    for e in sorted(cands, key=rank, reverse=True):
        p = artifacts.resolve(idx.parent, e["path"])
        why = artifacts.check(p, e.get("file"))
        if why:
            problems.append(why)
            continue
        notes = []
        if src_sha and e.get("src_onnx_sha") and e["src_onnx_sha"] != src_sha:
            notes.append("the Q/DQ model was made from another FP32 ONNX than the current manifest's "
                         "(rerun the modelopt-onnx route)")
        if calib_sha and e.get("calib_sha") and e["calib_sha"] != calib_sha:
            notes.append(f"the Q/DQ model was calibrated on another calibration set than this run's "
                         f"({e['calib_sha']} vs {calib_sha})")
        n = e.get("calib_samples")
        return QdqEntry(method, p, e.get("calib_sha"), int(n) if n is not None else None, dict(e), tuple(notes)), ""
    return None, f"{idx}: no usable {method!r} entry ({'; '.join(problems)}); " + run_first(model, method)
