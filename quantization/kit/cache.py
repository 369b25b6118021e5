"""Verified cached route artifacts, whatever their format (an ONNX file, an OpenVINO IR .xml + .bin, an engine).

An artifact is named by the hash of everything that made it (`artifact_path`) and has a small JSON of how
it was made beside it (`<name>.json`: calibration time, options, and the hash record of every file). On
reuse every file is checked against its record (utils/artifacts.py: size + mtime first, the full hash
when those changed); a changed, truncated or missing file makes the artifact again, with a warning. The
files are made in a temporary folder beside the artifact and moved in companions first, the main file
last, so a main file that exists always has its companions. Imports no toolchain library.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

from utils import artifacts
from utils.atomic import atomic_write_json, config_key
from utils.errors import SuiteError

log = logging.getLogger(__name__)


def artifact_path(cache_root: Path, stem: str, key_obj, suffix: str = ".onnx") -> Path:
    """`<cache_root>/<stem>-<hash of key_obj><suffix>`: the name changes whenever an input changes."""
    return Path(cache_root) / f"{stem}-{config_key(key_obj, 12)}{suffix}"


def meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def read_meta(path: Path) -> dict | None:
    meta = meta_path(path)
    if not (Path(path).is_file() and meta.is_file()):
        return None
    try:
        return json.loads(meta.read_text())
    except ValueError:
        return None


def write_meta(path: Path, meta: dict) -> None:
    atomic_write_json(meta_path(path), meta)


def cached_artifact(out: Path, make: Callable[[Path], dict], *, companions: tuple[str, ...] = (),
                    validate: Callable[[Path], object] | None = None) -> tuple[Path, dict, bool]:
    """Reuse `out` when its meta JSON exists and `out` and each companion (`out` with that suffix, e.g. ".bin")
    still match the hashes recorded there, and `validate(out)` (if given) raises no SuiteError; else make it.

    `make(tmp_out)` writes `tmp_out` (and its companions beside it) in a temporary folder and returns the meta
    dict; the files are then moved in and fingerprinted. Returns (path, meta, reused).
    """
    out = Path(out)
    meta = read_meta(out)
    if meta is not None:
        why = artifacts.check(out, meta.get("file"))
        for suffix in companions:
            record = (meta.get("companions") or {}).get(suffix)
            why = why or (artifacts.check(out.with_suffix(suffix), record) if record
                          else f"{out.with_suffix(suffix)} has no hash record")
        if why is None and validate is not None:
            try:
                validate(out)
            except SuiteError as exc:
                why = str(exc)
        if why is None:
            return out, meta, True
        log.warning("cached artifact not reused: %s; making it again", why)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".make-") as tmp:
        tmp_out = Path(tmp) / out.name
        meta = make(tmp_out)
        missing = [p.name for p in [tmp_out, *(tmp_out.with_suffix(s) for s in companions)] if not p.is_file()]
        if missing:
            raise SuiteError(f"making {out.name} wrote no {', '.join(missing)}")
        out.unlink(missing_ok=True)  # never leave an old main file beside new companions
        for suffix in companions:
            os.replace(tmp_out.with_suffix(suffix), out.with_suffix(suffix))
        os.replace(tmp_out, out)
    meta["file"] = artifacts.fingerprint(out)
    if companions:
        meta["companions"] = {s: artifacts.fingerprint(out.with_suffix(s)) for s in companions}
    write_meta(out, meta)
    return out, meta, False
