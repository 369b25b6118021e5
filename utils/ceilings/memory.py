"""The device's memory bandwidth: the roofline's other side.

How many bytes per second the cores can stream from main memory. A model call that must read more bytes (weights,
activations, KV cache) than this rate allows in the time its arithmetic needs is memory-bound, and its efficiency is
read against this ceiling, not the matmul one (evaluation/report/table.py). NumPy's kernels run everywhere; a declared
toolchain may add its library's own (Provider.memory, e.g. a triad with that library's threads) over the same arrays.
"""
from __future__ import annotations

import time
from typing import Iterable

from utils.ceilings.provider import MemoryKernel, Unavailable, declared

MEM_METHOD = {"numpy.read": "numpy sum of a, one slice per thread (1 array counted: reads only, like streamed weights)",
              "numpy.copy": "numpy.copyto a = b, one slice per thread (2 arrays counted)",
              "numpy.triad": "numpy a = b + s*c in 256 KiB blocks, one slice per thread (3 arrays counted)"}
MEM_ARRAYS = {"numpy.read": 1, "numpy.copy": 2, "numpy.triad": 3}
MEM_MIN_ARRAY_MB, MEM_MAX_ARRAY_MB = 64.0, 512.0


def llc_bytes() -> int | None:
    """The largest CPU cache this machine reports (Linux sysfs, cpu0), in bytes; None where it is not readable."""
    from pathlib import Path

    best = None
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        best = size if best is None or size > best else best
    return best


def _mem_available_bytes() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def memory_array_mb(llc: int | None = None, available: int | None = None) -> float:
    """Size of each array of the bandwidth kernels: twice the last-level cache (so a pass cannot find its data in
    it), at least MEM_MIN_ARRAY_MB, at most MEM_MAX_ARRAY_MB and an eighth of the available memory per array (a
    cache of more than a quarter of MEM_MAX_ARRAY_MB gets arrays under twice its size: the record keeps both)."""
    mb = max(MEM_MIN_ARRAY_MB, 2.0 * (llc or 0) / 1e6)
    if available:
        mb = min(mb, available / 8 / 1e6)
    return round(min(mb, MEM_MAX_ARRAY_MB), 1)


_MEM_ARRAYS: dict = {}  # n -> [a, b, c]: one set of arrays for every kernel of a measurement (touched once)


def memory_arrays(n: int) -> list:
    """The three float32 arrays (a = 0, b = 1, c = 2) of n elements every kernel of a measurement streams."""
    import numpy as np

    if n not in _MEM_ARRAYS:
        _MEM_ARRAYS.clear()
        _MEM_ARRAYS[n] = [np.full(n, v, np.float32) for v in (0.0, 1.0, 2.0)]
    return _MEM_ARRAYS[n]


def _mem_numpy(kind: str, n: int, threads: int):
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    a, b, c = memory_arrays(n)
    parts = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]
    block = 1 << 16  # 256 KiB of float32: a block of `a` is still in L2 when the add reads it back

    def triad(part):
        s, e = part
        for i in range(s, e, block):
            j = min(i + block, e)
            np.multiply(c[i:j], 3.0, out=a[i:j])
            np.add(a[i:j], b[i:j], out=a[i:j])

    def copy(part):
        np.copyto(a[part[0]:part[1]], b[part[0]:part[1]])

    def read(part):
        return float(a[part[0]:part[1]].sum())

    fn = {"triad": triad, "copy": copy, "read": read}[kind]
    pool = ThreadPoolExecutor(threads)  # numpy releases the GIL inside these loops: the threads stream in parallel

    def run():
        list(pool.map(fn, parts))
    run.close = lambda: pool.shutdown(wait=False)  # type: ignore[attr-defined]
    return run


# the suite's own kernels, measured in every environment beside the declared toolchains'
KERNELS = {name: MemoryKernel(lambda n, t, kind=name.split(".")[1]: _mem_numpy(kind, n, t), MEM_ARRAYS[name],
                              MEM_METHOD[name]) for name in ("numpy.read", "numpy.copy", "numpy.triad")}
MEM_KERNELS = tuple(KERNELS)


def known_kernels(toolchains: Iterable[str] | None = None) -> dict[str, MemoryKernel]:
    """Every memory kernel measurable here: NumPy's and the declared toolchains' (default: all of them)."""
    out = dict(KERNELS)
    for provider in declared(toolchains).values():
        out.update(provider.memory)
    return out


def measure_memory(threads: int, budget_s: float = 6.0, *, array_mb: float | None = None, passes: int = 5,
                   kernels: Iterable[str] | None = None, factories: dict | None = None,
                   toolchains: Iterable[str] | None = None) -> dict:
    """STREAM-like memory bandwidth with `threads` threads: each kernel (read, copy, triad) over float32 arrays much larger
    than the last-level cache, warmed once (first touch), then timed for `passes` passes or more while the budget
    lasts; a kernel's rate is its best pass (bytes counted as STREAM does: each array once per pass, no
    write-allocate traffic), the ceiling the best kernel. Keys: mem_bytes_per_s, mem_library, mem_method,
    memory {array_mb, llc_mb, threads, passes, budget_s, elapsed_s, kernels: {name: {method, available, reason,
    bytes_per_s, rates}}}. kernels: the names to run (default: every kernel of `toolchains`, known_kernels);
    factories: name -> (n elements, threads) -> zero-argument callable, overriding/extending theirs (tests)."""
    clock = time.perf_counter
    t0 = clock()
    llc = llc_bytes()
    mb = float(array_mb) if array_mb is not None else memory_array_mb(llc, _mem_available_bytes())
    n = max(1024, int(mb * 1e6 / 4))
    known = known_kernels(toolchains)
    fac = {**{k: v.factory for k, v in known.items()}, **(factories or {})}
    names = list(known if kernels is None else kernels)
    recs: dict[str, dict] = {k: {"method": known[k].method if k in known else k,
                                 "arrays": known[k].arrays if k in known else 3, "available": None,
                                 "reason": None, "bytes_per_s": None, "rates": []} for k in names}
    share = budget_s / max(1, len(names))
    for i, name in enumerate(names):
        rec = recs[name]
        start = clock()
        try:
            fn = fac[name](n, threads)
            fn()  # first touch: the pages are mapped now, not inside a timed pass
        except Unavailable as exc:
            rec.update(available=False, reason=str(exc))
            continue
        except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
            rec.update(available=False, reason=f"failed: {exc.__class__.__name__}: {str(exc)[:120]}")
            continue
        rec["available"] = True
        moved = rec["arrays"] * n * 4.0
        left = share * (i + 1) - (clock() - t0)  # unspent time of earlier kernels goes to the later ones
        while len(rec["rates"]) < passes or clock() - start < left:
            s = clock()
            fn()
            rec["rates"].append(moved / max(clock() - s, 1e-12))
            if len(rec["rates"]) >= 200:
                break
        rec["bytes_per_s"] = max(rec["rates"])
        close = getattr(fn, "close", None)
        if close:
            close()
        del fn
    _MEM_ARRAYS.clear()
    best = max(((r["bytes_per_s"], k) for k, r in recs.items() if r["bytes_per_s"]), default=(None, None))
    return {"mem_bytes_per_s": best[0], "mem_library": best[1],
            "mem_method": recs[best[1]]["method"] if best[1] else "unavailable",
            "memory": {"array_mb": mb, "llc_mb": round(llc / 1e6, 1) if llc else None, "threads": threads,
                       "passes": passes, "budget_s": budget_s, "elapsed_s": clock() - t0, "kernels": recs}}


def merge_memory(*records: dict) -> dict:
    """The memory part of several records of one machine (device.json files of different environments): the record
    with the highest bandwidth, or {} when none has one. Fields as measure_memory's."""
    cands = [r for r in records if r and r.get("mem_bytes_per_s")]
    if not cands:
        return {}
    best = max(cands, key=lambda r: r["mem_bytes_per_s"])
    return {k: best[k] for k in ("mem_bytes_per_s", "mem_library", "mem_method", "memory") if k in best}


def memory_summary(rec: dict) -> str:
    mem = rec.get("memory") or {}
    lines = []
    for name, r in (mem.get("kernels") or {}).items():
        lines.append(f"{name:28s} unavailable: {r['reason']}" if not r.get("available") else
                     f"{name:28s} memory GB/s best {r['bytes_per_s'] / 1e9:.1f} over {len(r['rates'])} passes "
                     f"(arrays {mem.get('array_mb')} MB, last-level cache {mem.get('llc_mb')} MB)")
    return "\n".join(lines)
