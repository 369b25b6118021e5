"""utils.ceilings logic with fake libraries (no torch needed): budget planning, interleaving, max over libraries."""
import json
import time

import pytest

from utils.ceilings import Unavailable, merge, measure, summary

CALLS: list = []


def _fake(rate):
    """A 'library' computing 2 n^3 ops at `rate` ops/s (by sleeping)."""
    def factory(n, threads):
        def fn():
            CALLS.append((rate, n))
            time.sleep(2.0 * n ** 3 / rate)
        return fn
    return factory


def _missing(n, threads):
    raise Unavailable("not here")


def test_measure_shape_max_over_libraries_and_budget():
    CALLS.clear()
    fac = {"slow32": _fake(1e9), "fast32": _fake(4e9), "int8a": _fake(8e9), "gone": _missing}
    t0 = time.perf_counter()
    r = measure(2, 0.6, sizes=(100, 200, 500), bursts=5, min_burst_s=0.0, factories=fac,
                libraries=("slow32", "fast32", "int8a", "gone"), extra_bursts=False)
    took = time.perf_counter() - t0
    json.dumps(r)  # JSON-able
    for k in ("fp32_ops_per_s", "int8_ops_per_s", "libraries", "sizes", "bursts", "threads", "cpu", "measured_at",
              "fp32_method", "int8_method", "elapsed_s", "budget_s"):
        assert k in r
    assert r["sizes"] == [100, 200, 500] and r["bursts"] == 5 and r["threads"] == 2
    libs = r["libraries"]
    assert libs["gone"]["available"] is False and libs["gone"]["reason"] == "not here"
    assert r["fp32_library"] == "fast32" and r["int8_library"] == "int8a"
    # sleep-based rates: measured rate <= the nominal one, and within reach of it
    assert 0.5 * 4e9 < r["fp32_ops_per_s"] <= 4e9 * 1.01
    assert r["fp32_ops_per_s"] == max(d["ops_per_s"] for d in libs["fast32"]["sizes"].values())
    assert libs["slow32"]["ops_per_s"] < r["fp32_ops_per_s"]
    # n=500 at 1e9 ops/s needs ~1.8 s (warm-up + 5 bursts): never fits a 0.6 s budget -> skipped with a reason
    assert libs["slow32"]["skipped"]["500"].startswith("budget")
    assert "200" in libs["slow32"]["sizes"] and all(len(d["rates"]) == 5 for d in libs["slow32"]["sizes"].values())
    assert took < 0.6 + 0.2
    assert "unavailable: not here" in summary(r)


def test_bursts_are_interleaved_and_extra_bursts_fill_the_budget():
    CALLS.clear()
    fac = {"a32": _fake(1.0e10), "b32": _fake(1.1e10)}
    r = measure(1, 0.3, sizes=(100,), bursts=5, min_burst_s=0.0, factories=fac, libraries=("a32", "b32"))
    seq = [rate for rate, _ in CALLS]
    assert seq[:4] == [1.0e10, 1.0e10, 1.1e10, 1.1e10]  # probes: warm-up + timed call each
    bursts = seq[4:]
    assert bursts[:10] == [1.0e10, 1.1e10] * 5  # burst r of every configuration in turn, not 5 of one then 5 of the other
    rates = r["libraries"]["a32"]["sizes"]["100"]["rates"]
    assert len(rates) > 5  # extra rounds ran while the budget lasted
    assert r["elapsed_s"] < 0.3 + 0.05


def test_merge_takes_the_best_of_each_env():
    fac = {"fp32_t": _fake(2e9), "int8_t": _fake(4e9), "int8_o": _missing}
    torch_env = measure(2, 0.3, sizes=(100,), bursts=5, min_burst_s=0.0, factories=fac,
                        libraries=("fp32_t", "int8_t", "int8_o"), extra_bursts=False)
    ort_env = measure(2, 0.3, sizes=(100,), bursts=5, min_burst_s=0.0, factories={**fac, "int8_o": _fake(8e9)},
                      libraries=("int8_o",), extra_bursts=False)
    m = merge(torch_env, ort_env)
    assert m["int8_library"] == "int8_o" and m["fp32_library"] == "fp32_t"
    assert m["int8_ops_per_s"] == ort_env["int8_ops_per_s"] and m["fp32_ops_per_s"] == torch_env["fp32_ops_per_s"]
    assert m["libraries"]["int8_o"]["available"] is True
    other = dict(ort_env, threads=4)
    with pytest.raises(ValueError):
        merge(torch_env, other)
