"""The device's own matmul ceilings, robustly: several sizes, best of several bursts, several libraries.

A speedup against a slow FP32 path flatters; efficiency (achieved ops/s over the ceiling of the
precision the model computes in) does not, if the ceiling is honest. One 1024^3 torch.mm call
under-states a CPU's peak (too small to amortise packing, one library's kernels, one moment's load),
so here:

- sizes: square matmuls of n >= 2048 (default 2048, 3072, 4096), 2 n^3 ops each;
- bursts: each (library, size) is warmed up once, then timed in `bursts` (>= 5) bursts of
  back-to-back calls (>= min_burst_s each); its rate is the best burst (least disturbed by other load);
- libraries, each recorded on its own:
    fp32: torch.mm (float32), numpy.matmul (float32, its own BLAS, threads via threadpoolctl when present);
    int8: torch._int_mm (int8 x int8 -> int32, oneDNN), onnxruntime MatMulInteger (uint8 x int8 ->
    int32, B a constant initializer as in a quantized model) when onnx + onnxruntime import;
- a precision's ceiling is the max over its libraries of the best over sizes.

A time budget (default 20 s; the whole run stays <= ~25 s on 2 cores) decides how far up the size
list each library gets: every library first runs the smallest size, then larger sizes are taken in
ascending order only while the run predicted from the library's measured rate fits the remaining
budget; skipped (library, size) pairs are listed with the reason. torch, numpy, onnx and
onnxruntime are imported lazily; whatever is not importable is recorded as unavailable.

On the 2-core bench machine (shared, 2 threads) the default 20 s budget covers n = 2048 and 3072
for torch.mm, numpy.matmul and torch._int_mm (n = 4096 fp32 alone needs ~10 s per library); the
torch env has no onnxruntime, so run `python -m utils.ceilings --out results/device.json --merge`
in the onnxruntime env as well to add MatMulInteger (merge() keeps the best library per precision).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

log = logging.getLogger(__name__)

DEFAULT_SIZES = (2048, 3072, 4096)
DEFAULT_LIBRARIES = ("torch.mm", "numpy.matmul", "onnxruntime.MatMul", "torch._int_mm", "onnxruntime.MatMulInteger")
PRECISION = {"torch.mm": "fp32", "numpy.matmul": "fp32", "onnxruntime.MatMul": "fp32", "torch._int_mm": "int8",
             "onnxruntime.MatMulInteger": "int8"}
METHOD = {"torch.mm": "torch.mm float32",
          "numpy.matmul": "numpy.matmul float32 (numpy's BLAS)",
          "torch._int_mm": "torch._int_mm int8 x int8 -> int32 (oneDNN)",
          "onnxruntime.MatMulInteger": "onnxruntime MatMulInteger uint8 x int8 -> int32 (one-node model, CPU EP)",
          "onnxruntime.MatMul": "onnxruntime MatMul float32 (one-node model, CPU EP, MLAS SGEMM)"}


class Unavailable(Exception):
    """A library cannot run here (not importable, op missing)."""


# --------------------------------------------------------------------------------------- factories
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


def _ort_session(model, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any ORT failure means: not measurable here
        raise Unavailable(f"onnxruntime: {exc.__class__.__name__}: {str(exc)[:120]}") from exc


def _ort_matmul_fp32(n: int, threads: int) -> Callable[[], object]:
    """ONNX Runtime's own SGEMM (MLAS): on some CPUs faster than the BLAS torch and NumPy use."""
    try:
        import numpy as np
        import onnxruntime  # noqa: F401
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise Unavailable("onnx/onnxruntime not importable") from exc
    rng = np.random.default_rng(0)
    b = rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "ceiling",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])],
        initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    sess = _ort_session(model, threads)
    feed = {"A": rng.standard_normal((n, n)).astype(np.float32)}
    return lambda: sess.run(None, feed)


def _ort_matmul_integer(n: int, threads: int) -> Callable[[], object]:
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise Unavailable("onnx/onnxruntime not importable") from exc
    rng = np.random.default_rng(0)
    b = rng.integers(-128, 128, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "ceiling",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
        initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any ORT failure means: not measurable here
        raise Unavailable(f"onnxruntime: {exc.__class__.__name__}: {str(exc)[:120]}") from exc
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    feed = {"A": a}
    return lambda: sess.run(None, feed)


FACTORIES: dict[str, Callable[[int, int], Callable[[], object]]] = {
    "torch.mm": _torch_mm, "numpy.matmul": _numpy_matmul, "torch._int_mm": _torch_int_mm,
    "onnxruntime.MatMulInteger": _ort_matmul_integer, "onnxruntime.MatMul": _ort_matmul_fp32}


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
            min_burst_s: float = 0.05, libraries: Iterable[str] = DEFAULT_LIBRARIES,
            factories: dict | None = None, extra_bursts: bool = True) -> dict:
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
    factories: name -> (n, threads) -> zero-argument callable; overrides/extends FACTORIES (tests).
    """
    from utils.envinfo import cpu_name

    clock = time.perf_counter
    t_start = clock()
    sizes = sorted({int(n) for n in sizes})
    if not sizes:
        raise ValueError("measure needs at least one size")
    bursts = max(1, int(bursts))
    fac = {**FACTORIES, **(factories or {})}
    libs: dict[str, dict] = {}
    for name in libraries:
        libs[name] = {"precision": PRECISION.get(name, "int8" if "int" in name else "fp32"),
                      "method": METHOD.get(name, name), "available": None, "reason": None, "ops_per_s": None,
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
        out[f"{prec}_method"] = METHOD.get(best[1], best[1]) if best[1] else "unavailable"
        out[f"{prec}_library"] = best[1]
    out["matmul_n"] = libs[out["fp32_library"]]["best_n"] if out["fp32_library"] else None
    out["elapsed_s"] = clock() - t_start
    return out


def measure_and_store(threads: int, path=None, memory_budget_s: float = 6.0, **kw) -> dict:
    """measure() and measure_memory() (unless memory_budget_s is 0), written atomically to results/device.json (or
    path)."""
    from utils.atomic import atomic_write_json
    from utils.envinfo import device_file

    rec = measure(threads, **kw)
    if memory_budget_s > 0:
        rec.update(measure_memory(threads, memory_budget_s))
    atomic_write_json(path or device_file(), rec)
    log.info("device ceilings (%d threads, %.1f s): FP32 %.1f GFLOP/s (%s), INT8 %s GOP/s (%s)", threads,
             rec["elapsed_s"], (rec["fp32_ops_per_s"] or 0) / 1e9, rec["fp32_library"],
             f"{rec['int8_ops_per_s'] / 1e9:.1f}" if rec.get("int8_ops_per_s") else "n/a", rec["int8_library"])
    return rec


def merge(*records: dict) -> dict:
    """Combine measure() records of one machine taken in different environments (e.g. the torch env
    and the onnxruntime env): per-library details are united (a library measured in several records
    keeps its best), and each precision's ceiling is again the max over all libraries."""
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
        out[f"{prec}_method"] = METHOD.get(best[1], best[1]) if best[1] else "unavailable"
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


# ------------------------------------------------------------------------------------------ the GPU's own ceilings
# The efficiency column of a cuda row needs the GPU's matmul rate in the precision the row computes in, measured
# through torch on that GPU, like the CPU ceilings above: square matmuls of a few sizes, each warmed up, then
# `bursts` bursts of back-to-back calls (>= min_burst_s each) timed by a pair of CUDA events around the burst
# (the GPU's time, not the host's), the best burst kept; a precision's ceiling is its best size. torch is imported
# inside the functions only (utils/ imports no toolchain library at import time).

CUDA_SIZES = (2048, 4096, 8192)
CUDA_PRECISIONS = ("bf16", "fp16", "fp8", "int8", "fp32")  # measured in this order (fp32 is the slowest)
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
            "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
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


def measure_cuda(budget_s: float = 10.0, *, sizes: Iterable[int] = CUDA_SIZES, bursts: int = 5,
                 min_burst_s: float = 0.02, precisions: Iterable[str] = CUDA_PRECISIONS, info: dict | None = None,
                 factory: Callable[[str, int], Callable[[], object]] | None = None,
                 timer: Callable[[Callable[[], object], int], float] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> dict:
    """The GPU's matmul ceilings per precision within ~budget_s (a JSON-able dict, `device.json`'s "cuda" entry).

    For each precision (bf16, fp16, fp8, int8, fp32) the sizes in ascending order: operands made, one warm-up call,
    one timed call (the calls per burst: enough for min_burst_s), then `bursts` timed bursts; its rate is the best
    burst (2 n^3 ops a call). A larger size is taken only while its predicted time fits what the budget leaves
    (the rest is listed as skipped); a precision this GPU or torch lacks is `available: False` with the reason.
    Keys: available, reason, gpu, capability, torch, cuda_runtime, matmul_tf32, `<prec>_ops_per_s` and
    `<prec>_method` (None / "unavailable" where not measured), precisions ({prec: {method, available, reason,
    ops_per_s, best_n, sizes: {n: {ops_per_s, median_ops_per_s, rates, calls_per_burst}}, skipped}}), sizes, bursts,
    min_burst_s, budget_s, elapsed_s, measured_at. info/factory/timer/clock: the GPU's description, a
    (precision, n) -> callable maker and a (fn, calls) -> seconds clock (default: cuda_device_info, cuda_matmul on
    "cuda", CUDA events); tests pass fakes or the CPU."""
    t0 = clock()
    sizes, bursts = sorted({int(n) for n in sizes}), max(1, int(bursts))
    out = {"available": False, "reason": None, "sizes": sizes, "bursts": bursts, "min_burst_s": min_burst_s,
           "budget_s": budget_s, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    real = factory is None
    if info is None:
        try:
            info = cuda_device_info()
        except Unavailable as exc:
            out["reason"] = str(exc)
            return out
    out.update({k: v for k, v in info.items() if k != "cc"}, available=True)
    factory = factory or (lambda prec, n: cuda_matmul(prec, n, "cuda", info.get("cc")))
    timer = timer or cuda_event_seconds
    recs: dict[str, dict] = {}
    for prec in precisions:
        rec = recs[prec] = {"method": CUDA_METHOD.get(prec, prec), "available": None, "reason": None,
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
                if real:
                    _release_cuda()
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


def _release_cuda() -> None:
    import torch

    torch.cuda.empty_cache()


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
    lines = [f"cuda: {rec.get('gpu')} (compute capability {rec.get('capability')}, torch {rec.get('torch')})"]
    for prec, r in rec.get("precisions", {}).items():
        if r["available"] is False:
            lines.append(f"  {prec:5s} unavailable: {r['reason']}")
            continue
        per = ", ".join(f"{n}: {d['ops_per_s'] / 1e12:.1f}" for n, d in r["sizes"].items())
        skip = f"; skipped {', '.join(r['skipped'])}" if r["skipped"] else ""
        lines.append(f"  {prec:5s} TOP/s by n {{{per}}}{skip}")


# ------------------------------------------------------------------------------------------ memory bandwidth
# The roofline's other side: how many bytes per second the cores can stream from main memory. A model call that
# must read more bytes (weights, activations, KV cache) than this rate allows in the time its arithmetic needs is
# memory-bound, and its efficiency is read against this ceiling, not the matmul one (evaluation/report/aggregate.py).
MEM_KERNELS = ("numpy.read", "numpy.copy", "numpy.triad", "torch.triad")
MEM_METHOD = {"numpy.read": "numpy sum of a, one slice per thread (1 array counted: reads only, like streamed weights)",
              "numpy.copy": "numpy.copyto a = b, one slice per thread (2 arrays counted)",
              "numpy.triad": "numpy a = b + s*c in 256 KiB blocks, one slice per thread (3 arrays counted)",
              "torch.triad": "torch.add(b, c, alpha=s, out=a) with torch's threads (3 arrays counted)"}
MEM_ARRAYS = {"numpy.read": 1, "numpy.copy": 2, "numpy.triad": 3, "torch.triad": 3}
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


def _mem_arrays(n: int):
    import numpy as np

    if n not in _MEM_ARRAYS:
        _MEM_ARRAYS.clear()
        _MEM_ARRAYS[n] = [np.full(n, v, np.float32) for v in (0.0, 1.0, 2.0)]
    return _MEM_ARRAYS[n]


def _mem_numpy(kind: str, n: int, threads: int):
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    a, b, c = _mem_arrays(n)
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


def _mem_torch_triad(n: int, threads: int):
    try:
        import torch
    except ImportError as exc:
        raise Unavailable("torch not importable") from exc
    torch.set_num_threads(threads)
    a, b, c = (torch.from_numpy(x) for x in _mem_arrays(n))
    return lambda: torch.add(b, c, alpha=3.0, out=a)


MEM_FACTORIES: dict[str, Callable[[int, int], Callable[[], object]]] = {
    "numpy.read": lambda n, t: _mem_numpy("read", n, t),
    "numpy.copy": lambda n, t: _mem_numpy("copy", n, t), "numpy.triad": lambda n, t: _mem_numpy("triad", n, t),
    "torch.triad": _mem_torch_triad}


def measure_memory(threads: int, budget_s: float = 6.0, *, array_mb: float | None = None, passes: int = 5,
                   kernels: Iterable[str] = MEM_KERNELS, factories: dict | None = None) -> dict:
    """STREAM-like memory bandwidth with `threads` threads: each kernel (read, copy, triad) over float32 arrays much larger
    than the last-level cache, warmed once (first touch), then timed for `passes` passes or more while the budget
    lasts; a kernel's rate is its best pass (bytes counted as STREAM does: each array once per pass, no
    write-allocate traffic), the ceiling the best kernel. Keys: mem_bytes_per_s, mem_library, mem_method,
    memory {array_mb, llc_mb, threads, passes, budget_s, elapsed_s, kernels: {name: {method, available, reason,
    bytes_per_s, rates}}}. factories: name -> (n elements, threads) -> zero-argument callable (tests)."""
    clock = time.perf_counter
    t0 = clock()
    llc = llc_bytes()
    mb = float(array_mb) if array_mb is not None else memory_array_mb(llc, _mem_available_bytes())
    n = max(1024, int(mb * 1e6 / 4))
    fac = {**MEM_FACTORIES, **(factories or {})}
    names = list(kernels)
    recs: dict[str, dict] = {k: {"method": MEM_METHOD.get(k, k), "arrays": MEM_ARRAYS.get(k, 3), "available": None,
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
            "mem_method": MEM_METHOD.get(best[1], best[1]) if best[1] else "unavailable",
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


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m utils.ceilings", description="measure matmul ceilings")
    # (the bench runs this with --merge in every environment whose toolchain declares measures_ceilings)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--out", type=Path, help="write the record here (atomic JSON)")
    ap.add_argument("--merge", action="store_true", help="merge with the record already at --out (another env's)")
    ap.add_argument("--devices", default="auto",
                    help="cpu, cuda or cpu,cuda: whose ceilings to measure (auto: the CPU, and the GPU when torch "
                         "sees one; named cuda without one records why)")
    ap.add_argument("--cuda-budget", type=float, default=10.0, help="seconds for the GPU's ceilings")
    ap.add_argument("--memory-budget", type=float, default=6.0,
                    help="seconds for the memory-bandwidth kernels (0: not measured)")
    args = ap.parse_args()
    devs = {d.strip() for d in args.devices.split(",") if d.strip()}
    bad = devs - {"auto", "cpu", "cuda"}
    if bad or not devs:
        ap.error(f"--devices: unknown {', '.join(sorted(bad)) or 'empty list'}; valid: cpu, cuda, auto")
    r = measure(args.threads, args.budget) if devs & {"auto", "cpu"} else {}
    if r and args.memory_budget > 0:
        r.update(measure_memory(args.threads, args.memory_budget))
    if devs & {"auto", "cuda"}:
        gpu = measure_cuda(args.cuda_budget)
        if gpu["available"] or "cuda" in devs:
            r["cuda"] = gpu
    if args.out and args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        r = {**merge(old, r), **merge_memory(old, r)}
    if args.out:
        from utils.atomic import atomic_write_json

        atomic_write_json(args.out, r)
    if r.get("libraries") is not None:
        print(summary(r))
    if r.get("memory"):
        print(memory_summary(r))
    if r.get("cuda"):
        print(cuda_summary(r["cuda"]))
    print(json.dumps({k: v for k, v in r.items() if k not in ("libraries", "cuda", "memory")}, indent=1))
