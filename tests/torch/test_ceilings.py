"""utils.ceilings with the real torch (and numpy) kernels at tiny sizes: shape, libraries, plausibility."""
import json

import pytest

torch = pytest.importorskip("torch")

from utils.ceilings import measure  # noqa: E402


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_measure_small_sizes_real_kernels(restore_threads):
    r = measure(1, 3.0, sizes=(64, 128), bursts=5, min_burst_s=0.005,
                libraries=("torch.mm", "numpy.matmul", "torch._int_mm", "onnxruntime.MatMulInteger"))
    json.dumps(r)
    assert r["threads"] == 1 and r["sizes"] == [64, 128] and r["bursts"] == 5
    assert r["elapsed_s"] < 3.0 + 1.0
    libs = r["libraries"]
    for name in ("torch.mm", "numpy.matmul"):
        assert libs[name]["available"] and libs[name]["precision"] == "fp32"
        for d in libs[name]["sizes"].values():
            assert len(d["rates"]) >= 5 and d["ops_per_s"] == max(d["rates"]) and d["calls_per_burst"] >= 1
    fp32 = [libs[n]["ops_per_s"] for n in ("torch.mm", "numpy.matmul")]
    assert r["fp32_ops_per_s"] == max(fp32) and 1e8 < r["fp32_ops_per_s"] < 1e13
    if libs["torch._int_mm"]["available"]:
        assert r["int8_ops_per_s"] >= libs["torch._int_mm"]["ops_per_s"] > 1e8
    else:
        assert libs["torch._int_mm"]["reason"]
    if libs["onnxruntime.MatMulInteger"]["available"] is False:
        assert "onnxruntime" in libs["onnxruntime.MatMulInteger"]["reason"]
    assert torch.get_num_threads() == 1


def test_memory_bandwidth_torch_triad_writes_the_triad(restore_threads):
    """torch.triad really computes a = b + 3c over the shared arrays (it streams what it claims) at a plausible rate."""
    from utils import ceilings

    fn = ceilings._mem_torch_triad(1000, 1)
    fn()
    a, b, c = ceilings._MEM_ARRAYS[1000]
    assert (a == b + 3.0 * c).all() and float(a[0]) == 7.0
    ceilings._MEM_ARRAYS.clear()
    r = ceilings.measure_memory(1, 0.2, array_mb=16.0, passes=3, kernels=("torch.triad",))
    assert r["mem_library"] == "torch.triad" and 1e9 < r["mem_bytes_per_s"] < 2e12
