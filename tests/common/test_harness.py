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
