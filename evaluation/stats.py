"""Re-export of utils.stats, the suite's one significance module (kept so existing imports work)."""
from __future__ import annotations

from utils.stats import bootstrap_ppl_delta, mcnemar_exact  # noqa: F401

__all__ = ["mcnemar_exact", "bootstrap_ppl_delta"]
