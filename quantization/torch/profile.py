"""The torch toolchain's profiler (Toolchain.tools["profile"]; evaluation/analysis/profile.py runs it): torch.profiler
(CPU activities) over a built variant's timed call."""
from __future__ import annotations

DEFAULT_METHOD = "fx"


def profile_ops(fn, calls: int, top: int) -> list[dict]:
    """torch.profiler over `calls` calls of `fn`: the `top` operators by self CPU time, per call (op,
    calls_per_forward, self_cpu_ms_per_forward, share_pct)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls_per_forward": round(e.count / calls, 2),
             "self_cpu_ms_per_forward": round(e.self_cpu_time_total / 1000.0 / calls, 3),
             "share_pct": round(100.0 * e.self_cpu_time_total / total, 1)} for e in events[:top]]
