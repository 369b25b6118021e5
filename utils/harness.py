"""Model-agnostic timing harness: takes a callable, knows nothing about models or runtimes.

First call timed on its own (it includes lazy initialisation / compilation), then warm-up
(one call only for a unit whose calls take over `slow_warmup_s`, 1 s), then a loop until BOTH a minimum wall time and a minimum iteration count are reached.
GPU runtimes pass `sync` (e.g. a stream synchronize) so queued work is inside the timer,
or time with device events and hand the samples to `Latency.from_values`.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

# decode: host wall time per generated token after the first, in greedy generation with a KV cache (the prompt's
# prefill and first token are the row's ttft_ms); see quantization.kit.greedy
LATENCY_KINDS = ("host-wall", "cuda-events", "tensorrt-gpu-compute", "cuda-e2e", "decode")
SAMPLE_DECIMALS = 6  # ms: samples are kept at 1 ns resolution, as stored in the rows


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
        # stored as they are written into the rows (1 ns resolution), so a row's statistics can be recomputed from it
        s = tuple(round(float(x), SAMPLE_DECIMALS) for x in samples_ms)
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

    def summary(self, trials: Sequence[int] | None = None) -> dict:
        """What a row keeps: every sample (and, from interleaved trials, the trial each one was taken in)."""
        out = dict(n=len(self.samples_ms), mean_ms=self.mean_ms, stdev_ms=self.stdev_ms, p95_ms=self.p95_ms,
                   samples_ms=list(self.samples_ms))
        if trials is not None:
            out["trials"] = [int(t) for t in trials]
        return out


@dataclass
class Timed:
    """One thing to time: `fn` (zero arguments), how many items a call processes, how its samples are taken."""

    fn: Callable[[], object]
    items_per_call: int
    kind: str = "host-wall"
    sync: Callable[[], object] | None = None  # host-wall: called inside the timed region (queued device work)
    timer: Callable[[Callable[[], object]], float] | None = None  # a device clock: timer(fn) -> ms of one call


@dataclass
class Trials:
    """What `interleaved` measured: per name its Latency and the trial index of each sample."""

    latency: dict[str, Latency]
    trial_of: dict[str, list[int]]
    overhead_ms: float  # the harness's own cost: an empty call timed the same way

    def paired(self, base: str, other: str) -> tuple[list[float], list[float]]:
        """Samples of `base` and `other` from the trials that timed both (in trial order)."""
        b = dict(zip(self.trial_of[base], self.latency[base].samples_ms))
        o = dict(zip(self.trial_of[other], self.latency[other].samples_ms))
        common = sorted(set(b) & set(o))
        return [b[t] for t in common], [o[t] for t in common]


def _once(t: Timed, clock: Callable[[], float]) -> float:
    if t.timer is not None:
        return float(t.timer(t.fn))
    t0 = clock()
    t.fn()
    if t.sync is not None:
        t.sync()
    return (clock() - t0) * 1000.0


def interleaved(units: dict[str, Timed], *, baseline: str | None = None, min_trials: int = 20,
                budget_s: float = 0.0, warmup: int = 3, max_trials: int = 10_000,
                clock: Callable[[], float] = time.perf_counter,
                widest: Callable[["Trials"], list[str] | None] | None = None,
                slow_warmup_s: float = 1.0) -> Trials:
    """The one timing loop. Every unit's first call is timed on its own, then `warmup` calls each, except that a
    unit whose first warm-up call took longer than `slow_warmup_s` (1 s) gets no more warm-up calls (1 in all): a
    call that slow is already warm (lazy initialisation and compilation are in the first call, timed apart), and
    further warm-up calls would cost seconds each while the trials still number at least `min_trials`. Then trials:
    in each trial every unit is called once, in a rotating order, so slow drift of the machine hits all of
    them alike and a variant can be paired with its baseline trial by trial. Trials go on until `min_trials`
    are done and, after that, while the total time is under `budget_s`; then each extra trial times only the
    units `widest(trials)` names (a variant whose speedup interval is widest, and its baseline), when given.
    """
    if min_trials < 1 or max_trials < min_trials:
        raise ValueError("need 1 <= min_trials <= max_trials")
    names = list(units)
    first = {n: _once(units[n], clock) for n in names}
    calls = {n: max(0, warmup) for n in names}  # warm-up calls per unit
    for i in range(max(0, warmup)):
        for n in names:
            if i < calls[n] and _once(units[n], clock) > slow_warmup_s * 1000.0 and i == 0:
                calls[n] = 1  # a slow call: one warm-up call is enough
    samples: dict[str, list[float]] = {n: [] for n in names}
    trial_of: dict[str, list[int]] = {n: [] for n in names}

    def snapshot() -> Trials:
        lat = {n: Latency.from_values(samples[n], kind=units[n].kind, items_per_call=units[n].items_per_call,
                                      first_call_ms=first[n]) for n in names if samples[n]}
        return Trials(lat, {n: list(v) for n, v in trial_of.items()}, overhead_ms=0.0)

    start, trial = clock(), 0
    while trial < max_trials:
        done_min = trial >= min_trials
        if done_min and clock() - start >= budget_s:
            break
        order = names[trial % len(names):] + names[:trial % len(names)]
        if done_min and widest is not None and len(names) > 2:
            pick = widest(snapshot())
            if pick:
                order = list(pick) if trial % 2 == 0 else list(reversed(pick))
        for n in order:
            samples[n].append(_once(units[n], clock))
            trial_of[n].append(trial)
        trial += 1
    out = snapshot()
    out.overhead_ms = harness_overhead_ms(clock)
    return out


def harness_overhead_ms(clock: Callable[[], float] = time.perf_counter, n: int = 2000) -> float:
    """Median cost of timing an empty call the way `_once` does (host clock)."""
    empty = Timed(lambda: None, 1)
    xs = sorted(_once(empty, clock) for _ in range(n))
    return xs[len(xs) // 2]


def measure(fn: Callable[[], object], *, items_per_call: int, kind: str = "host-wall", warmup: int = 3,
            min_time_s: float = 1.0, min_iters: int = 10, max_iters: int = 10_000,
            sync: Callable[[], object] | None = None, clock: Callable[[], float] = time.perf_counter,
            timer: Callable[[Callable[[], object]], float] | None = None) -> Latency:
    """Time one `fn()` through `interleaved`: first call apart, warm-up, then until both `min_iters` samples and
    `min_time_s` seconds are reached. `timer(fn) -> ms` replaces the host clock for one sample (a device clock
    such as CUDA events that brackets the call itself); the loop stays the one in `interleaved`."""
    if min_iters < 1 or max_iters < min_iters:
        raise ValueError("need 1 <= min_iters <= max_iters")
    unit = Timed(fn, items_per_call, kind, sync, timer)
    return interleaved({"x": unit}, min_trials=min_iters, budget_s=min_time_s, warmup=warmup, max_trials=max_iters,
                       clock=clock).latency["x"]
