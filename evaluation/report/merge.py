"""Several runs folders (copied from other machines) merged into one set of rows: per key the newest ok row."""
from __future__ import annotations

from pathlib import Path

from utils.errors import SuiteError
from utils.rows import ResultRow, read_attempts, read_rows


def _stamp(row: ResultRow) -> str:
    return str(row.environment.get("timestamp") or "")


def _newer(a: ResultRow, b: ResultRow | None) -> bool:
    """Does `a` win over `b` for the same key: an ok row over any other, else the newer timestamp (ties: later)."""
    if b is None:
        return True
    if (a.status == "ok") != (b.status == "ok"):
        return a.status == "ok"
    return _stamp(a) >= _stamp(b)


def merge_runs(runs_dirs, damaged: list | None = None) -> tuple[list[ResultRow], dict[str, ResultRow]]:
    """Rows and latest attempts of one or several run folders, merged by key (see the module docstring)."""
    kept: dict[str, ResultRow] = {}
    others: dict[str, ResultRow] = {}  # newest failed/skipped row of each key, from rows and attempts alike
    for d in runs_dirs:
        d = Path(d)
        if not d.is_dir():
            raise SuiteError(f"--runs-dir {d} is not a folder")
        rows = read_rows(d, damaged)
        for r in rows + list(read_attempts(d).values()):
            if _newer(r, kept.get(r.key)):
                if r.key in kept and kept[r.key].status != "ok":
                    _keep_newest(others, kept[r.key])
                kept[r.key] = r
            elif r.status != "ok":
                _keep_newest(others, r)
    attempts = {k: a for k, a in others.items()
                if k in kept and kept[k].status == "ok" and _stamp(a) > _stamp(kept[k])}
    return sorted(kept.values(), key=lambda r: r.key), attempts


def _keep_newest(into: dict, row: ResultRow) -> None:
    if row.key not in into or _stamp(row) >= _stamp(into[row.key]):
        into[row.key] = row
