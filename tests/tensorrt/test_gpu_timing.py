"""EventTimer / e2e_timer against a simulated CUDA runtime: one stream, a GPU clock and a host clock.

The simulation: a host call that enqueues work costs `host_ms` of host time; the GPU starts each piece
of work when both the host has enqueued it and the previous work is done; an event recorded on the
stream takes the GPU time at which the stream reaches it (so an event on an idle stream fires at once,
*at the host's current time*). That is CUDA's semantics, and exactly why recording the start event
before the host enqueues a run makes host enqueue time count as GPU time.
"""
import pytest

from quantization.tensorrt import gpu


class SimRuntime:
    def __init__(self):
        self.host, self.gpu_free = 0.0, 0.0
        self.events = {}

    def enqueue(self, gpu_ms, host_ms):
        self.host += host_ms  # the host spends host_ms building/launching the work
        self.gpu_free = max(self.gpu_free, self.host) + gpu_ms

    # the cuda.bindings.runtime calls EventTimer makes
    def cudaEventCreate(self):
        ev = len(self.events)
        self.events[ev] = None
        return (0, ev)

    def cudaEventRecord(self, ev, stream):
        self.events[ev] = max(self.gpu_free, self.host)
        return (0,)

    def cudaEventSynchronize(self, ev):
        self.host = max(self.host, self.events[ev])
        return (0,)

    def cudaEventElapsedTime(self, a, b):
        return (0, self.events[b] - self.events[a])

    def cudaEventDestroy(self, ev):
        return (0,)


@pytest.fixture
def sim(monkeypatch):
    rt = SimRuntime()
    monkeypatch.setattr(gpu, "cudart", lambda: rt)
    monkeypatch.setattr(gpu, "check", lambda result, what="": None if len(result) == 1 else result[1])
    return rt


@pytest.mark.parametrize("gpu_ms,host_ms", [(2.0, 0.5), (0.3, 0.1)])
def test_event_timer_excludes_host_enqueue_time(sim, gpu_ms, host_ms):
    timer = gpu.EventTimer(stream=type("S", (), {"stream": 0})())
    per_run = timer.time(lambda: sim.enqueue(gpu_ms, host_ms), repeat=8)
    assert per_run == pytest.approx(gpu_ms)  # GPU time only
    # the old way (start event, then the host enqueues one run) counts the host's enqueue as GPU time
    assert timer.time(lambda: sim.enqueue(gpu_ms, host_ms), repeat=1, lead=0) == pytest.approx(gpu_ms + host_ms)


def test_plugin_timer_is_ms_per_call(sim):
    timer = gpu.EventTimer(stream=type("S", (), {"stream": 0})())
    calls = []

    def run():
        calls.append(1)
        sim.enqueue(1.25, 0.2)

    plug = timer.timer(repeat=4, lead=1)
    assert plug(run) == pytest.approx(1.25) and len(calls) == 5
    with pytest.raises(ValueError):
        timer.timer(repeat=0)
    with pytest.raises(ValueError):
        timer.time(run, repeat=1, lead=-1)


def test_e2e_timer_is_host_time_until_the_stream_is_idle():
    ticks = iter([10.0, 10.004])
    synced = []
    stream = type("S", (), {"synchronize": lambda self: synced.append(1)})()
    t = gpu.e2e_timer(stream, clock=lambda: next(ticks))
    assert t(lambda: None) == pytest.approx(4.0) and synced == [1]
    assert gpu.E2E_KIND == "cuda-e2e" and gpu.GPU_COMPUTE_KIND == "cuda-events"
