"""utils.ceilings with the real torch (and numpy) kernels at tiny sizes: shape, libraries, plausibility. The torch
kernels are the torch toolchain's declared ceilings (quantization/torch/ceilings.py)."""
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


# ------------------------------------------------------------------------------ the GPU's ceilings: real torch kernels

from quantization.torch import ceilings as tce  # noqa: E402
from utils import ceilings as ce  # noqa: E402
from utils.registry import TOOLCHAINS, resolve  # noqa: E402


def test_the_torch_toolchain_declares_these_ceilings():
    provider = resolve(TOOLCHAINS["torch"].ceilings)
    assert provider is tce.CEILINGS and provider.gpu.matmul is tce.cuda_matmul
    assert {"torch.mm", "torch._int_mm"} <= set(ce.known_libraries(["torch"]))
    assert "torch.triad" in ce.known_kernels(["torch"]) and ce.declared_gpu(["torch"]) is provider.gpu


def _wall_seconds(fn, calls):
    import time

    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t


def test_cuda_ceiling_kernels_run_for_real_on_the_cpu(restore_threads):
    """measure_cuda's own loop and cuda_matmul's operands and ops with the real torch, on the CPU device (no GPU
    here): every precision is measured or says why (FP8 where this torch's CPU build has no _scaled_mm kernel)."""
    torch.set_num_threads(1)
    info = {"gpu": "cpu stand-in", "capability": "9.0", "cc": (9, 0), "torch": torch.__version__}
    r = ce.measure_cuda(5.0, sizes=(64, 128), bursts=3, min_burst_s=0.002, info=info,
                        factory=lambda p, n: tce.cuda_matmul(p, n, "cpu", (9, 0)), timer=_wall_seconds)
    json.dumps(r)
    for prec in ("bf16", "fp16", "fp32", "int8"):
        rec = r["precisions"][prec]
        assert rec["available"], (prec, rec)
        assert 1e6 < r[f"{prec}_ops_per_s"] < 1e14 and rec["best_n"] in (64, 128)
    fp8 = r["precisions"]["fp8"]
    assert fp8["available"] or "_scaled_mm" in fp8["reason"], fp8


def test_cuda_matmul_computes_the_product():
    """The operands are what the rate is counted for: an n x n x n product in that dtype."""
    fn = tce.cuda_matmul("bf16", 32, "cpu")
    out = fn()
    assert out.shape == (32, 32) and out.dtype == torch.bfloat16
    i8 = tce.cuda_matmul("int8", 32, "cpu")()
    assert i8.shape == (32, 32) and i8.dtype == torch.int32


def test_fp8_ceiling_needs_compute_capability_8_9():
    with pytest.raises(ce.Unavailable, match=r"compute capability 8\.0 < 8\.9"):
        tce.cuda_matmul("fp8", 64, "cpu", (8, 0))


class FakeEvent:
    log: list = []

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.name = f"ev{sum(1 for x in self.log if x[0] == 'new')}"
        self.log.append(("new", self.name))

    def record(self):
        self.log.append(("record", self.name))

    def synchronize(self):
        self.log.append(("sync", self.name))

    def elapsed_time(self, other):
        return 12.5  # ms


def test_cuda_event_seconds_brackets_the_burst(monkeypatch):
    FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    s = tce.cuda_event_seconds(lambda: FakeEvent.log.append(("call",)), 3)
    assert s == 0.0125
    assert FakeEvent.log == [("new", "ev0"), ("new", "ev1"), ("record", "ev0"), ("call",), ("call",), ("call",),
                             ("record", "ev1"), ("sync", "ev1")]


@pytest.mark.requires_cuda
def test_cuda_ceilings_on_the_gpu():
    r = ce.measure_cuda(10.0)
    assert r["available"] and r["gpu"] and r["library"].startswith("torch ")
    assert r["bf16_ops_per_s"] > r["fp32_ops_per_s"] > 1e12
    if tuple(int(x) for x in r["capability"].split(".")) >= (8, 9):
        assert r["fp8_ops_per_s"] and r["fp8_ops_per_s"] > r["bf16_ops_per_s"]


def test_memory_bandwidth_torch_triad_writes_the_triad(restore_threads):
    """torch.triad really computes a = b + 3c over the shared arrays (it streams what it claims) at a plausible rate."""
    fn = tce._mem_torch_triad(1000, 1)
    fn()
    a, b, c = ce.memory_arrays(1000)
    assert (a == b + 3.0 * c).all() and float(a[0]) == 7.0
    r = ce.measure_memory(1, 0.2, array_mb=16.0, passes=3, kernels=("torch.triad",))
    assert r["mem_library"] == "torch.triad" and 1e9 < r["mem_bytes_per_s"] < 2e12
