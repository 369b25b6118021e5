"""cuda-python device buffers, copies and CUDA events on a real GPU (no TensorRT needed)."""
import numpy as np
import pytest

pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
pytestmark = pytest.mark.requires_cuda

from quantization.tensorrt.gpu import DeviceBuffer, EventTimer, Stream  # noqa: E402


def test_round_trip_and_event_timing():
    stream = Stream()
    buf = DeviceBuffer(16)
    try:
        x = np.arange(1000, dtype=np.int64)
        buf.ensure(x.nbytes)  # grows
        stream.h2d(buf, x)
        y = np.empty_like(x)
        stream.d2h(y, buf)
        stream.synchronize()
        np.testing.assert_array_equal(x, y)
        timer = EventTimer(stream)
        ms = timer.time(lambda: stream.h2d(buf, x))
        timer.destroy()
        assert ms >= 0
    finally:
        buf.free()
        stream.destroy()
