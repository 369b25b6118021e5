"""Rows -> the table (one pandas frame, summary.csv's columns): deltas and their significance against the FP32
baseline, speedups over the row's own FP32 baseline and over the best FP32 row of its run (with intervals; a repeated
run's passes combined, evaluation/report/combine.py), efficiency against the device's ceiling, the roofline,
coverage, the latest attempt."""
from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.report.combine import best_speedup_passes, combine_passes
from utils import traffic
from utils.metrics import unpack_bits
from utils.registry import ORDER, TOOLCHAINS
from utils.rows import ResultRow
from utils.stats import block_bootstrap_ppl, mcnemar_exact, speedup_ci


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
           "efficiency", "bytes_per_call", "bound", "roofline_pct", "compute_precision", "coverage_pct", "ops_per_item", "peak_mem_mb",
           "gpu_peak_mem_mb", "ttft_ms", "token_match",
           "size_mb", "calib_samples", "calib_seconds",
           "calib_method", "status", "pending", "reason", "notes",
           "eval_sha", "calib_sha", "eval_limit", "cpu", "gpu", "host", "launcher", "threads", "git_commit", "run_id", "timestamp",
           "last_attempt"]


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


def ceiling(row: ResultRow) -> float | None:
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


def significance(row: ResultRow, base: ResultRow) -> dict:
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
    interval: over the passes of a repeated run (evaluation.report.combine: the between-run spread is in the interval);
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
        tc = TOOLCHAINS.get(r.toolchain)
        onoff = f"python -m {tc.tools['dq']}, " if tc and "dq" in tc.tools else ""  # the toolchain's on/off timing
        return (f"efficiency {rec['efficiency']:.0f}% is above the measured {r.compute_precision} ceiling ({lib}), which "
                f"no {r.compute_precision} kernel reaches: this row predates the on/off measurement and took its "
                "compute precision from the runtime model's kernel names, which read f32 for weight-compressed "
                "matmuls whether or not the plugin's dynamic quantization (DYNAMIC_QUANTIZATION_GROUP_SIZE) quantizes "
                "their activations to int8 on the fly; timed with the setting at 0 the same IR runs far slower while "
                f"FP32 and static INT8 IRs do not change ({onoff}docs/routes/{r.toolchain}.md), so its matmuls ran "
                f"integer; {against}")
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
            rec.update(significance(r, base))
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
        ceil = ceiling(r)
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


def with_all_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table read back from a summary.csv written before a column existed, with that column empty (so a committed
    table renders with today's code)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    return df.assign(**{c: None for c in missing}) if missing else df
