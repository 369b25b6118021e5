"""The device's own ceilings: the CPU's matmul rates per precision, its memory bandwidth, and the GPU's own matmul
rates, each measured robustly (several sizes, best of several bursts, several libraries) -> `<report>/device.json`.

    provider.py  what a toolchain declares (Toolchain.ceilings -> a Provider in quantization/<toolchain>/ceilings.py:
                 its CPU matmul libraries, memory kernels and the GPU's) and the catalogue of what runs here
    matmul.py    the CPU's FP32/INT8 matmul ceilings (measure, merge, summary)
    memory.py    STREAM-like bandwidth (measure_memory, merge_memory, memory_summary)
    gpu.py       the GPU's matmul ceilings through a declared library (measure_cuda, merge_cuda, cuda_summary)

    python -m utils.ceilings --threads 2 --out results/local/device.json [--merge] [--devices cpu,cuda]
                             [--toolchains NAME,...]

Nothing here imports a toolchain library: the declared providers import theirs when they measure, and what cannot
run in an environment is recorded as unavailable.
"""
from __future__ import annotations

import logging

from utils.ceilings.gpu import CUDA_PRECISIONS, CUDA_SIZES, cuda_summary, measure_cuda, merge_cuda
from utils.ceilings.matmul import DEFAULT_SIZES, LIBRARIES, known_libraries, measure, merge, summary
from utils.ceilings.memory import (KERNELS, MEM_ARRAYS, MEM_KERNELS, MEM_METHOD, known_kernels, llc_bytes,
                                   measure_memory, memory_array_mb, memory_arrays, memory_summary, merge_memory)
from utils.ceilings.provider import Gpu, Library, MemoryKernel, Provider, Unavailable, declared, declared_gpu, declaring

log = logging.getLogger(__name__)

__all__ = ["CUDA_PRECISIONS", "CUDA_SIZES", "DEFAULT_SIZES", "Gpu", "KERNELS", "LIBRARIES", "Library", "MEM_ARRAYS",
           "MEM_KERNELS", "MEM_METHOD", "MemoryKernel", "Provider", "Unavailable", "cuda_summary", "declared",
           "declared_gpu", "declaring", "known_kernels", "known_libraries", "llc_bytes", "measure", "measure_and_store",
           "measure_cuda", "measure_memory", "memory_array_mb", "memory_arrays", "memory_summary", "merge",
           "merge_cuda", "merge_memory", "summary"]


def measure_and_store(threads: int, path=None, memory_budget_s: float = 6.0, **kw) -> dict:
    """measure() and measure_memory() (unless memory_budget_s is 0) with every declared toolchain's libraries (or
    kw["toolchains"]'), written atomically to the run's device file (or path)."""
    from utils.atomic import atomic_write_json
    from utils.envinfo import device_file

    rec = measure(threads, **kw)
    if memory_budget_s > 0:
        rec.update(measure_memory(threads, memory_budget_s, toolchains=kw.get("toolchains")))
    atomic_write_json(path or device_file(), rec)
    log.info("device ceilings (%d threads, %.1f s): FP32 %.1f GFLOP/s (%s), INT8 %s GOP/s (%s)", threads,
             rec["elapsed_s"], (rec["fp32_ops_per_s"] or 0) / 1e9, rec["fp32_library"],
             f"{rec['int8_ops_per_s'] / 1e9:.1f}" if rec.get("int8_ops_per_s") else "n/a", rec["int8_library"])
    return rec
