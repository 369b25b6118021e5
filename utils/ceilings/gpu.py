"""The GPU's own matmul ceilings, for the efficiency column of a cuda row.

A cuda row's efficiency needs the GPU's matmul rate in the precision the row computes in, measured through a
declared library on that GPU (Toolchain.ceilings -> Provider.gpu: the model-preparing toolchain's), like the CPU
ceilings: square matmuls of a few sizes, each warmed up, then `bursts` bursts of back-to-back calls (>= min_burst_s
each) timed by the library's device clock around the burst (the GPU's time, not the host's), the best burst kept; a
precision's ceiling is its best size. The library is imported by its provider only when measuring.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

from utils.ceilings.provider import Gpu, Unavailable, declared_gpu

CUDA_SIZES = (2048, 4096, 8192)
CUDA_PRECISIONS = ("bf16", "fp16", "fp8", "int8", "fp32")  # measured in this order (fp32 is the slowest)


def measure_cuda(budget_s: float = 10.0, *, sizes: Iterable[int] = CUDA_SIZES, bursts: int = 5,
                 min_burst_s: float = 0.02, precisions: Iterable[str] = CUDA_PRECISIONS, info: dict | None = None,
                 factory: Callable[[str, int], Callable[[], object]] | None = None,
                 timer: Callable[[Callable[[], object], int], float] | None = None,
                 clock: Callable[[], float] = time.perf_counter, gpu: Gpu | None = None,
                 toolchains: Iterable[str] | None = None) -> dict:
    """The GPU's matmul ceilings per precision within ~budget_s (a JSON-able dict, `device.json`'s "cuda" entry).

    For each precision (bf16, fp16, fp8, int8, fp32) the sizes in ascending order: operands made, one warm-up call,
    one timed call (the calls per burst: enough for min_burst_s), then `bursts` timed bursts; its rate is the best
    burst (2 n^3 ops a call). A larger size is taken only while its predicted time fits what the budget leaves
    (the rest is listed as skipped); a precision this GPU or library lacks is `available: False` with the reason.
    Keys: available, reason, gpu, capability, library, what the provider's info adds, `<prec>_ops_per_s` and
    `<prec>_method` (None / "unavailable" where not measured), precisions ({prec: {method, available, reason,
    ops_per_s, best_n, sizes: {n: {ops_per_s, median_ops_per_s, rates, calls_per_burst}}, skipped}}), sizes, bursts,
    min_burst_s, budget_s, elapsed_s, measured_at. gpu: the library's GPU ceilings (default: the first of
    `toolchains` declaring one, utils.ceilings.provider.declared_gpu); info/factory/timer/clock override its device
    description, (precision, n) -> callable maker and (fn, calls) -> seconds clock; tests pass fakes or the CPU."""
    t0 = clock()
    sizes, bursts = sorted({int(n) for n in sizes}), max(1, int(bursts))
    out = {"available": False, "reason": None, "sizes": sizes, "bursts": bursts, "min_burst_s": min_burst_s,
           "budget_s": budget_s, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    gpu = gpu or declared_gpu(toolchains)
    if gpu is None and (info is None or factory is None or timer is None):
        out["reason"] = "no toolchain here declares GPU ceilings (Toolchain.ceilings with a Provider.gpu)"
        return out
    release = gpu.release if gpu is not None and factory is None else None
    methods = gpu.methods if gpu is not None else {}
    if info is None:
        try:
            info = gpu.info()
        except Unavailable as exc:
            out["reason"] = str(exc)
            return out
    out.update({k: v for k, v in info.items() if k != "cc"}, available=True)
    factory = factory or (lambda prec, n: gpu.matmul(prec, n, "cuda", info.get("cc")))
    timer = timer or gpu.timer
    recs: dict[str, dict] = {}
    for prec in precisions:
        rec = recs[prec] = {"method": methods.get(prec, prec), "available": None, "reason": None,
                            "ops_per_s": None, "best_n": None, "sizes": {}, "skipped": {}}
        rate = None
        for n in sizes:
            ops = 2.0 * n ** 3
            left = budget_s - (clock() - t0)
            if rate:
                call_s = ops / rate
                need = 1.2 * (2 * call_s + bursts * max(min_burst_s, call_s))
                if need > left:
                    rec["skipped"][str(n)] = f"budget: needs ~{need:.2f} s, {max(left, 0):.2f} s left"
                    continue
            elif left <= 0:
                rec["skipped"][str(n)] = "budget: none left"
                continue
            try:
                fn = factory(prec, n)
                timer(fn, 1)  # warm-up: library handles, heuristics, clocks up
                one = max(timer(fn, 1), 1e-9)
                calls = max(1, math.ceil(min_burst_s / one))
                rates = [calls * ops / max(timer(fn, calls), 1e-12) for _ in range(bursts)]
            except Unavailable as exc:
                if rec["available"]:  # a smaller size ran: this one failed (e.g. out of memory)
                    rec["skipped"][str(n)] = f"failed: {exc}"
                    continue
                rec.update(available=False, reason=str(exc))
                break
            except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
                rec["skipped"][str(n)] = f"failed: {exc.__class__.__name__}: {str(exc)[:120]}"
                continue
            finally:
                fn = None
                if release is not None:
                    release()
            rec["available"] = True
            srt = sorted(rates)
            rate = srt[-1]
            rec["sizes"][str(n)] = {"ops_per_s": rate, "median_ops_per_s": srt[len(srt) // 2], "rates": rates,
                                    "calls_per_burst": calls}
            if rec["ops_per_s"] is None or rate > rec["ops_per_s"]:
                rec["ops_per_s"], rec["best_n"] = rate, n
        out[f"{prec}_ops_per_s"] = rec["ops_per_s"]
        out[f"{prec}_method"] = rec["method"] if rec["ops_per_s"] else "unavailable"
    out["precisions"] = recs
    out["elapsed_s"] = clock() - t0
    return out


def merge_cuda(*records: dict | None) -> dict | None:
    """The GPU entry of merged device records: the newest one that measured something, else the newest one."""
    recs = [r for r in records if r]
    if not recs:
        return None
    return next((r for r in reversed(recs) if r.get("available")), recs[-1])


def cuda_summary(rec: dict) -> str:
    """One line per precision (best TOP/s per size) or why it was not measured."""
    if not rec.get("available"):
        return f"cuda: not measured ({rec.get('reason')})"
    lines = [f"cuda: {rec.get('gpu')} (compute capability {rec.get('capability')}, {rec.get('library')})"]
    for prec, r in rec.get("precisions", {}).items():
        if r["available"] is False:
            lines.append(f"  {prec:5s} unavailable: {r['reason']}")
            continue
        per = ", ".join(f"{n}: {d['ops_per_s'] / 1e12:.1f}" for n, d in r["sizes"].items())
        skip = f"; skipped {', '.join(r['skipped'])}" if r["skipped"] else ""
        lines.append(f"  {prec:5s} TOP/s by n {{{per}}}{skip}")
    return "\n".join(lines)
