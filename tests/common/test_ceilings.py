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


# ------------------------------------------------------------------------------ the GPU's ceilings (fake GPU)

from utils.ceilings import CUDA_PRECISIONS, measure_cuda, merge_cuda  # noqa: E402

H200 = {"gpu": "Fake H200", "capability": "9.0", "cc": (9, 0), "torch": "2.11.0+cu130", "cuda_runtime": "13.0",
        "matmul_tf32": False}
PEAK = {"bf16": 800e12, "fp16": 790e12, "fp8": 1500e12, "int8": 1400e12, "fp32": 55e12}


class FakeGPU:
    """Matmuls at PEAK[prec] x an efficiency that grows with n; bursts disturbed by a repeating slow-down pattern.
    The clock advances by the seconds the fake timer reports (a simulated device: nothing sleeps)."""

    SLOW = (1.3, 1.0, 1.1, 1.25, 1.05)

    def __init__(self, missing=(), fail_at=None):
        self.now, self.timed, self.missing, self.fail_at = 0.0, [], set(missing), fail_at

    def eff(self, n):
        return {256: 0.5, 512: 0.8, 1024: 0.95}[n]

    def factory(self, prec, n):
        if prec in self.missing:
            raise Unavailable(f"{prec}: not on this GPU")
        if self.fail_at == (prec, n):
            raise RuntimeError("CUDA out of memory")
        return (prec, n)

    def timer(self, fn, calls):
        prec, n = fn
        slow = self.SLOW[len(self.timed) % len(self.SLOW)]
        s = calls * 2.0 * n ** 3 / (PEAK[prec] * self.eff(n)) * slow
        self.timed.append((prec, n, calls))
        self.now += s
        return s

    def clock(self):
        return self.now


def test_cuda_ceilings_best_burst_best_size_and_every_precision():
    gpu = FakeGPU()
    r = measure_cuda(10.0, sizes=(256, 512, 1024), bursts=5, min_burst_s=1e-4, info=H200, factory=gpu.factory,
                     timer=gpu.timer, clock=gpu.clock)
    json.dumps(r)
    assert r["available"] and r["gpu"] == "Fake H200" and r["capability"] == "9.0" and "cc" not in r
    for prec in CUDA_PRECISIONS:
        rec = r["precisions"][prec]
        assert rec["available"] and rec["best_n"] == 1024 and set(rec["sizes"]) == {"256", "512", "1024"}
        # the best burst is the undisturbed one: the true rate at that size; the ceiling is the best size's
        assert r[f"{prec}_ops_per_s"] == pytest.approx(PEAK[prec] * 0.95)
        for n, d in rec["sizes"].items():
            assert len(d["rates"]) == 5 and d["ops_per_s"] == max(d["rates"])
            assert d["ops_per_s"] == pytest.approx(PEAK[prec] * gpu.eff(int(n)))
            one_call = 2.0 * int(n) ** 3 / (PEAK[prec] * gpu.eff(int(n)))
            # enough calls per burst for min_burst_s, by the (possibly slowed) timed call
            assert d["calls_per_burst"] * one_call * max(FakeGPU.SLOW) >= 1e-4 * 0.999
    assert r["bf16_method"] == "torch.mm bfloat16" and "_scaled_mm" in r["fp8_method"] and "_int_mm" in r["int8_method"]
    # each (precision, size): a warm-up call, a timed call, then the bursts
    first = [t for t in gpu.timed if t[:2] == ("bf16", 256)]
    assert [c for _, _, c in first[:2]] == [1, 1] and len(first) == 7


def test_cuda_ceilings_say_what_is_missing_and_what_failed():
    gpu = FakeGPU(missing=("fp8",), fail_at=("int8", 1024))
    r = measure_cuda(10.0, sizes=(256, 512, 1024), info=H200, factory=gpu.factory, timer=gpu.timer, clock=gpu.clock)
    fp8 = r["precisions"]["fp8"]
    assert fp8["available"] is False and fp8["reason"] == "fp8: not on this GPU" and not fp8["sizes"]
    assert r["fp8_ops_per_s"] is None and r["fp8_method"] == "unavailable"
    int8 = r["precisions"]["int8"]  # smaller sizes measured, the largest failed: said, the best of the rest kept
    assert int8["available"] and int8["best_n"] == 512 and "out of memory" in int8["skipped"]["1024"]
    assert r["int8_ops_per_s"] == pytest.approx(PEAK["int8"] * 0.8)


def test_cuda_ceilings_keep_to_the_budget():
    gpu = FakeGPU()
    # bf16 at n=256 takes ~0.15 ms of simulated time for all its calls; a budget of 5 ms cannot take every size of
    # every precision: the ones predicted not to fit are skipped with the reason, nothing runs past the budget much
    r = measure_cuda(0.005, sizes=(256, 512, 1024), bursts=5, min_burst_s=1e-4, info=H200, factory=gpu.factory,
                     timer=gpu.timer, clock=gpu.clock)
    skipped = {(p, n): why for p, rec in r["precisions"].items() for n, why in rec["skipped"].items()}
    assert skipped and all(why.startswith("budget:") for why in skipped.values())
    assert r["elapsed_s"] <= 0.005 * 1.5
    assert r["bf16_ops_per_s"] is not None  # the first precision got its small sizes


def test_cuda_ceilings_without_a_gpu_say_why():
    r = measure_cuda(1.0)  # this machine: no torch in this env, or torch without a GPU
    assert r["available"] is False and ("torch not importable" in r["reason"] or "CUDA is not available" in r["reason"])
    assert "precisions" not in r


def test_merge_keeps_the_gpu_entry():
    cpu = {"cpu": "x", "threads": 2, "sizes": [64], "elapsed_s": 1.0, "measured_at": "a",
           "libraries": {"torch.mm": {"precision": "fp32", "ops_per_s": 1e9, "best_n": 64}}}
    gpu = {"available": True, "gpu": "Fake H200", "bf16_ops_per_s": 7e14}
    ort = {**cpu, "measured_at": "b", "libraries": {"onnxruntime.MatMul": {"precision": "fp32", "ops_per_s": 2e9,
                                                                             "best_n": 64}}}
    m = merge({**cpu, "cuda": gpu}, ort)  # the ORT env measures no GPU: the torch env's entry stays
    assert m["cuda"] == gpu and m["fp32_library"] == "onnxruntime.MatMul"
    assert merge({"cuda": gpu}) == {"cuda": gpu}  # a cuda-only record (bench --devices cuda)
    none = {"available": False, "reason": "CUDA is not available"}
    assert merge_cuda(gpu, none) == gpu and merge_cuda(none) == none and merge_cuda(None) is None


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


# ------------------------------------------------------------------------------ declared per toolchain

def test_a_toolchains_declared_ceilings_are_measured_and_merged(monkeypatch):
    """Toolchain.ceilings names a Provider in the route folder: its libraries and memory kernels join NumPy's, in its
    environment only when named, and the GPU entry comes from the first declared Gpu."""
    import dataclasses

    from utils import registry
    from utils.ceilings import (Library, MemoryKernel, Provider, declared, declared_gpu, known_kernels,
                                known_libraries)

    assert set(known_libraries([])) == {"numpy.matmul"} and set(known_kernels([])) == {"numpy.read", "numpy.copy",
                                                                                         "numpy.triad"}
    for name, provider in declared().items():  # every declared one resolves here, without its library imported
        assert registry.TOOLCHAINS[name].ceilings and isinstance(provider, Provider)
        assert set(provider.libraries) <= set(known_libraries())
    fake = Provider(libraries={"fake.int8": Library(_fake(6e9), "int8", "the fake's int8 GEMM")},
                    memory={"fake.copy": MemoryKernel(_fake_stream(0.005), 2, "the fake's copy")})
    globals()["FAKE_PROVIDER"] = fake
    tc = dataclasses.replace(registry.TOOLCHAINS["openvino"], name="faketc",
                             ceilings="tests.common.test_ceilings:FAKE_PROVIDER")
    monkeypatch.setattr(registry, "TOOLCHAINS", {**registry.TOOLCHAINS, "faketc": tc})
    monkeypatch.setattr(registry, "ORDER", registry.ORDER + ("faketc",))
    assert declared(["faketc"]) == {"faketc": fake} and "fake.int8" in known_libraries()
    r = measure(1, 0.3, sizes=(100,), bursts=3, min_burst_s=0.0, toolchains=["faketc"], extra_bursts=False)
    assert set(r["libraries"]) == {"numpy.matmul", "fake.int8"}
    assert r["int8_library"] == "fake.int8" and r["int8_method"] == "the fake's int8 GEMM"
    mem = measure_memory_of(["faketc"])
    assert mem["memory"]["kernels"]["fake.copy"]["method"] == "the fake's copy"
    assert declared_gpu(["faketc"]) is None
    none = measure_cuda(1.0, toolchains=["faketc"])
    assert none["available"] is False and "declares GPU ceilings" in none["reason"]


def measure_memory_of(toolchains):
    from utils.ceilings import measure_memory

    return measure_memory(1, 0.0, array_mb=1.0, passes=2, kernels=("fake.copy",), toolchains=toolchains)


def test_the_command_names_one_toolchain_and_refuses_others(tmp_path):
    import subprocess
    import sys

    from utils.paths import REPO_ROOT

    out = tmp_path / "device.json"
    p = subprocess.run([sys.executable, "-m", "utils.ceilings", "--threads", "1", "--budget", "0.3", "--memory-budget",
                        "0.2", "--devices", "cpu", "--toolchains", "onnxruntime", "--out", str(out)], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rec = json.loads(out.read_text())
    assert set(rec["libraries"]) == {"numpy.matmul", "onnxruntime.MatMul", "onnxruntime.MatMulInteger"}
    assert rec["fp32_library"] == "numpy.matmul" or rec["libraries"]["onnxruntime.MatMul"]["available"]
    bad = subprocess.run([sys.executable, "-m", "utils.ceilings", "--toolchains", "openvino"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "declares no ceilings" in bad.stderr
