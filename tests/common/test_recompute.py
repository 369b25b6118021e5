"""Every committed speedup and interval can be rebuilt from the committed row files.

Per row: a paired speedup (speedup_paired, speedup_ci_low/high) is recomputed from the row's own samples and
trial indices and its baseline's samples and trial indices (extra.latency, extra.latency.baseline), with the
interval settings the row records. Per table: a committed summary.csv is rebuilt from the row files of its runs
folder (evaluation.report.aggregate.build_table: combined passes, speedups over the best FP32 row, between-run columns)
and every number compared.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.report.table import build_table
from evaluation.report.combine import paired_samples
from utils.paths import RESULTS_DIR
from utils.rows import read_attempts, read_rows
from utils.stats import speedup_ci



def _is_row(p: Path) -> bool:
    try:
        return "metric" in json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return False


ROW_DIRS = sorted({p.parent for p in RESULTS_DIR.rglob("*.json")
                   if "local" not in p.relative_to(RESULTS_DIR).parts
                   and not {"items", "attempts", "outputs", "damaged", "plans"} & set(p.parts) and _is_row(p)})
TABLES = [d for d in ROW_DIRS if (d.parent / "summary.csv").is_file() and d.name == "runs"]
NUMBERS = ["latency_p50_ms", "speedup", "speedup_ci_low", "speedup_ci_high", "speedup_vs_best_fp32",
           "speedup_best_ci_low", "speedup_best_ci_high", "repeats", "p50_spread_pct", "speedup_pass_min",
           "speedup_pass_max", "best_speedup_pass_min", "best_speedup_pass_max", "value", "delta"]


def test_there_are_committed_rows():
    assert RESULTS_DIR / "runs" in ROW_DIRS and TABLES


@pytest.mark.parametrize("folder", ROW_DIRS, ids=lambda p: str(p.relative_to(RESULTS_DIR)))
def test_every_paired_speedup_is_recomputed_from_its_row(folder):
    n, rows = 0, read_rows(folder)
    for r in rows:
        if r.status != "ok" or r.speedup_paired is None:
            continue
        lat = r.extra.get("latency") or {}
        base = lat.get("baseline")
        if base is None:  # the baseline itself: 1.0 by definition, said so
            assert (r.speedup_paired, r.speedup_ci_low, r.speedup_ci_high) == (1.0, 1.0, 1.0), r.key
            assert r.speedup_vs.split("/", 1)[1].split(" ")[0] == r.method, r.key
            continue
        pair = paired_samples(r)
        assert pair is not None, f"{r.key}: samples without trial indices: not recomputable"
        p, lo, hi = speedup_ci(*pair, **{k: v for k, v in base["speedup_ci"].items()})
        assert (p, lo, hi) == pytest.approx((r.speedup_paired, r.speedup_ci_low, r.speedup_ci_high), rel=1e-12), r.key
        assert r.latency_samples == len(lat["samples_ms"]) and lat["n"] == len(lat["trials"])
        assert np.median(lat["samples_ms"]) == pytest.approx(r.latency_p50_ms, rel=1e-12)
        n += 1
    if any(r.status == "ok" and r.latency_p50_ms is not None and r.precision != "fp32" for r in rows):
        assert n > 0  # timed variants: their paired speedups were checked


@pytest.mark.parametrize("folder", TABLES, ids=lambda p: str(p.relative_to(RESULTS_DIR)))
def test_every_committed_table_number_is_rebuilt_from_the_rows(folder):
    committed = pd.read_csv(folder.parent / "summary.csv")
    rebuilt = build_table(read_rows(folder), read_attempts(folder))
    key = ["model", "weights", "toolchain", "method", "precision", "device", "batch", "latency_kind", "eval_limit"]
    a = committed.fillna({"latency_kind": "", "eval_limit": -1}).set_index(key).sort_index()
    b = rebuilt.fillna({"latency_kind": "", "eval_limit": -1}).set_index(key).sort_index()
    assert list(a.index) == list(b.index)
    for col in NUMBERS:
        x, y = a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float)
        same = np.isclose(x, y, rtol=1e-9, atol=0, equal_nan=True)
        assert same.all(), (col, a.index[~same][:5].tolist(), x[~same][:5], y[~same][:5])
