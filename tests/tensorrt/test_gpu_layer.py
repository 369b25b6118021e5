"""cuda-python wrappers and the CUDA-event timing loop, without a GPU."""
import pytest

from quantization.tensorrt_route import gpu


def test_check_unwraps_tuples():
    rt = pytest.importorskip("cuda.bindings.runtime")
    ok = rt.cudaError_t.cudaSuccess
    assert gpu.check((ok, 42)) == 42
    assert gpu.check((ok,)) is None
    assert gpu.check((ok, 1, 2)) == (1, 2)
    with pytest.raises(gpu.CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        gpu.check((rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")


def test_cuda_problem_names_the_error_here():
    pytest.importorskip("cuda.bindings.runtime")
    problem = gpu.cuda_problem()
    if problem is None:
        pytest.skip("a CUDA device is present")
    assert problem.startswith("cuda") and "\n" not in problem  # e.g. cudaErrorInsufficientDriver


def test_handle_accepts_ints_and_cuda_handles():
    assert gpu.handle(7) == 7
    rt = pytest.importorskip("cuda.bindings.runtime")
    assert gpu.handle(rt.cudaStream_t()) == 0  # the default stream


def test_timed_loop_meets_min_iters_and_min_time():
    calls = []

    def run():
        calls.append(1)
        return 2.0 + len(calls) * 0.001

    t = iter(range(0, 10_000))
    lat = gpu.timed_loop(run, items_per_call=32, min_time_s=5.0, min_iters=3, warmup=2, clock=lambda: float(next(t)))
    # clock ticks 1 s per read: start read + one read per loop test -> stops once 5 s have passed
    assert lat.kind == "cuda-events" and lat.items_per_call == 32
    assert len(lat.samples_ms) >= 3 and lat.first_call_ms == pytest.approx(2.001)
    assert len(calls) == 1 + 2 + len(lat.samples_ms)
    assert lat.p50_ms > 2.0 and lat.throughput == pytest.approx(32 / (lat.p50_ms / 1000))


def test_timed_loop_min_iters_bound():
    lat = gpu.timed_loop(lambda: 1.0, items_per_call=1, min_time_s=0.0, min_iters=4, warmup=0)
    assert len(lat.samples_ms) == 4 and lat.p50_ms == 1.0
    with pytest.raises(ValueError):
        gpu.timed_loop(lambda: 1.0, items_per_call=1, min_iters=0)
