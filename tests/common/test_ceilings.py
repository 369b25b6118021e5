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


# ------------------------------------------------------------------------------ memory bandwidth

def _fake_stream(seconds_per_pass):
    """A 'kernel' whose pass takes a known time (sleep): its rate must be arrays x n x 4 bytes / that time."""
    def factory(n, threads):
        CALLS.append(("mem", n, threads))
        return lambda: time.sleep(seconds_per_pass)
    return factory


def test_memory_bandwidth_counts_bytes_per_kernel_and_takes_the_best():
    from utils.ceilings import MEM_ARRAYS, measure_memory, merge_memory

    CALLS.clear()
    fac = {"numpy.copy": _fake_stream(0.010), "numpy.triad": _fake_stream(0.010), "gone": lambda n, t: _missing(n, t)}
    r = measure_memory(2, 0.0, array_mb=4.0, passes=5, kernels=("numpy.copy", "numpy.triad", "gone"), factories=fac)
    json.dumps(r)
    n = int(4.0 * 1e6 / 4)
    assert CALLS == [("mem", n, 2), ("mem", n, 2)]  # one build per available kernel, n float32 elements, 2 threads
    k = r["memory"]["kernels"]
    assert k["gone"]["available"] is False and k["gone"]["reason"] == "not here" and k["gone"]["rates"] == []
    for name in ("numpy.copy", "numpy.triad"):
        assert len(k[name]["rates"]) == 5 and k[name]["bytes_per_s"] == max(k[name]["rates"])
        nominal = MEM_ARRAYS[name] * n * 4 / 0.010
        assert 0.5 * nominal < k[name]["bytes_per_s"] <= nominal * 1.01  # a sleep is never shorter than asked
    # triad counts 3 arrays per pass, copy 2: at the same pass time triad is the faster, and the ceiling
    assert k["numpy.triad"]["bytes_per_s"] / k["numpy.copy"]["bytes_per_s"] == pytest.approx(1.5, rel=0.2)
    assert r["mem_library"] == "numpy.triad" and r["mem_bytes_per_s"] == k["numpy.triad"]["bytes_per_s"]
    assert r["memory"]["array_mb"] == 4.0 and r["memory"]["threads"] == 2
    # the device record of another environment: the best bandwidth is kept, with its details
    slower = dict(r, mem_bytes_per_s=r["mem_bytes_per_s"] / 2, mem_library="numpy.copy")
    assert merge_memory({"fp32_ops_per_s": 1.0}, slower, r) == {k2: r[k2] for k2 in
                                                                 ("mem_bytes_per_s", "mem_library", "mem_method",
                                                                  "memory")}
    assert merge_memory({"fp32_ops_per_s": 1.0}) == {}


def test_memory_budget_adds_passes_and_arrays_exceed_the_cache():
    from utils.ceilings import measure_memory, memory_array_mb

    r = measure_memory(1, 0.2, array_mb=1.0, passes=3, kernels=("numpy.copy",),
                       factories={"numpy.copy": _fake_stream(0.005)})
    assert len(r["memory"]["kernels"]["numpy.copy"]["rates"]) > 3 * 2  # 0.2 s of 5 ms passes, not just 3
    assert memory_array_mb(llc=100e6, available=64e9) == 200.0  # twice the last-level cache
    assert memory_array_mb(llc=None, available=64e9) == 64.0  # at least 64 MB
    assert memory_array_mb(llc=2e9, available=64e9) == 512.0  # at most 512 MB
    assert memory_array_mb(llc=100e6, available=800e6) == 100.0  # an eighth of the free memory


def test_memory_bandwidth_real_numpy_kernels():
    """The numpy kernels stream real arrays in two threads and read a plausible rate (1 GB/s .. 2 TB/s)."""
    from utils.ceilings import measure_memory

    r = measure_memory(2, 0.3, array_mb=16.0, passes=3, kernels=("numpy.read", "numpy.copy", "numpy.triad"))
    k = r["memory"]["kernels"]
    assert all(k[name]["available"] and len(k[name]["rates"]) >= 3 for name in k)
    assert 1e9 < r["mem_bytes_per_s"] < 2e12 and r["mem_bytes_per_s"] == max(x["bytes_per_s"] for x in k.values())
