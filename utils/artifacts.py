"""Verified cached artifacts: each file is recorded with its hash, size and modification time.

On reuse the cheap check (size + mtime) runs first; only when those changed is the full hash
recomputed, and a mismatch is reported as one line naming the file. Paths inside a cache
folder are stored relative to it, so a moved cache (or a container mount at another path)
still finds its files.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.atomic import sha256_file
from utils.errors import SuiteError


class StaleArtifact(SuiteError):
    """A cached file no longer matches the hash recorded when it was made."""


def fingerprint(path: Path | str) -> dict:
    """{'sha256', 'size', 'mtime_ns'} of a file, or of every file under a directory (hash over sorted names)."""
    p = Path(path)
    if p.is_dir():
        import hashlib

        h, size, mtime = hashlib.sha256(), 0, 0
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            st = f.stat()
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256_file(f).encode())
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
        return {"sha256": h.hexdigest(), "size": size, "mtime_ns": mtime}
    st = p.stat()
    return {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _quick(p: Path) -> tuple[int, int]:
    if p.is_dir():
        files = [x.stat() for x in p.rglob("*") if x.is_file()]
        return sum(s.st_size for s in files), max((s.st_mtime_ns for s in files), default=0)
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def check(path: Path | str, record: dict | None) -> str | None:
    """None when `path` still matches `record`, else a one-line description of the problem."""
    p = Path(path)
    if not p.exists():
        return f"{p} is missing"
    if not record or "sha256" not in record:
        return None  # made before hashes were recorded: nothing to compare
    size, mtime = _quick(p)
    if size == record.get("size") and mtime == record.get("mtime_ns"):
        return None
    if p.is_file() and size == 0:
        return f"{p} is empty (0 bytes; recorded {record.get('size')} bytes)"
    fp = fingerprint(p)
    if fp["sha256"] == record["sha256"]:
        return None  # touched but identical
    return (f"{p} changed since it was made (sha256 {fp['sha256'][:12]}, {fp['size']} bytes; recorded "
            f"{record['sha256'][:12]}, {record.get('size')} bytes)")


def verify(path: Path | str, record: dict | None, *, fix: str) -> Path:
    """`path` if it matches `record`, else StaleArtifact naming the file and `fix` (what to do)."""
    why = check(path, record)
    if why:
        raise StaleArtifact(f"{why}: {fix}")
    return Path(path)


def relative_to(root: Path | str, path: Path | str) -> str:
    """`path` relative to `root` when inside it (stored in manifests/indexes), else as given."""
    p, r = Path(path), Path(root)
    try:
        return str(p.resolve().relative_to(r.resolve()))
    except ValueError:
        return str(p)


def resolve(root: Path | str, stored: str) -> Path:
    """A stored path: relative ones are inside `root`; absolute ones (user files outside the cache) as they are."""
    p = Path(stored)
    return p if p.is_absolute() else Path(root) / p


def touch_same(path: Path | str, record: dict) -> None:
    """Restore a recorded mtime (used by tests that copy caches)."""
    os.utime(path, ns=(record["mtime_ns"], record["mtime_ns"]))
