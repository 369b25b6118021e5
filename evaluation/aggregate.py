"""Rows -> results/summary.csv, results/summary.md and plots (report env: pandas, matplotlib, scipy).

    python -m evaluation.aggregate [--runs-dir results/runs] [--out results]
    python -m evaluation.aggregate --runs-dir from-gpu-box/runs --runs-dir results/cluster/runs --out merged

Several --runs-dir (run folders copied from other machines) merge into one table: rows of the same key (model,
weights, toolchain, method, precision, device, batch, subset) keep the newest ok row by its timestamp, never a
failed or skipped row over an ok one; a newer failed/skipped row beside the kept ok row is noted as its latest
attempt. Rows of different devices and hosts stand side by side (`host`, `launcher` columns).

Every number comes from the JSON rows; nothing is parsed from printed output. Deltas and
`speedup` compare with the FP32 row the registry names as the toolchain's baseline (same model,
weights, device, batch, latency kind); `speedup_vs_best_fp32` with the fastest FP32 row of the
same model, weights, device and batch whatever the toolchain; `efficiency` is the row's useful
operations per second over the device ceiling (matmul microbenchmark of the same run) for the
precision its matmuls run in; `roofline_pct` is the row's rate over the lower of two bounds, the compute ceiling and
the memory bandwidth over its estimated bytes per call (`bytes_per_call`, utils/traffic.py), `bound` which one applies.
"""
from __future__ import annotations

import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.combine import best_speedup_passes, combine_passes
from utils.metrics import unpack_bits
from utils.stats import block_bootstrap_ppl, mcnemar_exact, speedup_ci
from utils.atomic import atomic_write_figure, atomic_write_text
from utils.cli import ArgParser
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import PUBLISHED_RUNS_DIR, REPO_ROOT, RESULTS_DIR, RUNS_DIR, report_dir_for
from utils.registry import ORDER, TOOLCHAINS
from utils.rows import ResultRow, read_attempts, read_rows
from utils.specs import RANDOM_REASON
from utils import traffic

log = logging.getLogger("evaluation.aggregate")

COLUMNS = ["model", "weights", "dataset", "toolchain", "method", "precision", "device", "batch", "metric", "value",
           "baseline_value", "delta", "delta_significant", "delta_p_value", "delta_ci_low", "delta_ci_high", "top5",
           "fidelity_vs", "agreement", "flips_lost", "flips_gained", "sqnr_db", "kl", "xrt_vs", "xrt_agreement",
           "xrt_sqnr_db",
           "latency_kind", "latency_p10_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "first_call_ms",
           "latency_samples", "throughput", "throughput_unit",
           "speedup_vs_best_fp32", "speedup_best_ci_low", "speedup_best_ci_high", "best_fp32",
           "speedup", "speedup_ci_low", "speedup_ci_high", "speedup_vs",
           "repeats", "p50_spread_pct", "speedup_pass_min", "speedup_pass_max", "best_speedup_pass_min",
           "best_speedup_pass_max",
           "efficiency", "bytes_per_call", "bound", "roofline_pct", "compute_precision", "ops_per_item", "peak_mem_mb",
           "gpu_peak_mem_mb", "ttft_ms", "token_match",
           "size_mb", "calib_samples", "calib_seconds",
           "calib_method", "status", "pending", "reason", "notes",
           "eval_sha", "calib_sha", "eval_limit", "cpu", "gpu", "host", "launcher", "threads", "git_commit", "run_id", "timestamp",
           "last_attempt"]
# the share of the model's multiply-accumulates a quantized row ran in reduced precision (quantization/kit/macs.py),
# beside the precision it ran in; kept out of the list above so that edits to either merge apart
COLUMNS.insert(COLUMNS.index("compute_precision") + 1, "coverage_pct")
ALPHA = 0.05


CUDA_CEILING_PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8")


def _cuda_ceilings(row: ResultRow) -> dict:
    """The GPU entry of the row's device ceilings (utils.ceilings.measure_cuda), when it was measured on the GPU the
    row ran on ({} otherwise: a record of another GPU never rates this one)."""
    c = (row.environment.get("ceilings") or {}).get("cuda") or {}
    if not c.get("available"):
        return {}
    gpu = row.environment.get("gpu")
    return c if not gpu or not c.get("gpu") or c["gpu"] == gpu else {}


def _ceiling(row: ResultRow) -> float | None:
    """The matmul ceiling of the row's device in the precision its matmuls run in: the CPU's fp32/int8 (the best
    library), or on cuda the GPU's own fp32/bf16/fp16/fp8/int8 measured through torch."""
    prec = row.compute_precision or ""
    if row.device == "cuda":
        return _cuda_ceilings(row).get(f"{prec}_ops_per_s") if prec in CUDA_CEILING_PRECISIONS else None
    c = row.environment.get("ceilings") or {}
    key = {"fp32": "fp32_ops_per_s", "int8": "int8_ops_per_s"}.get(prec)
    if row.device != "cpu" or key is None:
        return None
    return c.get(key)


def _significance(row: ResultRow, base: ResultRow) -> dict:
    out = {"delta_significant": None, "delta_p_value": None, "delta_ci_low": None, "delta_ci_high": None}
    if row is base or row.status != "ok" or base.status != "ok" or row.value is None or base.value is None:
        return out
    e, b = row.extra, base.extra
    if row.metric == "top1" and "correct_bits" in e and "correct_bits" in b:
        if e.get("n_eval") != b.get("n_eval") or row.environment.get("eval_sha") != base.environment.get("eval_sha"):
            return out  # not the same samples: no paired test
        n = int(e["n_eval"])
        t = mcnemar_exact(unpack_bits(b["correct_bits"], n), unpack_bits(e["correct_bits"], n))
        out.update(delta_p_value=t["p_value"], delta_significant=t["p_value"] < ALPHA)
    elif row.metric == "ppl" and "window_nll" in e and "window_nll" in b and len(e["window_nll"]) == len(b["window_nll"]):
        if row.environment.get("eval_sha") != base.environment.get("eval_sha"):
            return out  # not the same tokens: no paired test
        # paired moving-block bootstrap over consecutive windows: adjacent strided windows share context,
        # so resampling single windows would shrink the interval
        t = block_bootstrap_ppl(b["window_nll"], e["window_nll"], b["window_tokens"])
        out.update(delta_ci_low=t["ci_low"], delta_ci_high=t["ci_high"], delta_significant=t["significant"])
    return out


EFFICIENCY_NOTE_ABOVE = 110.0


def _samples(r: ResultRow) -> list[float]:
    return list((r.extra.get("latency") or {}).get("samples_ms") or [])


def _ordered(point: float, lo: float, hi: float) -> tuple[float, float, float]:
    return point, min(lo, point), max(hi, point)


def _own_speedup(r: ResultRow, base: ResultRow | None) -> dict:
    """Speedup over the row's own FP32 baseline: the paired measurement of the kit (interleaved trials in one
    process) when there is one; else base p50 / row p50 with an unpaired bootstrap interval over both rows'
    samples (rows measured at different times: a wider, honest interval)."""
    if r.speedup_paired is not None and r.speedup_ci_low is not None:
        p, lo, hi = _ordered(r.speedup_paired, r.speedup_ci_low, r.speedup_ci_high)
        return {"speedup": p, "speedup_ci_low": lo, "speedup_ci_high": hi, "speedup_vs": r.speedup_vs}
    if base is None or base.status != "ok" or not base.latency_p50_ms or base.device != r.device \
            or base.batch != r.batch or base.latency_kind != r.latency_kind:
        return {}
    bs, rs = _samples(base), _samples(r)
    if len(bs) < 3 or len(rs) < 3:
        return {}
    p, lo, hi = speedup_ci(bs, rs, paired=False)
    p, lo, hi = _ordered(p, lo, hi)
    return {"speedup": p, "speedup_ci_low": lo, "speedup_ci_high": hi,
            "speedup_vs": f"{base.toolchain}/{base.method} (separate runs, unpaired)"}


def _best_speedup(r: ResultRow, best: ResultRow, passes: dict | None = None) -> dict:
    """Speedup over the fastest FP32 row of any runtime on the same device and batch in the same run, with its
    interval: over the passes of a repeated run (evaluation.combine: the between-run spread is in the interval);
    for one pass, paired when the best FP32 row is the one this row was timed against in the same trials, else
    unpaired."""
    out = {"best_fp32": f"{best.toolchain}/{best.method}"}
    if best is r:
        return {**out, "speedup_vs_best_fp32": 1.0, "speedup_best_ci_low": 1.0, "speedup_best_ci_high": 1.0}
    if passes and r.key in passes and best.key in passes:
        c = best_speedup_passes(passes[r.key], passes[best.key])
        if c is not None:
            return {**out, "speedup_vs_best_fp32": c["point"], "speedup_best_ci_low": c["low"],
                    "speedup_best_ci_high": c["high"], "best_speedup_pass_min": min(c["per_pass"]),
                    "best_speedup_pass_max": max(c["per_pass"])}
    if r.speedup_vs == f"{best.toolchain}/{best.method}" and r.speedup_paired is not None \
            and r.environment.get("run_id") == best.environment.get("run_id"):
        p, lo, hi = _ordered(r.speedup_paired, r.speedup_ci_low, r.speedup_ci_high)
    else:
        bs, rs = _samples(best), _samples(r)
        if len(bs) < 3 or len(rs) < 3:
            return {**out, "speedup_vs_best_fp32": best.latency_p50_ms / r.latency_p50_ms}
        p, lo, hi = _ordered(*speedup_ci(bs, rs, paired=False))
    return {**out, "speedup_vs_best_fp32": p, "speedup_best_ci_low": lo, "speedup_best_ci_high": hi}


def _efficiency_note(r: ResultRow, rec: dict) -> str:
    if r.device == "cuda":
        c = _cuda_ceilings(r)
        tf32 = " (cuDNN runs FP32 convolutions in TF32 by default, torch.backends.cudnn.allow_tf32)" \
            if r.compute_precision == "fp32" and r.metric == "top1" else ""
        return (f"efficiency {rec['efficiency']:.0f}% is above the measured {r.compute_precision} ceiling on "
                f"{c.get('gpu')} ({c.get(f'{r.compute_precision}_method')}): the ceiling is a matmul microbenchmark "
                f"of a few sizes{tf32}; the FLOP count is torch's FlopCounterMode count of the model (2 x MACs)")
    c = r.environment.get("ceilings") or {}
    lib = c.get("fp32_library" if r.compute_precision == "fp32" else "int8_library") or "the matmul microbenchmark"
    dq = (r.extra or {}).get("dynamic_quantization") or {}
    if (dq or "DYNAMIC_QUANTIZATION_GROUP_SIZE" in (r.notes or "")) and c.get("int8_ops_per_s") \
            and r.compute_precision != "int8":
        int8 = 100.0 * r.ops_per_item * r.throughput / c["int8_ops_per_s"]
        against = f"against the INT8 ceiling ({c.get('int8_library') or 'INT8 GEMM'}) it is {int8:.0f}%"
        if dq:  # measured, yet not called active: say what was measured
            return (f"efficiency {rec['efficiency']:.0f}% is above the measured {r.compute_precision} ceiling ({lib}) "
                    f"although the on/off timing did not call the plugin's dynamic quantization active (the same IR "
                    f"with DYNAMIC_QUANTIZATION_GROUP_SIZE=0 took {dq.get('off_over_on_min')}x the {dq.get('clock', 'wall')} time, below "
                    f"{dq.get('threshold')}x); {against}")
        return (f"efficiency {rec['efficiency']:.0f}% is above the measured {r.compute_precision} ceiling ({lib}), which "
                f"no {r.compute_precision} kernel reaches: this row predates the on/off measurement and took its "
                "compute precision from the runtime model's kernel names, which read f32 for weight-compressed "
                "matmuls whether or not the plugin's dynamic quantization (DYNAMIC_QUANTIZATION_GROUP_SIZE) quantizes "
                "their activations to int8 on the fly; timed with the setting at 0 the same IR runs far slower while "
                "FP32 and static INT8 IRs do not change (python -m quantization.openvino.dq, "
                f"docs/routes/openvino.md), so its matmuls ran integer; {against}")
    if r.metric != "top1":
        return (f"efficiency {rec['efficiency']:.0f}% is above the measured {r.compute_precision} ceiling ({lib}); the "
                "FLOP count is torch's FlopCounterMode count of the model (2 x MACs)")
    return (f"efficiency {rec['efficiency']:.0f}% is above the measured {r.compute_precision} ceiling ({lib}): the "
            "ceiling is a GEMM microbenchmark, and this runtime's convolution kernels (direct/NCHWc convolutions "
            "with fused bias/activation) reach a higher rate than that GEMM on this CPU; the FLOP count is torch's "
            "FlopCounterMode count of the model (2 x MACs)")


ROOFLINE_NOTE_ABOVE = 110.0


def roofline(r: ResultRow, compute_ceiling: float | None = None) -> dict:
    """The row against the lower of its two bounds: the compute ceiling of its precision (`compute_ceiling`, ops/s)
    and the memory bandwidth of the same device record (`mem_bytes_per_s`, utils.ceilings.measure_memory) over its
    estimated bytes per call (utils.traffic). Per call: compute time = ops per item x items per call / ceiling,
    memory time = bytes per call / bandwidth; the larger is the least time the call can take and names the bound;
    roofline_pct = 100 x that least time / the call's measured time (items per call / throughput). Returns
    {bytes_per_call} alone when a ceiling or the throughput is missing, {} when the bytes cannot be estimated."""
    t = traffic.for_row(r)
    if not t:
        return {}
    out = {"bytes_per_call": float(t["bytes_per_call"])}
    bw = (r.environment.get("ceilings") or {}).get("mem_bytes_per_s") if r.device == "cpu" else None
    if not (bw and compute_ceiling and r.ops_per_item and r.throughput and t.get("items_per_call")):
        return out
    items = float(t["items_per_call"])
    compute_s = r.ops_per_item * items / compute_ceiling
    memory_s = t["bytes_per_call"] / bw
    call_s = items / r.throughput
    out.update(bound="memory" if memory_s > compute_s else "compute",
               roofline_pct=100.0 * max(compute_s, memory_s) / call_s)
    if out["bound"] == "memory" and out["roofline_pct"] > ROOFLINE_NOTE_ABOVE:
        mem = (r.environment.get("ceilings") or {}).get("memory") or {}
        llc = f"; the last-level cache holds {mem['llc_mb']:.0f} MB" if mem.get("llc_mb") else ""
        out["note"] = (f"roofline {out['roofline_pct']:.0f}% is above its {out['bound']} bound: the estimate counts "
                       f"{t['bytes_per_call'] / 1e6:.0f} MB per call from main memory (weights whole, every activation "
                       f"written and read once){llc}, so part of it is served from cache")
    return out


def _phase(r) -> str:
    """'decode' for a generation row (KV-cache decoding), '' for a full-sequence row: the two never stand in for
    each other as baselines."""
    return "decode" if r.latency_kind == "decode" else ""


FIDELITY_COLUMNS = ("fidelity_vs", "agreement", "flips_lost", "flips_gained", "sqnr_db", "kl")
DECODE_FIDELITY_NOTE = "fidelity columns: this variant's full-sequence evaluation (same run and samples)"


def _variant_key(r) -> tuple:
    env = r.environment or {}
    return (r.model, r.weights, r.toolchain, r.method, r.device, env.get("run_id"), env.get("eval_sha"))


def _decode_fidelity(rows: list[ResultRow]) -> dict:
    """variant -> its fidelity against FP32 (agreement, KL, ...) from its ok full-sequence row: a generation row
    times the same variant, whose fidelity was measured once on the evaluation samples, so the decode row carries
    those columns (and says so) instead of leaving them empty."""
    out = {}
    for r in rows:
        if r.status == "ok" and _phase(r) == "" and r.agreement is not None:
            out.setdefault(_variant_key(r), {c: getattr(r, c, None) for c in FIDELITY_COLUMNS})
    return out


def _pass_columns(group: list[ResultRow] | None) -> dict:
    """Between-run columns of a repeated run's combined row: how many passes were timed, the spread of their p50
    (max - min over the median, %), the range of their own paired speedups."""
    out = {"repeats": None, "p50_spread_pct": None, "speedup_pass_min": None, "speedup_pass_max": None}
    if not group:
        return out
    timed = [p for p in group if p.status == "ok" and p.latency_p50_ms is not None]
    out["repeats"] = len(timed)
    if timed:
        p50 = [p.latency_p50_ms for p in timed]
        med = float(np.median(p50))
        out["p50_spread_pct"] = 100.0 * (max(p50) - min(p50)) / med if med else None
        spd = [p.speedup_paired for p in timed if p.speedup_paired is not None]
        if spd:
            out["speedup_pass_min"], out["speedup_pass_max"] = min(spd), max(spd)
    return out


def _run(r) -> str | None:
    return (r.environment or {}).get("run_id")


def build_table(rows: list[ResultRow], attempts: dict | None = None) -> pd.DataFrame:
    rows, passes = combine_passes(rows)  # a repeated run's passes -> one row per variant and batch
    by_key = {(r.model, r.weights, r.toolchain, r.method, r.device, r.batch, _phase(r)): r for r in rows}
    decode_fid = _decode_fidelity(rows)
    fastest_fp32: dict[tuple, ResultRow] = {}  # per run: a speedup over the best FP32 never crosses runs
    for r in rows:
        if r.status == "ok" and r.precision == "fp32" and r.latency_p50_ms and r.eval_limit is None:
            k = (r.model, r.weights, r.device, r.batch, r.latency_kind, _run(r))
            if k not in fastest_fp32 or r.latency_p50_ms < fastest_fp32[k].latency_p50_ms:
                fastest_fp32[k] = r
    records = []
    for r in rows:
        tc = TOOLCHAINS.get(r.toolchain)
        bl = tc.baseline_for(r.method) if tc else None
        base = by_key.get((r.model, r.weights, *bl, r.device, r.batch, _phase(r))) if bl else None
        if base is None and bl:  # e.g. a CUDA row whose FP32 baseline ran on CPU: accuracy only
            base = next((by_key[k] for k in by_key if k[:4] == (r.model, r.weights, *bl) and k[6] == _phase(r)),
                        None)
        rec = {c: getattr(r, c, None) for c in COLUMNS if hasattr(r, c)}
        rec.update(baseline_value=None, delta=None, speedup=None, speedup_ci_low=None, speedup_ci_high=None,
                   speedup_vs_best_fp32=None, speedup_best_ci_low=None, speedup_best_ci_high=None, best_fp32=None,
                   efficiency=None)
        if base is not None and base.status == "ok" and r.status == "ok" and base.value is not None and r.value is not None:
            rec["baseline_value"] = base.value
            rec["delta"] = r.value - base.value
            rec.update(_significance(r, base))
        if r.status == "ok" and r.latency_p50_ms:
            rec.update(_own_speedup(r, base))
            best = fastest_fp32.get((r.model, r.weights, r.device, r.batch, r.latency_kind, _run(r)))
            if best is not None:
                rec.update(_best_speedup(r, best, passes))
        rec.update(_pass_columns(passes.get(r.key)))
        fid = decode_fid.get(_variant_key(r)) if _phase(r) == "decode" and r.status == "ok" else None
        if fid and rec.get("agreement") is None:
            rec.update(fid)
            rec["notes"] = (rec.get("notes") or "") + ("; " if rec.get("notes") else "") + DECODE_FIDELITY_NOTE
        ceil = _ceiling(r)
        if ceil and r.ops_per_item and r.throughput and r.status == "ok":
            rec["efficiency"] = 100.0 * r.ops_per_item * r.throughput / ceil
            if rec["efficiency"] > EFFICIENCY_NOTE_ABOVE:
                rec["notes"] = (rec.get("notes") or "") + ("; " if rec.get("notes") else "") + _efficiency_note(r, rec)
        if r.status == "ok":
            roof = roofline(r, ceil)
            rec.update({k: roof.get(k) for k in ("bytes_per_call", "bound", "roofline_pct")})
            if roof.get("note"):
                rec["notes"] = (rec.get("notes") or "") + ("; " if rec.get("notes") else "") + roof["note"]
        env = r.environment
        rec.update(eval_sha=env.get("eval_sha"), calib_sha=env.get("calib_sha"), cpu=env.get("cpu"), gpu=env.get("gpu"),
                   host=env.get("host"), launcher=env.get("launcher"), threads=env.get("threads"),
                   git_commit=env.get("git_commit"), run_id=env.get("run_id"), timestamp=env.get("timestamp"))
        att = (attempts or {}).get(r.key) or next((attempts[p.key] for p in passes.get(r.key, ())
                                                   if p.key in (attempts or {})), None)
        rec["last_attempt"] = (f"{att.status} {att.environment.get('timestamp', '')} "
                               f"(run {att.environment.get('run_id')}): {att.reason}") if att is not None else None
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    df["_sub"] = df["eval_limit"].notna()  # full-evaluation rows first, subset rows after them
    order = {t: i for i, t in enumerate(ORDER)}
    meth = {(t, m): i for t, tc in TOOLCHAINS.items() for v in tc.variants.values() for i, (m, _) in enumerate(v)}
    df["_t"] = df["toolchain"].map(order).fillna(99)
    df["_m"] = [meth.get((t, m), 99) for t, m in zip(df["toolchain"], df["method"])]
    df["_d"] = (df["latency_kind"] == "decode").astype(int)  # generation rows after the full-sequence ones
    df = df.sort_values(["model", "weights", "_sub", "_d", "_t", "_m", "device", "batch"]).drop(
        columns=["_t", "_m", "_sub", "_d"])
    return df.reset_index(drop=True)


def _fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    try:
        if pd.isna(x):
            return ""
    except (TypeError, ValueError):
        pass
    return format(x, spec)


def _ci(p, lo, hi, spec: str = ".2f") -> str:
    """'2.95 [2.90–3.01]', with '†' when the interval contains 1.0 (no speedup shown)."""
    if _fmt(p, spec) == "":
        return ""
    if _fmt(lo, spec) == "":
        return _fmt(p, spec)
    mark = " †" if lo <= 1.0 <= hi and not (lo == hi == 1.0) else ""
    return f"{p:{spec}} [{lo:{spec}}–{hi:{spec}}]{mark}"


def _is_false(x) -> bool:
    """False for a missing value; bool(x) is False for False/numpy False/'False' (a CSV round trip)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return False
    return str(x) == "False"


NOT_TIMED = "not timed"


def _pending(r) -> bool:
    """A scored row whose batch was not timed (its latency columns come later, or its run stopped first)."""
    v = r.get("pending") if hasattr(r, "get") else getattr(r, "pending", "")
    return isinstance(v, str) and v not in ("", "nan")


def _delta(r) -> str:
    d = _fmt(r["delta"], "+.2f")
    return d + (" ~" if d and _is_false(r["delta_significant"]) else "")


# ------------------------------------------------------------------------------------ verdict

@dataclass(frozen=True)
class Criterion:
    """What 'accurate enough' means for the verdict (flags of evaluation.aggregate): accuracy, and fidelity to FP32."""

    max_top1_drop: float = 1.0  # points of top-1
    max_ppl_increase_pct: float = 1.0  # percent of perplexity
    min_agreement: float = 99.0  # % top-1 / next-token agreement with the FP32 baseline
    min_sqnr_db: float = 30.0  # classifiers: logit SQNR against the FP32 baseline's logits

    def describe(self) -> str:
        return (f"accuracy drop not significant or within {self.max_top1_drop:g} pt top-1 / "
                f"{self.max_ppl_increase_pct:g} % perplexity, agreement ≥ {self.min_agreement:g} %, and for "
                f"classifiers logit SQNR ≥ {self.min_sqnr_db:g} dB against FP32")

    def accepts(self, r) -> bool:
        if r["status"] != "ok" or pd.isna(r["value"]):
            return False
        if r["precision"] != "fp32":
            if pd.isna(r["agreement"]) or r["agreement"] < self.min_agreement:
                return False
            if r["metric"] == "top1" and (pd.isna(r["sqnr_db"]) or r["sqnr_db"] < self.min_sqnr_db):
                return False
        if pd.isna(r["delta"]):
            return True  # an FP32 baseline itself
        if _is_false(r["delta_significant"]):
            return True
        if r["metric"] == "top1":
            return -r["delta"] <= self.max_top1_drop
        return 100.0 * r["delta"] / r["baseline_value"] <= self.max_ppl_increase_pct


def _one_run(g: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of the group's main run (the run with most rows; the newest on a tie) and how many rows of other
    runs or commits were left out: a verdict never compares rows measured in different runs."""
    runs = g.groupby("run_id", dropna=False).agg(n=("run_id", "size"), t=("timestamp", "max"))
    if runs.empty:
        return g, 0
    best = runs.sort_values(["n", "t"], ascending=[False, False]).index[0]
    main = g[g["run_id"] == best] if pd.notna(best) else g[g["run_id"].isna()]
    commits = main["git_commit"].dropna()
    if len(commits):
        main = main[main["git_commit"] == commits.mode().iloc[0]]
    return main, len(g) - len(main)


def _overlap(a, b) -> bool:
    """Do two speedup intervals overlap (a missing interval overlaps everything: no evidence of a difference)?"""
    if pd.isna(a["speedup_best_ci_low"]) or pd.isna(b["speedup_best_ci_low"]):
        return True
    return a["speedup_best_ci_low"] <= b["speedup_best_ci_high"] and b["speedup_best_ci_low"] <= a["speedup_best_ci_high"]


def verdicts(df: pd.DataFrame, crit: Criterion) -> list[dict]:
    """Per (model, weights, device, batch, latency kind), within one run: the rows meeting the criterion, fastest
    first by their speedup over that run's best FP32 row. A winner only where its speedup interval (which carries the
    between-run spread of a repeated run) excludes every other accepted row's; otherwise the rows whose intervals
    overlap the fastest one's are a tie. Full-evaluation rows only."""
    out = []
    ok = df[(df["status"] == "ok") & df["latency_p50_ms"].notna() & df["eval_limit"].isna()]
    full = ok[ok["latency_kind"] != "decode"]
    for key, g_all in ok.groupby(["model", "weights", "device", "batch", "latency_kind"], sort=False):
        g, other_runs = _one_run(g_all)
        random = key[1] == "random"
        if random:  # no accuracy to judge: every row, said to be only that
            good = g
        elif key[4] == "decode":  # a generation row is judged by its variant's full-sequence row
            judged = {(r["toolchain"], r["method"]) for _, r in full[(full["model"] == key[0]) & (full["weights"] == key[1])
                                                                     & (full["device"] == key[2])].iterrows()
                      if crit.accepts(r)}
            good = g[[(r["toolchain"], r["method"]) in judged for _, r in g.iterrows()]]
        else:
            good = g[[crit.accepts(r) for _, r in g.iterrows()]]
        good = good[good["speedup_vs_best_fp32"].notna()]
        if good.empty:
            continue
        good = good.sort_values("speedup_vs_best_fp32", ascending=False)
        best = good.iloc[0]
        tied = [r for _, r in good.iloc[1:].iterrows() if _overlap(best, r)]
        cov = _coverage(best)
        out.append({"model": key[0], "weights": key[1], "device": key[2], "batch": int(key[3]), "kind": key[4],
                    "toolchain": best["toolchain"], "method": best["method"], "precision": best["precision"],
                    "p50_ms": best["latency_p50_ms"], "speedup": best["speedup_vs_best_fp32"],
                    "ci_low": best["speedup_best_ci_low"], "ci_high": best["speedup_best_ci_high"],
                    "best_fp32": best["best_fp32"], "agreement": best["agreement"], "delta": best["delta"],
                    "metric": best["metric"], "n_rows": len(g), "n_meeting": len(good), "random": random,
                    "repeats": best.get("repeats"), "spread": best.get("p50_spread_pct"),
                    "tied": [f"{r['toolchain']} {r['method']} ({_ci(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])}×)"
                             for r in tied],
                    "other_runs": other_runs, "run_id": best.get("run_id"), "commit": best.get("git_commit"),
                    "coverage": cov, "coverage_differs": _coverage_differs(best, good.iloc[1:])})
    return out


COVERAGE_SAME_PT = 1.0  # coverages within this many points count as the same work


def _coverage(r) -> float | None:
    """A row's coverage (% of MACs in reduced precision); 0 for an FP32 row; None where not reported."""
    c = r.get("coverage_pct") if hasattr(r, "get") else None
    if c is not None and not (isinstance(c, float) and math.isnan(c)):
        return float(c)
    return 0.0 if r.get("precision") == "fp32" else None


def _coverage_differs(best, others: pd.DataFrame) -> list[str]:
    """'toolchain method (coverage c %)' for every other compared row whose coverage is not the winner's (beyond
    COVERAGE_SAME_PT points, or unknown on either side while the other is known): those rows did other work."""
    cb = _coverage(best)
    out = []
    for _, r in others.iterrows():
        if r.get("precision") == "fp32":  # the FP32 rows are what every speedup is over: other work by definition
            continue
        c = _coverage(r)
        if (c is None) != (cb is None) or (c is not None and abs(c - cb) > COVERAGE_SAME_PT):
            out.append(f"{r['toolchain']} {r['method']} ({'?' if c is None else f'{c:.0f}'} %)")
    return out


def _coverage_text(v: dict) -> str:
    c = v.get("coverage")
    return "coverage not reported" if c is None else f"coverage {c:.0f} %"


def render_verdicts(vs: list[dict], crit: Criterion, model: str | None = None, weights: str | None = None) -> list[str]:
    lines = []
    for v in vs:
        if (model and v["model"] != model) or (weights and v["weights"] != weights):
            continue
        agree = f", agreement {v['agreement']:.2f} %" if _fmt(v["agreement"], ".2f") else ""
        delta = f", Δ {v['metric']} {_fmt(v['delta'], '+.2f')}" if _fmt(v["delta"], ".2f") else ""
        kind = " · decode (per generated token)" if v.get("kind") == "decode" else ""
        reps = v.get("repeats")
        runs = (f"{int(reps)} runs, p50 spread {_fmt(v.get('spread'), '.1f')} %" if _fmt(reps, ".0f") and reps > 1
                else "1 run")
        which = (f"fastest of all {v['n_meeting']} timed rows (random weights: no accuracy criterion applies)"
                 if v.get("random") else f"fastest of {v['n_meeting']} of {v['n_rows']} rows meeting the criterion")
        if v.get("other_runs"):
            which += f"; {v['other_runs']} row(s) of other runs left out"
        head = f"- **{v['model']} · {v['device']} · batch {v['batch']}{kind}**: "
        what = (f"**{v['toolchain']} {v['method']}** ({v['precision']}, {_coverage_text(v)}), {v['p50_ms']:.2f} ms p50, "
                f"{_ci(v['speedup'], v['ci_low'], v['ci_high'])}× over the best FP32 ({v['best_fp32']}){agree}{delta}")
        if v.get("coverage_differs"):
            which += ("; compared with rows of other coverage (other work in reduced precision, not only another "
                      "runtime): " + ", ".join(v["coverage_differs"]))
        if v.get("tied"):
            lines.append(f"{head}**tie** (speedup intervals overlap): {what}; tied with {', '.join(v['tied'])}; "
                         f"{runs}; {which}.")
        elif v["n_meeting"] > 1:
            lines.append(f"{head}{what}; its interval excludes every other row's; {runs}; {which}.")
        else:
            lines.append(f"{head}{what}; {runs}; the only one of {v['n_rows']} rows meeting the criterion"
                         + (f"; {v['other_runs']} row(s) of other runs left out" if v.get("other_runs") else "") + ".")
    if lines:
        lines = [f"Verdict (criterion: {crit.describe()}; a winner only where its speedup interval, between-run spread "
                 "included, excludes the others'; † marks a speedup interval containing 1; coverage: % of the model's "
                 "multiply-accumulates the row ran in reduced precision, and a line says when it compares rows of "
                 "other coverage):", ""] + lines + [""]
    return lines


# ------------------------------------------------------------------------------------ tables

LEGEND = (
    "Δ: against the toolchain's FP32 baseline on the same samples; `~` marks a Δ that is not significant (McNemar "
    "exact p ≥ 0.05 for top-1; 95 % paired moving-block bootstrap over perplexity windows containing 0). Fidelity "
    "(against the FP32 baseline's outputs on the same samples): agreement = % equal top-1 (next-token top-1 for "
    "LMs), flips = samples lost / gained, SQNR = logit SQNR in dB, KL = mean KL(FP32 ‖ this). FP32 rows of other "
    "runtimes are compared with the torch FP32 reference (`x-SQNR`), so an export or runtime fault shows up without "
    "quantization. Latency: p50 over n interleaved trials. `vs best FP32` is the headline speedup: over the fastest "
    "FP32 row of any runtime on the same device and batch, with a 95 % bootstrap interval; `vs own FP32` is over "
    "the row's own FP32 baseline, measured in the same process in interleaved trials (paired interval). † marks an "
    "interval containing 1.0. runs: the passes of a repeated run (bench --repeats) timed, with the spread of their p50 "
    "((max − min) / median); a repeated run's p50 is the median of its passes' and its intervals come from a two-level "
    "bootstrap (passes, then trials), so they include the between-run spread. Efficiency: useful ops/s over the "
    "device's measured matmul ceiling for the row's compute precision. Roofline: the same rate over the lower of two "
    "bounds, that ceiling and the measured memory bandwidth over the row's estimated bytes per call (weights as "
    "stored, activations, KV cache; utils/traffic.py), with the bound that applies: a memory-bound row (token "
    "generation) reads low on eff. % and is judged by roofline %. peak MB: resident high-water of building and "
    "running the variant.")


def render_markdown(df: pd.DataFrame, rows: list[ResultRow], crit: Criterion = Criterion()) -> str:
    envs = [r.environment for r in rows if r.status == "ok" and r.environment]
    lines = ["# Results", ""]
    if envs:
        e = max(envs, key=lambda x: x.get("timestamp", ""))
        ceil = e.get("ceilings") or {}
        pk = {**{k: v for env in envs for k, v in env.get("packages", {}).items()}}
        hosts = sorted({str(env.get("host")) for env in envs if env.get("host")})
        lines += [f"Machine: {e.get('cpu')} ({e.get('cores')} cores, {e.get('threads')} threads used), "
                  f"GPU: {e.get('gpu') or 'none'}; Python {e.get('python')}; commit {e.get('git_commit')}; "
                  f"latest row {e.get('timestamp')}" + (f"; hosts {', '.join(hosts)}" if len(hosts) > 1 else "") + ".",
                  "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())) + "."]
        hosts = sorted({(x.get("host"), x.get("cpu"), x.get("gpu")) for x in envs if x.get("host")}, key=str)
        if len(hosts) > 1:
            lines.append("Hosts: " + "; ".join(f"{h} ({c}, GPU: {g or 'none'})" for h, c, g in hosts)
                         + " (the host column says which made each row).")
        if ceil.get("libraries") is not None or ceil.get("fp32_ops_per_s") is not None:  # the CPU's (not cuda-only)
            lines.append(f"Device ceilings ({ceil.get('threads')} threads): FP32 matmul "
                         f"{(ceil.get('fp32_ops_per_s') or 0) / 1e9:.1f} GFLOP/s ({ceil.get('fp32_library', 'torch.mm')}),"
                         f" INT8 matmul {(ceil.get('int8_ops_per_s') or 0) / 1e9:.1f} GOP/s "
                         f"({ceil.get('int8_library', 'torch._int_mm')})"
                         + (f", memory {ceil['mem_bytes_per_s'] / 1e9:.1f} GB/s ({ceil.get('mem_library')}, arrays of "
                            f"{(ceil.get('memory') or {}).get('array_mb')} MB, last-level cache "
                            f"{(ceil.get('memory') or {}).get('llc_mb')} MB)" if ceil.get("mem_bytes_per_s") else "")
                         + ".")
        gpu = ceil.get("cuda") or {}
        if gpu.get("available"):  # the GPU's own (utils.ceilings.measure_cuda)
            rates = ", ".join(f"{p.upper()} {gpu[f'{p}_ops_per_s'] / 1e12:.0f}" for p in CUDA_CEILING_PRECISIONS
                              if gpu.get(f"{p}_ops_per_s"))
            lines.append(f"GPU ceilings ({gpu.get('gpu')}, compute capability {gpu.get('capability')}, through torch "
                         f"{gpu.get('torch')}): matmul TOP/s {rates}.")
        over = [r.extra.get("harness_overhead_ms") for r in rows if r.status == "ok" and r.extra.get("harness_overhead_ms")]
        b1 = [r.latency_p50_ms for r in rows if r.status == "ok" and r.batch == 1 and r.latency_p50_ms]
        if over and b1:
            lines.append(f"Harness overhead (an empty call timed the same way): at most {max(over) * 1000:.2f} µs, "
                         f"{100 * max(over) / min(b1):.3f} % of the fastest batch-1 p50 ({min(b1):.2f} ms).")
        lines.append("")
    lines += [LEGEND, ""]
    vs = verdicts(df, crit)
    for (model, weights, dataset), g_all in df.groupby(["model", "weights", "dataset"], sort=False):
        metric = g_all["metric"].iloc[0]
        g = g_all[g_all["latency_kind"] != "decode"]
        lines += [f"## {model} ({weights} weights, {dataset}; metric {metric})", ""]
        if weights == "random":
            lines += [f"Accuracy cells are empty: {RANDOM_REASON} (the real architecture with randomly initialised "
                      "weights; fidelity columns compare each row with its FP32 baseline on the same inputs).", ""]
        lines += render_verdicts(vs, crit, model, weights)
        lines += [f"| toolchain | method | prec | cov % | dev | batch | {metric} | Δ | agree % | flips −/+ | SQNR dB | KL | "
                  "x-SQNR dB | p50 ms (p10–p90) | n | runs (p50 spread) | vs best FP32 | vs own FP32 | eff. % | "
                  "roofline % (bound) | "
                  "peak MB | size MB | calib n / s | status |",
                  "|---|---|---|--:|---|" + "--:|" * 18 + "---|"]
        shown: set = set()
        for _, r in g.iterrows():
            if r["status"] != "ok":  # one line per skipped/failed variant, all batches together
                k = (r["toolchain"], r["method"], r["precision"], r["device"], r["status"], r["reason"])
                if k in shown:
                    continue
                shown.add(k)
                batches = ",".join(str(b) for b in g[(g["toolchain"] == r["toolchain"]) & (g["method"] == r["method"])
                                                     & (g["device"] == r["device"])]["batch"])
                lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | | {r['device']} | {batches} |"
                             + " |" * 17 + f" {r['status']}: {r['reason']} |")
                continue
            lat = NOT_TIMED if _pending(r) else ""
            if pd.notna(r["latency_p50_ms"]):
                lat = f"{r['latency_p50_ms']:.2f} ({r['latency_p10_ms']:.2f}–{r['latency_p90_ms']:.2f})"
            flips = f"{int(r['flips_lost'])}/{int(r['flips_gained'])}" if pd.notna(r["flips_lost"]) else ""
            cal = ""
            if pd.notna(r["calib_samples"]) and r["calib_samples"]:
                cal = f"{int(r['calib_samples'])} / {_fmt(r['calib_seconds'], '.1f')}"
            status = r["status"]
            if pd.notna(r["eval_limit"]):
                status += f" (subset: --eval-limit {int(r['eval_limit'])})"
            if r["last_attempt"]:
                status += f"; latest attempt {r['last_attempt']}"
            kl = _fmt(r["kl"], ".2e") if pd.notna(r["kl"]) and r["kl"] < 0.01 else _fmt(r["kl"], ".4f")
            lines.append(
                f"| {r['toolchain']} | {r['method']} | {r['precision']} | {_cov(r)} | {r['device']} | {r['batch']} | "
                f"{_fmt(r['value'], '.2f')} | {_delta(r)} | {_fmt(r['agreement'], '.2f')} | {flips} | "
                f"{_fmt(r['sqnr_db'], '.1f')} | {kl} | {_fmt(r['xrt_sqnr_db'], '.1f')} | {lat} | "
                f"{_fmt(r['latency_samples'], '.0f')} | {_runs(r)} | "
                f"{_ci(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])} | "
                f"{_ci(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])} | {_fmt(r['efficiency'], '.1f')} | "
                f"{_roof(r)} | {_peak(r)} | {_fmt(r['size_mb'], '.1f')} | {cal} | {status} |")
        lines.append("")
        lines += _render_decode(g_all[g_all["latency_kind"] == "decode"])
        notes = list(dict.fromkeys((r["toolchain"], r["method"], r["notes"]) for _, r in g.iterrows() if r["notes"]))
        if notes:
            lines += [f"Notes ({model}):", ""] + [f"- **{t} / {m}**: {n}" for t, m, n in notes] + [""]
    return "\n".join(lines)


def _cov(r) -> str:
    """The coverage cell: % of MACs in reduced precision (quantized rows; empty for FP32 rows and where not reported)."""
    return _fmt(r.get("coverage_pct"), ".0f")


def _runs(r) -> str:
    """'3 (2.1 %)': the passes of a repeated run that were timed and the spread of their p50; '1' for one run."""
    n = _fmt(r.get("repeats"), ".0f")
    if not n:
        return "1" if pd.notna(r.get("latency_p50_ms")) else ""
    return f"{n} ({_fmt(r.get('p50_spread_pct'), '.1f')} %)"


def _roof(r) -> str:
    """'41.3 (memory)': the row's rate over the lower of its compute and memory bounds, and which bound that is."""
    pct = _fmt(r.get("roofline_pct"), ".1f")
    return f"{pct} ({r['bound']})" if pct else ""


def _peak(r) -> str:
    """Resident high-water MB, and the GPU's where a GPU ran the row."""
    out = _fmt(r["peak_mem_mb"], ".0f")
    gpu = _fmt(r.get("gpu_peak_mem_mb"), ".0f")
    return f"{out} (GPU {gpu})" if gpu else out


def _render_decode(d: pd.DataFrame) -> list[str]:
    """The generation table: greedy decoding with a KV cache, per generated token, beside time to first token."""
    if d.empty:
        return []
    ok = d[d["status"] == "ok"]
    lines = []
    if not ok.empty:
        ex = ok.iloc[0]
        lines += [f"Generation (greedy, KV cache, batch {int(ex['batch'])}): ms/token = host wall time per generated "
                  "token after the first (p50 over n generations of the interleaved trials); TTFT = time to the first "
                  "token (the prompt's prefill and its argmax), median; token match = % of greedy tokens equal to the "
                  "in-process FP32 baseline's on the same prompt (after a first difference the continuations part).",
                  ""]
    lines += ["| toolchain | method | prec | dev | batch | ms/token p50 (p10–p90) | n | tokens/s | TTFT ms | "
              "token match % | vs best FP32 | vs own FP32 | eff. % | roofline % (bound) | peak MB | status |",
              "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for _, r in d.iterrows():
        if r["status"] != "ok":
            lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | {r['device']} | {r['batch']} |"
                         + " |" * 10 + f" {r['status']}: {r['reason']} |")
            continue
        lat = f"{r['latency_p50_ms']:.2f} ({r['latency_p10_ms']:.2f}–{r['latency_p90_ms']:.2f})"
        lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | {r['device']} | {r['batch']} | {lat} | "
                     f"{_fmt(r['latency_samples'], '.0f')} | {_fmt(r['throughput'], '.1f')} | "
                     f"{_fmt(r['ttft_ms'], '.1f')} | {_fmt(r['token_match'], '.1f')} | "
                     f"{_ci(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])} | "
                     f"{_ci(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])} | {_fmt(r['efficiency'], '.1f')} | "
                     f"{_roof(r)} | {_peak(r)} | {r['status']} |")
    return lines + [""]


def _twins_missing_batches(g: pd.DataFrame, batches: list) -> list[str]:
    """'toolchain method (twin of X)' for every ok calibration twin (the declaration's latency_twins) without a row
    at some batch of the table."""
    out = []
    for (tc, method), gg in g[g["status"] == "ok"].groupby(["toolchain", "method"], sort=False):
        twin = TOOLCHAINS[tc].latency_twins.get(method) if tc in TOOLCHAINS else None
        if twin and set(int(b) for b in batches) - set(int(b) for b in gg["batch"]):
            out.append(f"{tc} {method} (twin of {twin})")
    return out


def render_compact(df: pd.DataFrame, crit: Criterion = Criterion()) -> str:
    """The README block: the verdict, then one line per (model, toolchain, method, device): accuracy, Δ, agreement,
    p50 at each batch, the headline speedup over the best FP32 (with its interval) at each batch."""
    out = []
    vs = verdicts(df, crit)
    full = df[df["eval_limit"].isna()]
    for (model, weights, dataset), g_all in full.groupby(["model", "weights", "dataset"], sort=False):
        g = g_all[g_all["latency_kind"] != "decode"]
        dec = g_all[(g_all["latency_kind"] == "decode") & (g_all["status"] == "ok")]
        dec_by = {(r["toolchain"], r["method"], r["device"]): r for _, r in dec.iterrows()}
        batches = sorted(g["batch"].unique())
        metric = g["metric"].iloc[0]
        out += [f"**{model}** ({weights}, {dataset})", ""]
        if weights == "random":
            out += [f"Accuracy cells are empty: {RANDOM_REASON}.", ""]
        out += render_verdicts(vs, crit, model, weights)
        reps = g["repeats"].dropna()
        if len(reps):
            out += [f"Latency: median p50 of {int(reps.max())} runs of the plan (toolchains' order rotated); every "
                    "interval includes the between-run spread; each row's spread is in results/summary.md.", ""]
        dec_cols = ["ms/token decode b1", "decode vs best FP32"] if dec_by else []
        out += [f"| toolchain | method | prec | cov % | dev | {metric} | Δ | agree % | "
                + " | ".join(f"p50 ms b{b}" for b in batches) + " | "
                + " | ".join(f"vs best FP32 b{b}" for b in batches) + " | "
                + "".join(f"{c} | " for c in dec_cols) + "status |",
                "|---|---|---|--:|---|--:|--:|--:|" + "--:|" * (2 * len(batches) + len(dec_cols)) + "---|"]
        for (tc, method, prec, dev), gg in g.groupby(["toolchain", "method", "precision", "device"], sort=False):
            first = gg.iloc[0]
            by = {int(r["batch"]): r for _, r in gg.iterrows()}
            lat = [(_fmt(by[b]["latency_p50_ms"], ".1f") or (NOT_TIMED if _pending(by[b]) else "")) if b in by else ""
                   for b in batches]
            spd = [_ci(by[b]["speedup_vs_best_fp32"], by[b]["speedup_best_ci_low"], by[b]["speedup_best_ci_high"])
                   if b in by else "" for b in batches]
            extra = ""
            if dec_cols:
                d = dec_by.get((tc, method, dev))
                extra = ("" if d is None else _fmt(d["latency_p50_ms"], ".2f")) + " | " + (
                    "" if d is None else _ci(d["speedup_vs_best_fp32"], d["speedup_best_ci_low"],
                                             d["speedup_best_ci_high"])) + " | "
            status = "ok" if first["status"] == "ok" else f"{first['status']}: {str(first['reason']).split(':')[0][:90]}"
            if any(_pending(r) for r in by.values()):
                status += f" ({NOT_TIMED} at b{','.join(str(b) for b, r in by.items() if _pending(r))})"
            out.append(f"| {tc} | {method} | {prec} | {_cov(first)} | {dev} | {_fmt(first['value'], '.2f')} | {_delta(first)} | "
                       f"{_fmt(first['agreement'], '.2f')} | " + " | ".join(lat) + " | " + " | ".join(spd)
                       + f" | {extra}{status} |")
        out.append("")
        twins = _twins_missing_batches(g, batches)
        if twins:
            out += ["Empty larger-batch cells of " + "; ".join(twins) + ": calibration twins (same deployed graph, "
                    "other scales), timed at the smallest batch only; `--methods` names them to time every batch "
                    "(docs/methodology.md).", ""]
    out.append("![accuracy and fidelity vs speedup](results/accuracy_vs_latency.png)")
    return "\n".join(out)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def with_all_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table read back from a summary.csv written before a column existed, with that column empty (so a committed
    table renders with today's code)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    return df.assign(**{c: None for c in missing}) if missing else df


def readme_block(df: pd.DataFrame, crit: Criterion = Criterion()) -> str:
    """The README's results block, from the table alone (a test re-renders it from results/summary.csv)."""
    df = with_all_columns(df)
    ok = df[df["status"] == "ok"]
    head = ""
    if not ok.empty:
        e = ok.loc[ok["timestamp"].astype(str).idxmax()]
        gpu = e["gpu"] if isinstance(e["gpu"], str) and e["gpu"] else "none"
        head = (f"Measured {str(e['timestamp'])[:10]} on {e['cpu']} ({_fmt(e['threads'], '.0f')} threads, GPU: {gpu}), "
                f"commit {e['git_commit']}; versions in results/summary.md.\n\n")
    return head + render_compact(df, crit)


def readme_block_of(text: str) -> str | None:
    if README_START not in text or README_END not in text:
        return None
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n")


def update_readme(readme: Path, df: pd.DataFrame, rows: list[ResultRow], crit: Criterion = Criterion()) -> bool:
    """Replace the README's results block (between the markers) with the compact table."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    pre, rest = text.split(README_START, 1)
    post = rest.split(README_END, 1)[1]
    atomic_write_text(readme, f"{pre}{README_START}\n{readme_block(df, crit)}\n{README_END}{post}")
    return True


# ------------------------------------------------------------------------------------ plot

def _fidelity_axis(g: pd.DataFrame) -> tuple[str, str]:
    """The fidelity measure that separates the rows: SQNR for classifiers, KL for LMs, else accuracy."""
    if g["metric"].iloc[0] == "top1" and g["sqnr_db"].notna().any():
        return "sqnr_db", "logit SQNR vs FP32, dB (higher is better)"
    if g["kl"].notna().any():
        return "kl", "mean KL(FP32 ‖ row) per token (lower is better)"
    return "value", g["metric"].iloc[0]


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both speedup (x, higher) and fidelity (y)."""
    out = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            better_y = y2 >= y if higher_is_better else y2 <= y
            strictly = x2 > x or (y2 > y if higher_is_better else y2 < y)
            if x2 >= x and better_y and strictly:
                dominated = True
                break
        if not dominated:
            out.append(i)
    return out


def plot_accuracy_latency(df: pd.DataFrame, path: Path) -> Path | None:
    """Per (model, weights, device, largest batch): fidelity against speedup over the best FP32, Pareto front
    marked, one legend entry per row (no labels printed over each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["speedup_vs_best_fp32"].notna() & df["eval_limit"].isna()
            & (df["latency_kind"] != "decode")]
    if ok.empty:
        return None
    panels = []
    for (m, w, d), g in ok.groupby(["model", "weights", "device"], sort=True):
        panels.append((m, w, d, int(g["batch"].max())))
    fig, axes = plt.subplots(1, len(panels), figsize=(8.6 * len(panels), 5.4), squeeze=False)
    markers = {t: tc.marker for t, tc in TOOLCHAINS.items()}
    cmap = plt.get_cmap("tab20")
    for ax, (m, w, d, b) in zip(axes[0], panels):
        g = ok[(ok["model"] == m) & (ok["weights"] == w) & (ok["device"] == d) & (ok["batch"] == b)]
        col, label = _fidelity_axis(g)
        g = g[g[col].notna()]
        higher = col in ("sqnr_db",) or (col == "value" and g["metric"].iloc[0] == "top1")
        pts = list(zip(g["speedup_vs_best_fp32"], g[col]))
        front = set(pareto(pts, higher))
        for i, (_, r) in enumerate(g.iterrows()):
            x, y = r["speedup_vs_best_fp32"], r[col]
            lo, hi = r["speedup_best_ci_low"], r["speedup_best_ci_high"]
            xerr = [[x - lo], [hi - x]] if pd.notna(lo) else None
            ax.errorbar([x], [y], xerr=xerr, fmt=markers.get(r["toolchain"], "x"), color=cmap(i % 20), ms=7,
                        mec="black" if i in front else None, mew=1.6 if i in front else 0, capsize=2,
                        label=f"{r['toolchain']} {r['method']} ({r['precision']})" + (" ★" if i in front else ""))
        fx = sorted((pts[i] for i in front), key=lambda p: p[0])
        if len(fx) > 1:
            ax.plot([p[0] for p in fx], [p[1] for p in fx], "k--", lw=0.8, alpha=0.6)
        if col == "kl":
            ax.set_yscale("symlog", linthresh=1e-4)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"speedup over the best FP32 runtime (batch {b}, {d}; 95 % interval)")
        ax.set_ylabel(label)
        ax.set_title(f"{m} ({w}): ★ = Pareto front")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)  # beside, never on points
    fig.tight_layout()
    return atomic_write_figure(fig, path)


# ------------------------------------------------------------------------------------ generated doc blocks

DOC_BLOCK = re.compile(r"<!-- generated:(?P<name>[\w.-]+)(?P<args>[^>]*)-->\n(?P<body>.*?)<!-- /generated -->", re.S)


def _block_rows(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """The ok full-evaluation rows a `rows` block selects: weights=embedded and full-sequence latency unless the block
    says otherwise (`weights=random`, `kind=decode` for the generation rows)."""
    g = df[(df["status"] == "ok") & df["eval_limit"].isna()]
    spec = {"weights": "embedded", **spec}
    g = g[(g["latency_kind"] == "decode") == (spec.get("kind") == "decode")]
    for k in ("model", "weights", "toolchain", "device"):
        if spec.get(k):
            g = g[g[k].isin(spec[k].split(","))]
    if spec.get("batch"):
        g = g[g["batch"].isin([int(x) for x in spec["batch"].split(",")])]
    return g


def render_csv(path: Path, cols: list[str] | None = None, head_n: int | None = None,
               where: dict[str, str] | None = None) -> str:
    """A committed results CSV (a sweep, a layer report, a settings measurement) as a Markdown table: optionally
    only some columns (`cols=a,b`), rows matching `where` (`where=col:value`), the first `head=N` rows."""
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return "(empty)\n"
    head, body = rows[0], rows[1:]
    for k, v in (where or {}).items():
        body = [r for r in body if r[head.index(k)] == v]
    if head_n:
        body = body[:head_n]
    if cols:
        idx = [head.index(c) for c in cols]
        head, body = [head[i] for i in idx], [[r[i] for i in idx] for r in body]

    def cell(x: str) -> str:
        try:
            v = float(x)
        except ValueError:
            return x
        return f"{v:.3g}" if abs(v) < 1000 and v != int(v) else (str(int(v)) if v == int(v) else f"{v:.0f}")

    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in body]
    return "\n".join(out) + "\n"


def render_block(name: str, spec: dict, df: pd.DataFrame, crit: Criterion = Criterion()) -> str:
    """A generated block for docs: `rows` (a table of the selected ok rows of the summary), `verdict`, or `csv`
    (file=results/<name>.csv: another committed results table)."""
    if name == "csv":
        from utils.paths import REPO_ROOT

        where = dict(w.split(":", 1) for w in spec["where"].split(";")) if spec.get("where") else None
        if not (REPO_ROOT / spec["file"]).is_file():  # a table whose command has not been published yet
            return f"({spec['file']} is not published yet: the command named above writes it with --publish)\n"
        return render_csv(REPO_ROOT / spec["file"], spec["cols"].split(",") if spec.get("cols") else None,
                          int(spec["head"]) if spec.get("head") else None, where)
    df = with_all_columns(df)
    if name == "verdict":
        vs = [v for v in verdicts(df, crit) if all(not spec.get(k) or str(v[k]) in spec[k].split(",")
                                                    for k in ("model", "weights", "device"))]
        return "\n".join(render_verdicts(vs, crit)) or "(no row meets the criterion)\n"
    if name != "rows":
        raise SuiteError(f"unknown generated block {name!r} (valid: rows, verdict, csv)")
    g = _block_rows(df, spec)
    lines = ["| model | toolchain | method | prec | batch | value | Δ | agree % | SQNR dB | KL | p50 ms | "
             "vs best FP32 | vs own FP32 |", "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for _, r in g.iterrows():
        lines.append(f"| {r['model']} | {r['toolchain']} | {r['method']} | {r['precision']} | {r['batch']} | "
                     f"{_fmt(r['value'], '.2f')} | {_delta(r)} | {_fmt(r['agreement'], '.2f')} | "
                     f"{_fmt(r['sqnr_db'], '.1f')} | {_fmt(r['kl'], '.2e')} | {_fmt(r['latency_p50_ms'], '.2f')} | "
                     f"{_ci(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])} | "
                     f"{_ci(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])} |")
    return "\n".join(lines) + "\n"


def _spec(args: str) -> dict:
    return dict(kv.split("=", 1) for kv in args.split() if "=" in kv)


PROVENANCE = "<!-- from {}; do not edit by hand -->"


def doc_source(out_dir: Path) -> str:
    """The summary a run's generated doc blocks come from, as their provenance line names it: relative to the
    repository when it lies inside it (results/summary.csv for the committed reference), else absolute."""
    path = Path(out_dir).resolve() / "summary.csv"
    try:
        return str(path.relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


def block_source(name: str, spec: dict, source: str) -> str:
    """What a generated block is rendered from: a `csv` block its own file, every other block the summary."""
    return spec["file"] if name == "csv" else source


def rewrite_doc_blocks(text: str, df: pd.DataFrame, source: str) -> str:
    """Rewrite every `<!-- generated:NAME k=v ... -->` ... `<!-- /generated -->` block from the table; each block's
    first line names its source (PROVENANCE)."""
    def sub(m):
        spec = _spec(m.group("args"))
        body = render_block(m.group("name"), spec, df)
        return (f"<!-- generated:{m.group('name')}{m.group('args')}-->\n"
                f"{PROVENANCE.format(block_source(m.group('name'), spec, source))}\n{body}<!-- /generated -->")
    return DOC_BLOCK.sub(sub, text)


def update_docs(docs: list[Path], df: pd.DataFrame, source: str) -> list[Path]:
    changed = []
    for p in docs:
        text = p.read_text(encoding="utf-8")
        new = rewrite_doc_blocks(text, df, source)
        if new != text:
            atomic_write_text(p, new)
            changed.append(p)
    return changed


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


def aggregate(runs_dir, out_dir: Path, readme: Path | None = None, crit: Criterion = Criterion(),
              docs: list[Path] | None = None, damaged: list | None = None) -> pd.DataFrame:
    """The tables of one or several runs folders. A row file that cannot be read is moved aside (`damaged/` of its
    folder), named in `damaged`, and left out; the others make the tables."""
    dirs = [Path(d) for d in (runs_dir if isinstance(runs_dir, (list, tuple)) else [runs_dir])]
    if len(dirs) == 1:
        rows, attempts = read_rows(dirs[0], damaged), read_attempts(dirs[0])
    else:
        rows, attempts = merge_runs(dirs, damaged)
    if not rows:
        raise SuiteError(f"no result rows in {', '.join(map(str, dirs))}: run `python3 -m evaluation.bench` first")
    df = build_table(rows, attempts)
    atomic_write_text(out_dir / "summary.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", render_markdown(df, rows, crit))
    plot_accuracy_latency(df, out_dir / "accuracy_vs_latency.png")
    if readme is not None and update_readme(readme, df, rows, crit):
        log.info("results table updated in %s", readme)
    if readme is not None:  # the README's own generated blocks (e.g. the run log), like the docs'
        docs = [readme, *(docs or [])]
    if docs:
        for p in update_docs(docs, df, doc_source(out_dir)):
            log.info("generated blocks rewritten in %s", p)
    log.info("%d rows -> %s, %s, %s", len(df), out_dir / "summary.csv", out_dir / "summary.md",
             out_dir / "accuracy_vs_latency.png")
    return df


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m evaluation.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", type=Path, action="append", default=None,
                    help="a folder of result rows; repeat to merge folders copied from other machines (default: "
                         "results/local/runs, a user's runs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where the tables go (default: the folder holding the first --runs-dir when it is named "
                         "'runs', else <runs-dir>-report)")
    ap.add_argument("--publish", action="store_true",
                    help="the committed reference: results/runs -> results/, the README's results block and every "
                         "generated block in docs/")
    ap.add_argument("--readme", type=Path, default=None, help="also refresh the results block of this README")
    ap.add_argument("--docs", type=Path, action="append", default=None,
                    help="also rewrite the generated blocks (<!-- generated:rows ... -->) of this doc (repeatable)")
    ap.add_argument("--max-top1-drop", type=float, default=1.0, help="verdict: top-1 points an accepted row may lose")
    ap.add_argument("--max-ppl-increase-pct", type=float, default=1.0, help="verdict: perplexity increase, percent")
    ap.add_argument("--min-agreement", type=float, default=99.0, help="verdict: minimum agreement with FP32, percent")
    ap.add_argument("--min-sqnr-db", type=float, default=30.0,
                    help="verdict: classifiers' minimum logit SQNR against FP32, dB")
    args = ap.parse_args(argv)
    setup_logging()
    if args.publish:
        if args.runs_dir or args.out or args.readme or args.docs:
            raise SuiteError("--publish reads results/runs and writes results/, README.md and docs/; drop the others")
        args.runs_dir, args.out = [PUBLISHED_RUNS_DIR], RESULTS_DIR
        args.readme, args.docs = REPO_ROOT / "README.md", sorted((REPO_ROOT / "docs").rglob("*.md"))
    runs = args.runs_dir or [RUNS_DIR]
    crit = Criterion(args.max_top1_drop, args.max_ppl_increase_pct, args.min_agreement, args.min_sqnr_db)
    damaged: list = []
    try:
        aggregate(runs, report_dir_for(runs[0], args.out), args.readme, crit, args.docs, damaged)
    finally:  # also when no readable row is left (that error follows these lines)
        for path, why in damaged:
            where = "could not be read" if Path(path).exists() else f"moved to {Path(path).parent / 'damaged'}"
            print(f"error: damaged row file {path} ({why}): {where}, left out of the tables", file=sys.stderr)
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
