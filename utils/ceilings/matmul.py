"""The CPU's matmul ceilings, robustly: several sizes, best of several bursts, several libraries.

A speedup against a slow FP32 path flatters; efficiency (achieved ops/s over the ceiling of the
precision the model computes in) does not, if the ceiling is honest. One 1024^3 matmul call
under-states a CPU's peak (too small to amortise packing, one library's kernels, one moment's load),
so here:

- sizes: square matmuls of n >= 2048 (default 2048, 3072, 4096), 2 n^3 ops each;
- bursts: each (library, size) is warmed up once, then timed in `bursts` (>= 5) bursts of
  back-to-back calls (>= min_burst_s each); its rate is the best burst (least disturbed by other load);
- libraries, each recorded on its own: numpy.matmul (float32, its own BLAS, threads via threadpoolctl when
  present) everywhere, and every declared toolchain's (Toolchain.ceilings -> utils.ceilings.provider.Provider in
  its route folder: e.g. its float32 GEMM and its int8 x int8 -> int32 kernel); whatever cannot run in this
  environment is recorded as unavailable;
- a precision's ceiling is the max over its libraries of the best over sizes.

A time budget (default 20 s; the whole run stays <= ~25 s on 2 cores) decides how far up the size
list each library gets: every library first runs the smallest size, then larger sizes are taken in
ascending order only while the run predicted from the library's measured rate fits the remaining
budget; skipped (library, size) pairs are listed with the reason.

Each toolchain environment has its own libraries: the bench measures in the model-preparing environment first, then
with `--merge` in every other environment whose toolchain declares ceilings (merge() keeps the best library per
precision).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

from utils.ceilings.provider import Library, Unavailable, declared

DEFAULT_SIZES = (2048, 3072, 4096)


def _numpy_matmul(n: int, threads: int) -> Callable[[], object]:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return lambda: np.matmul(a, b, out=out)  # BLAS default threads (all cores)

    def run():
        with threadpool_limits(limits=threads, user_api="blas"):
            return np.matmul(a, b, out=out)
    return run


# the suite's own library, measured in every environment beside the declared toolchains'
LIBRARIES = {"numpy.matmul": Library(_numpy_matmul, "fp32", "numpy.matmul float32 (numpy's BLAS)")}


def known_libraries(toolchains: Iterable[str] | None = None) -> dict[str, Library]:
    """Every CPU matmul library measurable here: NumPy's and the declared toolchains' (default: all of them)."""
    out = dict(LIBRARIES)
    for provider in declared(toolchains).values():
        out.update(provider.libraries)
    return out


# ------------------------------------------------------------------------------------------ timing
def _burst(fn: Callable[[], object], calls: int, ops: float, clock=time.perf_counter) -> float:
    s = clock()
    for _ in range(calls):
        fn()
    return calls * ops / max(clock() - s, 1e-12)


def _predict_s(rate: float, n: int, bursts: int, calls: int = 1) -> float:
    """Seconds a (library, n) will take at `rate`: warm-up + bursts, + 20% for setup and allocation."""
    return 1.2 * (1 + bursts * calls) * 2.0 * n ** 3 / rate


# ------------------------------------------------------------------------------------------ measure
def measure(threads: int, budget_s: float = 20.0, *, sizes: Iterable[int] = DEFAULT_SIZES, bursts: int = 5,
            min_burst_s: float = 0.05, libraries: Iterable[str] | None = None,
            factories: dict | None = None, extra_bursts: bool = True,
            toolchains: Iterable[str] | None = None) -> dict:
    """Measure FP32 and INT8 matmul ceilings with `threads` threads within ~budget_s seconds (JSON-able dict).

    1. probe: every library at the smallest size (warm-up call + one timed call = its rate estimate);
    2. plan: larger sizes are added in ascending order, round-robin over libraries, while the
       predicted time of all planned measurements fits the budget (the rest is listed as skipped);
    3. bursts are interleaved: round r times burst r of every planned (library, size) in turn, so
       a transient load spike hits one burst of many configurations instead of all bursts of one,
       and best-of-bursts picks each configuration's undisturbed moment;
    4. extra_bursts: while budget is left, further interleaved rounds (each burst only if it fits;
       cheap configurations get several bursts per round so all get a similar share of the time),
       so the run takes about budget_s (plus imports) and never much more.

    Keys: fp32_ops_per_s / int8_ops_per_s (max over libraries of the best over sizes; None when no
    library ran), fp32_method / int8_method and fp32_library / int8_library (the winners),
    libraries ({name: {precision, method, available, reason, ops_per_s, best_n, sizes: {n: {ops_per_s,
    median_ops_per_s, rates, calls_per_burst}}, skipped: {n: reason}}}), sizes, bursts, min_burst_s,
    threads, budget_s, elapsed_s, matmul_n (the FP32 winner's best size), cpu, measured_at (UTC ISO).
    libraries: the names to measure (default: every library of `toolchains`, utils.ceilings.matmul.known_libraries);
    factories: name -> (n, threads) -> zero-argument callable, overriding/extending theirs (tests).
    """
    from utils.envinfo import cpu_name

    clock = time.perf_counter
    t_start = clock()
    sizes = sorted({int(n) for n in sizes})
    if not sizes:
        raise ValueError("measure needs at least one size")
    bursts = max(1, int(bursts))
    known = known_libraries(toolchains)
    fac = {**{name: lib.factory for name, lib in known.items()}, **(factories or {})}
    libs: dict[str, dict] = {}
    for name in (known if libraries is None else libraries):
        lib = known.get(name)
        libs[name] = {"precision": lib.precision if lib else ("int8" if "int" in name else "fp32"),
                      "method": lib.method if lib else name, "available": None, "reason": None, "ops_per_s": None,
                      "best_n": None, "sizes": {}, "skipped": {}}
    fns: dict[tuple[str, int], tuple[Callable, int]] = {}  # (lib, n) -> (fn, calls per burst)
    est: dict[str, float] = {}  # lib -> rate estimate (ops/s)

    def prepare(name: str, n: int) -> float | None:
        """Build and warm (name, n); returns the rate of one timed call, None when it failed."""
        rec = libs[name]
        try:
            fn = fac[name](n, threads)
            fn()  # warm-up: allocation, packing, thread pool start
            t = clock()
            fn()
            dt = max(clock() - t, 1e-9)
        except Unavailable as exc:
            rec.update(available=False, reason=str(exc))
            return None
        except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
            rec["skipped"][str(n)] = f"failed: {exc.__class__.__name__}: {str(exc)[:120]}"
            return None
        rec["available"] = True
        fns[(name, n)] = (fn, max(1, math.ceil(min_burst_s / dt)))
        return 2.0 * n ** 3 / dt

    # 1. probe every library at the smallest size
    for name in libs:
        r = prepare(name, sizes[0])
        if r:
            est[name] = r
    # 2. plan larger sizes while the predicted total fits
    def burst_cost(name: str, n: int, calls: int = 1) -> float:
        return 1.2 * bursts * calls * 2.0 * n ** 3 / est[name]

    planned = sum(burst_cost(nm, n, c) for (nm, n), (_, c) in fns.items())  # bursts still to run
    for n in sizes[1:]:
        for name in list(est):
            need = _predict_s(est[name], n, bursts)
            left = budget_s - (clock() - t_start) - planned
            if need > left:
                libs[name]["skipped"][str(n)] = f"budget: needs ~{need:.1f} s, {max(left, 0):.1f} s left"
                continue
            if prepare(name, n) is not None:
                planned += burst_cost(name, n, fns[(name, n)][1])
    # 3. interleaved bursts
    rates: dict[tuple[str, int], list[float]] = {k: [] for k in fns}
    calls_of = {k: c for k, (_, c) in fns.items()}
    cost: dict[tuple[str, int], float] = {}
    for _ in range(bursts):
        for key, (fn, calls) in fns.items():
            t = clock()
            rates[key].append(_burst(fn, calls, 2.0 * key[1] ** 3, clock))
            cost[key] = clock() - t
    # 4. budget left: more interleaved bursts (more chances at an undisturbed moment), each only if it fits
    #    A cheap configuration gets several bursts per round (about the time of the costliest one's
    #    burst, at most 16), so every configuration gets a similar share of the remaining time.
    longest = max(cost.values(), default=0.0)
    reps = {k: min(16, max(1, int(longest / max(c, 1e-9)))) for k, c in cost.items()}
    while extra_bursts and fns:
        ran = False
        for key, (fn, calls) in fns.items():
            for _ in range(reps[key]):
                if clock() - t_start + 1.1 * cost[key] > budget_s:
                    break
                rates[key].append(_burst(fn, calls, 2.0 * key[1] ** 3, clock))
                ran = True
        if not ran:
            break
    fns.clear()
    for (name, n), rs in rates.items():
        srt = sorted(rs)
        rec = libs[name]
        rec["sizes"][str(n)] = {"ops_per_s": srt[-1], "median_ops_per_s": srt[len(srt) // 2], "rates": rs,
                                "calls_per_burst": calls_of[(name, n)]}
        if rec["ops_per_s"] is None or srt[-1] > rec["ops_per_s"]:
            rec["ops_per_s"], rec["best_n"] = srt[-1], n

    out = {"cpu": cpu_name(), "threads": threads, "sizes": sizes, "bursts": bursts, "min_burst_s": min_burst_s,
           "budget_s": budget_s, "libraries": libs,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for prec in ("fp32", "int8"):
        cands = [(rec["ops_per_s"], name) for name, rec in libs.items() if rec["precision"] == prec and rec["ops_per_s"]]
        best = max(cands) if cands else (None, None)
        out[f"{prec}_ops_per_s"] = best[0]
        out[f"{prec}_method"] = libs[best[1]]["method"] if best[1] else "unavailable"
        out[f"{prec}_library"] = best[1]
    out["matmul_n"] = libs[out["fp32_library"]]["best_n"] if out["fp32_library"] else None
    out["elapsed_s"] = clock() - t_start
    return out


def merge(*records: dict) -> dict:
    """Combine measure() records of one machine taken in different environments (the model-preparing one's and
    each other toolchain's): per-library details are united (a library measured in several records
    keeps its best), and each precision's ceiling is again the max over all libraries."""
    from utils.ceilings.gpu import merge_cuda

    given = [r for r in records if r]
    if not given:
        raise ValueError("merge needs at least one record")
    gpu = merge_cuda(*(r.get("cuda") for r in given))
    recs = [r for r in given if r.get("libraries") is not None]  # CPU records (a cuda-only one has none)
    if not recs:
        return {"cuda": gpu} if gpu else {}
    if len({(r.get("cpu"), r.get("threads")) for r in recs}) > 1:
        raise ValueError("merge: records of different CPUs or thread counts")
    out = {k: v for k, v in recs[-1].items() if k not in ("libraries", "cuda")}
    if gpu:
        out["cuda"] = gpu
    libs: dict = {}
    for r in recs:
        for name, lib in r.get("libraries", {}).items():
            cur = libs.get(name)
            if cur is None or (lib.get("ops_per_s") or 0) > (cur.get("ops_per_s") or 0):
                libs[name] = lib
    out["libraries"] = libs
    for prec in ("fp32", "int8"):
        cands = [(lib["ops_per_s"], name) for name, lib in libs.items() if lib["precision"] == prec and lib.get("ops_per_s")]
        best = max(cands) if cands else (None, None)
        out[f"{prec}_ops_per_s"], out[f"{prec}_library"] = best
        out[f"{prec}_method"] = libs[best[1]].get("method", best[1]) if best[1] else "unavailable"
    out["matmul_n"] = libs[out["fp32_library"]]["best_n"] if out["fp32_library"] else None
    out["sizes"] = sorted({n for r in recs for n in r.get("sizes", [])})
    out["elapsed_s"] = sum(r.get("elapsed_s", 0.0) for r in recs)
    out["merged_from"] = [r.get("measured_at") for r in recs]
    return out


def summary(rec: dict) -> str:
    """One line per library: best GOP/s per size and what was skipped."""
    lines = []
    for name, r in rec["libraries"].items():
        if not r["available"]:
            lines.append(f"{name:28s} unavailable: {r['reason']}")
            continue
        per = ", ".join(f"{n}: {d['ops_per_s'] / 1e9:.1f}" for n, d in r["sizes"].items())
        skip = f"; skipped {', '.join(r['skipped'])}" if r["skipped"] else ""
        lines.append(f"{name:28s} {r['precision']} GOP/s by n {{{per}}}{skip}")
    return "\n".join(lines)
