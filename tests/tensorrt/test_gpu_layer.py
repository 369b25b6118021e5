"""cuda-python wrappers without a GPU (the CUDA-event timer: test_gpu_timing.py)."""
import pytest

from quantization.tensorrt import gpu


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


def test_no_second_timing_loop():
    """The suite's harness owns the loop; gpu.py only provides timers (EventTimer.timer, e2e_timer)."""
    assert not hasattr(gpu, "timed_loop")
