"""The device's own ceilings: short FP32 and INT8 matrix-multiply microbenchmarks (torch env).

A speedup against a slow FP32 path flatters; efficiency (achieved ops/s over the ceiling of the
precision the model computes in) does not. Measured once per bench run with the same thread
count as the routes and stored in results/device.json; every row's environment record
carries it.
"""
from __future__ import annotations

import logging
import time

from utils.atomic import atomic_write_json
from utils.envinfo import cpu_name, device_file

log = logging.getLogger(__name__)


def _best_rate(fn, ops: float, min_time: float = 0.5, repeats: int = 5) -> float:
    """Best ops/s over `repeats` timed batches of calls (best = least disturbed by other load)."""
    fn()
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time / repeats and n >= 2:
                break
        best = max(best, n * ops / dt)
    return best


def measure(threads: int, n: int = 1024) -> dict:
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    ops = 2.0 * n ** 3
    fp32 = _best_rate(lambda: torch.mm(a, b), ops)
    out = {"cpu": cpu_name(), "threads": threads, "matmul_n": n, "fp32_ops_per_s": fp32,
           "fp32_method": "torch.mm float32", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        ai = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
        bi = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
        torch._int_mm(ai, bi)
        out["int8_ops_per_s"] = _best_rate(lambda: torch._int_mm(ai, bi), ops)
        out["int8_method"] = "torch._int_mm int8 x int8 -> int32 (oneDNN)"
    except (RuntimeError, AttributeError) as exc:
        out["int8_ops_per_s"] = None
        out["int8_method"] = f"unavailable: {exc.__class__.__name__}"
    return out


def measure_and_store(threads: int) -> dict:
    rec = measure(threads)
    atomic_write_json(device_file(), rec)
    log.info("device ceilings (%d threads): FP32 %.1f GFLOP/s, INT8 %s GOP/s", threads, rec["fp32_ops_per_s"] / 1e9,
             f"{rec['int8_ops_per_s'] / 1e9:.1f}" if rec.get("int8_ops_per_s") else "n/a")
    return rec
