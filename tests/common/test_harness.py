import time

import numpy as np
import pytest

from utils.harness import Latency, measure, percentile


def test_timer_on_known_sleep():
    lat = measure(lambda: time.sleep(0.02), items_per_call=4, warmup=1, min_time_s=0.2, min_iters=5)
    assert len(lat.samples_ms) >= 5
    # sleep(20 ms) never returns early; scheduler overshoot on a loaded 2-core box stays well under 15 ms
    assert 20.0 <= lat.p50_ms < 35.0
    assert lat.p10_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms
    assert lat.throughput == pytest.approx(4 / (lat.p50_ms / 1000))
    assert lat.kind == "host-wall"


def test_first_call_timed_separately_and_loop_bounds():
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.05)

    lat = measure(fn, items_per_call=1, warmup=2, min_time_s=0.0, min_iters=7)
    assert lat.first_call_ms >= 50.0
    assert len(lat.samples_ms) == 7
    assert calls["n"] == 1 + 2 + 7
    assert max(lat.samples_ms) < 50.0


def test_min_time_is_honoured_with_a_fake_clock():
    t = {"now": 0.0}

    def clock():
        return t["now"]

    def fn():
        t["now"] += 0.125  # each call "takes" 125 ms (exact in binary)

    lat = measure(fn, items_per_call=1, warmup=0, min_time_s=1.0, min_iters=3, clock=clock)
    assert len(lat.samples_ms) == 8  # 8 x 125 ms reaches the 1 s minimum
    assert lat.p50_ms == pytest.approx(125.0)


def test_percentiles_match_numpy():
    xs = list(np.random.default_rng(0).exponential(size=101))
    lat = Latency.from_values(xs, kind="cuda-events", items_per_call=1)
    for q, v in ((10, lat.p10_ms), (50, lat.p50_ms), (90, lat.p90_ms), (99, lat.p99_ms)):
        assert v == pytest.approx(np.percentile(xs, q))
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))


def test_unknown_latency_kind_rejected():
    with pytest.raises(ValueError):
        Latency.from_values([1.0], kind="wall-ish", items_per_call=1)


def test_slow_units_get_one_warm_up_call_and_still_min_trials():
    """A unit whose warm-up call takes over 1 s gets 1 warm-up call instead of `warmup`; a fast unit beside it (and
    one whose slow first call was only compilation) keeps all of them; every unit still gets min_trials samples."""
    from utils.harness import Timed, interleaved

    t = {"now": 0.0}
    calls = {"slow": 0, "fast": 0, "compiled": 0}

    def unit(name, first_s, then_s):
        def fn():
            calls[name] += 1
            t["now"] += first_s if calls[name] == 1 else then_s
        return Timed(fn, 1)

    units = {"slow": unit("slow", 2.0, 1.5), "fast": unit("fast", 0.01, 0.01),
             "compiled": unit("compiled", 30.0, 0.01)}
    trials = interleaved(units, min_trials=20, budget_s=0.0, warmup=3, clock=lambda: t["now"])
    assert calls == {"slow": 1 + 1 + 20, "fast": 1 + 3 + 20, "compiled": 1 + 3 + 20}
    assert all(len(trials.latency[n].samples_ms) == 20 for n in units)
    assert trials.latency["slow"].first_call_ms == 2000.0
