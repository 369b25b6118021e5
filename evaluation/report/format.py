"""How the report writes a number: empty for a missing value, an interval with its † mark, a delta with its ~."""
from __future__ import annotations

import math

import pandas as pd


def fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    try:
        if pd.isna(x):
            return ""
    except (TypeError, ValueError):
        pass
    return format(x, spec)


def ci_text(p, lo, hi, spec: str = ".2f") -> str:
    """'2.95 [2.90–3.01]', with '†' when the interval contains 1.0 (no speedup shown)."""
    if fmt(p, spec) == "":
        return ""
    if fmt(lo, spec) == "":
        return fmt(p, spec)
    mark = " †" if lo <= 1.0 <= hi and not (lo == hi == 1.0) else ""
    return f"{p:{spec}} [{lo:{spec}}–{hi:{spec}}]{mark}"


def is_false(x) -> bool:
    """False for a missing value; bool(x) is False for False/numpy False/'False' (a CSV round trip)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return False
    return str(x) == "False"


NOT_TIMED = "not timed"


def is_pending(r) -> bool:
    """A scored row whose batch was not timed (its latency columns come later, or its run stopped first)."""
    v = r.get("pending") if hasattr(r, "get") else getattr(r, "pending", "")
    return isinstance(v, str) and v not in ("", "nan")


def delta_text(r) -> str:
    d = fmt(r["delta"], "+.2f")
    return d + (" ~" if d and is_false(r["delta_significant"]) else "")
