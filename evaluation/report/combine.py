"""The passes of a repeated run (`bench --repeats N`) as one line of the table (report environment: NumPy).

Each pass of a repeated run writes its own rows (key suffix `__r<pass>`, field `repeat`), each with its samples,
their trial indices and its paired baseline's samples. The table shows one line per variant and batch: the median
of the passes' p50, the between-run spread of the p50 (max − min over the median, %), and speedups combined over
the passes by a two-level bootstrap (utils.stats.repeated_speedup_ci: passes resampled, then trials within each),
so an interval is as wide as the runs disagree. Scores are the first pass's (later passes reuse them: scoring is
deterministic). Everything here is recomputed from the row files; nothing is stored that they do not hold.
"""
from __future__ import annotations

import statistics
from collections import defaultdict

from utils.rows import ResultRow
from utils.stats import repeated_speedup_ci

PASSES = "passes"  # extra key of a combined row: one summary per pass


def base_key(r: ResultRow) -> str:
    """The row key without its pass."""
    return r.replace(repeat=None).key if r.repeat is not None else r.key


def paired_samples(r: ResultRow) -> tuple[list[float], list[float]] | None:
    """(baseline, variant) samples of the trials that timed both, in trial order, from the row's own record of its
    paired comparison (extra.latency: samples_ms + trials, baseline: samples_ms + trials)."""
    lat = r.extra.get("latency") or {}
    base = lat.get("baseline") or {}
    if not base or "trials" not in lat or "trials" not in base:
        return None
    v = dict(zip(lat["trials"], lat["samples_ms"]))
    b = dict(zip(base["trials"], base["samples_ms"]))
    common = sorted(set(v) & set(b))
    return [b[t] for t in common], [v[t] for t in common]


def samples(r: ResultRow) -> list[float]:
    return list((r.extra.get("latency") or {}).get("samples_ms") or [])


def _timed(r: ResultRow) -> bool:
    return r.status == "ok" and r.latency_p50_ms is not None


def combine(group: list[ResultRow]) -> ResultRow:
    """One row for the passes of one variant and batch of one run."""
    group = sorted(group, key=lambda r: r.repeat or 0)
    timed = [r for r in group if _timed(r)]
    ok = [r for r in group if r.status == "ok"]
    if not ok:  # every pass failed or was skipped: the latest says why
        return group[-1].replace(repeat=None, extra={**group[-1].extra, PASSES: _summaries(group)})
    first = ok[0]
    if not timed:
        return first.replace(repeat=None, extra={**first.extra, PASSES: _summaries(group)})
    p50s = [r.latency_p50_ms for r in timed]
    med = statistics.median(p50s)
    lat_of = min(timed, key=lambda r: abs(r.latency_p50_ms - med))  # the pass whose p50 is the median's
    fields = dict(latency_p50_ms=med, latency_p10_ms=statistics.median(r.latency_p10_ms for r in timed),
                  latency_p90_ms=statistics.median(r.latency_p90_ms for r in timed),
                  latency_p99_ms=statistics.median(r.latency_p99_ms for r in timed),
                  first_call_ms=lat_of.first_call_ms, throughput=lat_of.throughput * lat_of.latency_p50_ms / med,
                  latency_samples=sum(r.latency_samples or 0 for r in timed), pending="",
                  peak_mem_mb=max((r.peak_mem_mb for r in timed if r.peak_mem_mb is not None), default=None))
    pairs = [paired_samples(r) for r in timed]
    if all(p is not None and len(p[0]) >= 3 for p in pairs):
        c = repeated_speedup_ci(pairs, paired=True)
        fields.update(speedup_paired=c["point"], speedup_ci_low=c["low"], speedup_ci_high=c["high"],
                      speedup_vs=timed[0].speedup_vs)
    elif all(r.speedup_paired == 1.0 for r in timed):  # the baseline itself
        fields.update(speedup_paired=1.0, speedup_ci_low=1.0, speedup_ci_high=1.0, speedup_vs=timed[0].speedup_vs)
    else:
        fields.update(speedup_paired=None, speedup_ci_low=None, speedup_ci_high=None)
    extra = {**first.extra, "latency": lat_of.extra.get("latency"), PASSES: _summaries(group)}
    notes = first.notes
    failed = [r for r in group if not _timed(r)]
    if failed:
        notes += ("; " if notes else "") + f"{len(failed)} of {len(group)} passes not timed: " + "; ".join(
            f"pass {r.repeat}: {r.reason or ('not timed' if r.pending else r.status)}" for r in failed)
    return first.replace(repeat=None, notes=notes, extra=extra, **fields)


def _summaries(group: list[ResultRow]) -> list[dict]:
    out = []
    for r in group:
        d = {"repeat": r.repeat, "status": r.status, "pending": r.pending, "p50_ms": r.latency_p50_ms,
             "speedup": r.speedup_paired, "run_id": (r.environment or {}).get("run_id"), "key": r.key}
        out.append(d)
    return out


def combine_passes(rows: list[ResultRow]) -> tuple[list[ResultRow], dict[str, list[ResultRow]]]:
    """(rows with every repeated run's passes combined into one row per variant and batch, the pass rows of each
    combined key). Rows of single-pass runs are returned unchanged."""
    groups: dict[tuple, list[ResultRow]] = defaultdict(list)
    out = []
    for r in rows:
        if r.repeat is None:
            out.append(r)
        else:
            groups[(base_key(r), (r.environment or {}).get("run_id"))].append(r)
    by_key: dict[str, list[ResultRow]] = {}
    singles = {r.key for r in out}
    for (key, _run), g in sorted(groups.items(), key=lambda kv: max(str((r.environment or {}).get("timestamp", ""))
                                                                      for r in kv[1])):
        c = combine(g)
        if key in singles or key in by_key:  # a newer run of the same key wins (passes or a single run)
            out = [r for r in out if r.key != key]
        out.append(c)
        by_key[key] = sorted(g, key=lambda r: r.repeat or 0)
    return out, by_key


def pass_of(rows: list[ResultRow], k: int) -> ResultRow | None:
    return next((r for r in rows if r.repeat == k), None)


def best_speedup_passes(r_passes: list[ResultRow], best_passes: list[ResultRow]) -> dict | None:
    """The speedup of a repeated row over the best FP32 row of the same run, pass by pass (pass k of each: the same
    pass of the plan), combined over the passes. Paired within a pass where the best FP32 row is the row's own paired
    baseline; else unpaired (separate processes)."""
    pairs, paired = [], True
    for r in r_passes:
        b = pass_of(best_passes, r.repeat)
        if b is None or not _timed(r) or not _timed(b):
            continue
        own = paired_samples(r)
        if own is not None and r.speedup_vs == f"{b.toolchain}/{b.method}" and len(own[0]) >= 3:
            pairs.append(own)
        else:
            paired = False
            pairs.append((samples(b), samples(r)))
    if not pairs or any(len(b) < 3 or len(v) < 3 for b, v in pairs):
        return None
    if not paired:  # one mode for every pass: unpaired (the paired passes' samples serve unpaired as well)
        pairs = [(samples(pass_of(best_passes, r.repeat)), samples(r)) for r in r_passes
                 if _timed(r) and pass_of(best_passes, r.repeat) is not None and _timed(pass_of(best_passes, r.repeat))]
    return repeated_speedup_ci(pairs, paired=paired)
