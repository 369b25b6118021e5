"""Model-agnostic timing harness: takes a callable, knows nothing about models or runtimes.

First call timed on its own (it includes lazy initialisation / compilation), then warm-up,
then a loop until BOTH a minimum wall time and a minimum iteration count are reached.
GPU runtimes pass `sync` (e.g. a stream synchronize) so queued work is inside the timer,
or time with device events and hand the samples to `Latency.from_values`.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

LATENCY_KINDS = ("host-wall", "cuda-events", "tensorrt-gpu-compute", "cuda-e2e")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Latency:
    kind: str
    samples_ms: tuple[float, ...]
    first_call_ms: float | None
    items_per_call: int
    p10_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float

    @classmethod
    def from_values(cls, samples_ms: Sequence[float], *, kind: str, items_per_call: int,
                    first_call_ms: float | None = None) -> "Latency":
        if kind not in LATENCY_KINDS:
            raise ValueError(f"latency kind must be one of {LATENCY_KINDS}")
        s = tuple(float(x) for x in samples_ms)
        return cls(
            kind=kind, samples_ms=s, first_call_ms=first_call_ms, items_per_call=int(items_per_call),
            p10_ms=percentile(s, 10), p50_ms=percentile(s, 50), p90_ms=percentile(s, 90),
            p95_ms=percentile(s, 95), p99_ms=percentile(s, 99), mean_ms=statistics.fmean(s),
            stdev_ms=statistics.stdev(s) if len(s) > 1 else 0.0,
        )

    @property
    def throughput(self) -> float:
        """Items per second at the median latency."""
        return self.items_per_call / (self.p50_ms / 1000.0)

    def row_fields(self) -> dict:
        """The ResultRow fields this measurement fills."""
        return dict(
            latency_kind=self.kind, latency_p10_ms=self.p10_ms, latency_p50_ms=self.p50_ms,
            latency_p90_ms=self.p90_ms, latency_p99_ms=self.p99_ms, first_call_ms=self.first_call_ms,
            throughput=self.throughput,
        )

    def summary(self) -> dict:
        return dict(n=len(self.samples_ms), mean_ms=self.mean_ms, stdev_ms=self.stdev_ms, p95_ms=self.p95_ms,
                    samples_ms=[round(x, 4) for x in self.samples_ms])


def measure(fn: Callable[[], object], *, items_per_call: int, kind: str = "host-wall", warmup: int = 3,
            min_time_s: float = 1.0, min_iters: int = 10, max_iters: int = 10_000,
            sync: Callable[[], object] | None = None, clock: Callable[[], float] = time.perf_counter,
            timer: Callable[[Callable[[], object]], float] | None = None) -> Latency:
    """Time `fn()`; returns a Latency with every sample kept.

    `timer(fn) -> ms` replaces the host clock for one sample (a device clock such as CUDA events that
    brackets the call itself); the loop, warm-up and stopping rule stay this one.
    """
    if min_iters < 1 or max_iters < min_iters:
        raise ValueError("need 1 <= min_iters <= max_iters")

    def once() -> float:
        if timer is not None:
            return float(timer(fn))
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        return (clock() - t0) * 1000.0

    first = once()
    for _ in range(max(0, warmup)):
        once()
    samples: list[float] = []
    start = clock()
    while len(samples) < max_iters and (len(samples) < min_iters or clock() - start < min_time_s):
        samples.append(once())
    return Latency.from_values(samples, kind=kind, items_per_call=items_per_call, first_call_ms=first)
