"""The torch toolchain's device ceilings (Toolchain.ceilings): torch.mm and torch._int_mm on the CPU, a triad with torch's
threads for memory bandwidth, and the GPU's own matmul rates per precision through torch, timed by CUDA events.

torch is imported inside the functions only: utils.ceilings resolves this module in any environment and records
what cannot run there as unavailable.
"""
from __future__ import annotations

from typing import Callable

from utils.ceilings.memory import memory_arrays
from utils.ceilings.provider import Gpu, Library, MemoryKernel, Provider, Unavailable


def _torch_mm(n: int, threads: int) -> Callable[[], object]:
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not importable") from exc
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def _torch_int_mm(n: int, threads: int) -> Callable[[], object]:
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not importable") from exc
    if not hasattr(torch, "_int_mm"):
        raise Unavailable("torch._int_mm missing")
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g)
    try:
        torch._int_mm(a, b)
    except (RuntimeError, NotImplementedError) as exc:
        raise Unavailable(f"torch._int_mm: {exc.__class__.__name__}: {str(exc)[:120]}") from exc
    return lambda: torch._int_mm(a, b)


def _mem_torch_triad(n: int, threads: int):
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not importable") from exc
    torch.set_num_threads(threads)
    a, b, c = (torch.from_numpy(x) for x in memory_arrays(n))
    return lambda: torch.add(b, c, alpha=3.0, out=a)


# ------------------------------------------------------------------------------------------ the GPU's own ceilings
CUDA_FP8_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and later
CUDA_METHOD = {"bf16": "torch.mm bfloat16", "fp16": "torch.mm float16",
               "fp8": "torch._scaled_mm float8_e4m3fn x float8_e4m3fn -> bfloat16 (per-tensor scales)",
               "int8": "torch._int_mm int8 x int8 -> int32", "fp32": "torch.mm float32"}


def cuda_device_info() -> dict:
    """The GPU the ceilings are measured on (device 0); Unavailable when torch has no CUDA device here."""
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not importable") from exc
    if not torch.cuda.is_available():
        raise Unavailable(f"CUDA is not available (torch {torch.__version__}, CUDA {torch.version.cuda})")
    cc = tuple(int(x) for x in torch.cuda.get_device_capability(0))
    return {"gpu": torch.cuda.get_device_name(0), "capability": f"{cc[0]}.{cc[1]}", "cc": cc,
            "library": f"torch {torch.__version__}", "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def cuda_matmul(prec: str, n: int, device: str = "cuda", cc: tuple | None = None) -> Callable[[], object]:
    """A zero-argument n x n x n matmul in `prec` on `device` (operands made once); Unavailable where this torch or
    GPU has no such kernel (fp8 below compute capability 8.9, a missing op). Runs on any torch device (the CPU in
    tests, where its kernels exist)."""
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not importable") from exc
    g = torch.Generator(device=device).manual_seed(0)
    if prec in ("fp32", "bf16", "fp16"):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        a = torch.randn(n, n, generator=g, device=device).to(dtype)
        b = torch.randn(n, n, generator=g, device=device).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        fn = lambda: torch.mm(a, b, out=out)  # noqa: E731
    elif prec == "int8":
        if not hasattr(torch, "_int_mm"):
            raise Unavailable("torch._int_mm missing")
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g, device=device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g, device=device)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
    elif prec == "fp8":
        if cc is not None and tuple(cc) < CUDA_FP8_CAPABILITY:
            raise Unavailable(f"fp8: compute capability {cc[0]}.{cc[1]} < {CUDA_FP8_CAPABILITY[0]}."
                              f"{CUDA_FP8_CAPABILITY[1]} (no FP8 tensor cores)")
        if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
            raise Unavailable("fp8: this torch has no float8_e4m3fn / torch._scaled_mm")
        a = torch.randn(n, n, generator=g, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, generator=g, device=device).to(torch.float8_e4m3fn).t()  # column-major, as required
        one = torch.ones((), device=device, dtype=torch.float32)
        fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    else:
        raise ValueError(f"unknown precision {prec!r}")
    try:
        fn()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        raise Unavailable(f"{CUDA_METHOD[prec]}: {exc.__class__.__name__}: {str(exc).strip()[:120]}") from exc
    return fn


def cuda_event_seconds(fn: Callable[[], object], calls: int) -> float:
    """Seconds the GPU spent on `calls` back-to-back calls of fn: a pair of CUDA events around them, the end event
    synchronised before reading."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


def _release_cuda() -> None:
    import torch

    torch.cuda.empty_cache()


CEILINGS = Provider(
    libraries={"torch.mm": Library(_torch_mm, "fp32", "torch.mm float32"),
               "torch._int_mm": Library(_torch_int_mm, "int8", "torch._int_mm int8 x int8 -> int32 (oneDNN)")},
    memory={"torch.triad": MemoryKernel(_mem_torch_triad, 3,
                                        "torch.add(b, c, alpha=s, out=a) with torch's threads (3 arrays counted)")},
    gpu=Gpu(info=cuda_device_info, matmul=cuda_matmul, timer=cuda_event_seconds, release=_release_cuda,
            methods=CUDA_METHOD),
)
