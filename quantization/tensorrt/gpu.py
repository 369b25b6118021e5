"""Device memory, streams and CUDA-event timing through cuda-python (`cuda.bindings.runtime`).

cuda-python installs and imports everywhere (no GPU needed to import it); every call returns
a tuple `(cudaError_t, *values)`, unwrapped by `check`. pycuda is not used (it does not build
on the machines without CUDA headers) and is not needed.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .cache import DeviceInfo


class CudaError(RuntimeError):
    pass


def cudart():
    from cuda.bindings import runtime  # cuda-python >= 12.6 layout

    return runtime


def _error_name(rt, err) -> str:
    try:
        ok, name = rt.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - only for the message
        return str(err)


def check(result, what: str = "CUDA call"):
    """Unwrap cuda-python's (err, *values): raise CudaError on failure, return the value(s)."""
    rt = cudart()
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise CudaError(f"{what} failed: {_error_name(rt, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def cuda_problem() -> str | None:
    """None when a CUDA device can be used, else a short reason (no cuda-python, no driver, no GPU)."""
    try:
        rt = cudart()
    except ImportError:
        return "cuda-python is not installed"
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0:
        return _error_name(rt, err)
    if count < 1:
        return "cudaGetDeviceCount() = 0"
    return None


def device_info(index: int = 0) -> DeviceInfo:
    rt = cudart()
    check(rt.cudaSetDevice(index), "cudaSetDevice")
    prop = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return DeviceInfo(name=str(name).strip(), compute_capability=f"{prop.major}.{prop.minor}")


def handle(obj) -> int:
    """Integer address of a cuda-python handle (cudaStream_t, pointer int)."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


class DeviceBuffer:
    """cudaMalloc'd memory of at least `nbytes`; grows on demand."""

    def __init__(self, nbytes: int = 0):
        self.ptr, self.nbytes = 0, 0
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = check(cudart().cudaMalloc(int(nbytes)), f"cudaMalloc({nbytes})")
            self.nbytes = int(nbytes)
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
        self.ptr, self.nbytes = 0, 0

    def __int__(self) -> int:
        return int(self.ptr)


class Stream:
    def __init__(self):
        rt = cudart()
        self.rt = rt
        self.stream = check(rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return handle(self.stream)

    def h2d(self, dst: DeviceBuffer | int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        check(self.rt.cudaMemcpyAsync(int(dst), host.ctypes.data, host.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "cudaMemcpyAsync H2D")

    def d2h(self, host: np.ndarray, src: DeviceBuffer | int) -> None:
        if not host.flags.c_contiguous:
            raise ValueError("host buffer must be C-contiguous")
        check(self.rt.cudaMemcpyAsync(host.ctypes.data, int(src), host.nbytes,
                                      self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "cudaMemcpyAsync D2H")

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.stream is not None:
            check(self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


GPU_COMPUTE_KIND = "cuda-events"  # latency kind of EventTimer: GPU time of the enqueued work only
E2E_KIND = "cuda-e2e"  # latency kind of e2e_timer: host wall time incl. H2D/D2H copies; never compare the two


class EventTimer:
    """GPU time of work enqueued on one stream, between two CUDA events (milliseconds per run).

    `time(enqueue, repeat=k, lead=1)`: enqueue `lead` untimed runs first (they keep the GPU busy while
    the host enqueues the timed ones), record the start event, enqueue `repeat` runs back to back,
    record the end event, synchronize and return elapsed / repeat. The start event then fires when the
    GPU finishes the lead run, not when the host starts enqueueing, so host enqueue time is not counted
    as GPU time (as long as one run's GPU time exceeds one host enqueue; more `repeat` amortises the rest).
    """

    def __init__(self, stream: Stream):
        rt = cudart()
        self.rt, self.stream = rt, stream
        self.start = check(rt.cudaEventCreate(), "cudaEventCreate")
        self.end = check(rt.cudaEventCreate(), "cudaEventCreate")

    def time(self, enqueue: Callable[[], object], repeat: int = 1, lead: int = 1) -> float:
        if repeat < 1 or lead < 0:
            raise ValueError("need repeat >= 1 and lead >= 0")
        for _ in range(lead):
            enqueue()
        check(self.rt.cudaEventRecord(self.start, self.stream.stream), "cudaEventRecord")
        for _ in range(repeat):
            enqueue()
        check(self.rt.cudaEventRecord(self.end, self.stream.stream), "cudaEventRecord")
        check(self.rt.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        return float(check(self.rt.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime")) / repeat

    def timer(self, repeat: int = 8, lead: int = 1) -> Callable[[Callable[[], object]], float]:
        """The harness plug-in: `timer(enqueue) -> GPU ms per run` (latency kind GPU_COMPUTE_KIND)."""
        if repeat < 1 or lead < 0:
            raise ValueError("need repeat >= 1 and lead >= 0")
        return lambda enqueue: self.time(enqueue, repeat=repeat, lead=lead)

    def destroy(self) -> None:
        for ev in (self.start, self.end):
            check(self.rt.cudaEventDestroy(ev), "cudaEventDestroy")


def e2e_timer(stream: Stream, clock: Callable[[], float] = time.perf_counter) -> Callable[[Callable[[], object]], float]:
    """The harness plug-in for end-to-end latency (kind E2E_KIND): host wall ms of `fn()` (which copies the
    input host->device, runs, and copies the outputs device->host on `stream`) until the stream is idle."""

    def timer(fn: Callable[[], object]) -> float:
        t0 = clock()
        fn()
        stream.synchronize()
        return (clock() - t0) * 1000.0

    return timer
