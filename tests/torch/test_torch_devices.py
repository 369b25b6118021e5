"""Torch on CUDA: the device/variant plan, the skipped reasons, the CUDA-event timer (logic tested on CPU with a
fake torch.cuda.Event) and, on a GPU machine, the cuda rows for real."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from quantization.torch import route as tr
from utils.errors import SuiteError
from utils.harness import measure
from utils.paths import REPO_ROOT
from utils.registry import TOOLCHAINS

NO_CAPS = {"cpu_fp16": False, "cpu_bf16": False, "cuda_bf16": False}
GPU_FAST_PATHS = {"inductor-cl", "inductor-cl-fp16", "inductor-max", "inductor-max-fp16", "fp8"}


def test_declaration_has_cuda_and_the_half_variants():
    tc = TOOLCHAINS["torch"]
    assert tc.devices == ("cpu", "cuda") and tc.default_device() == "cpu" and tc.device_flag
    for model in ("resnet50", "gpt2"):
        v = dict(tc.model_variants(model))
        assert v["eager"] == "fp32" and v["inductor"] == "fp32"
        assert v["eager-fp16"] == v["inductor-fp16"] == "fp16"
        assert v["eager-bf16"] == v["inductor-bf16"] == "bf16"
        for m in v:  # every declared method has a builder
            assert (("image-classification" if model == "resnet50" else "language-model"), m) in tr.BUILDERS
    # the CPU rows that existed before keep their (method, precision) and order
    assert tc.model_variants("resnet50")[:4] == (("eager", "fp32"), ("fx", "int8"), ("inductor", "fp32"), ("pt2e", "int8"))
    assert tc.model_variants("gpt2")[:3] == (("eager", "fp32"), ("weight-only", "int8"), ("dynamic", "int8"))
    assert tc.baseline_for("inductor-bf16") == ("torch", "inductor") and tc.baseline_for("eager-fp16") == ("torch", "eager")
    # the half casts and the GPU fast paths are opt-in on the CPU (only when --methods names them), default on cuda
    half = {"eager-fp16", "eager-bf16", "inductor-fp16", "inductor-bf16"}
    assert set(tc.opt_in["cpu"]) == half | GPU_FAST_PATHS and not tc.opt_in.get("cuda")


def test_the_route_runs_the_cpu_half_casts_only_when_named():
    from quantization import kit
    from quantization.kit.config import plan_from_args

    ap = kit.parser_for(tr.ROUTE)
    assert ("opt-inmethods(cpu:eager-fp16,eager-bf16,inductor-fp16,inductor-bf16,inductor-cl,inductor-cl-fp16,"
            "inductor-max,inductor-max-fp16,fp8)") in "".join(ap.format_help().split())
    plan = plan_from_args("torch", ap.parse_args(["--model", "resnet50,gpt2"]))

    def methods(p, model, device):
        return [it.method for it in p.items_of("torch", model) if it.device == device]

    assert methods(plan, "resnet50", "cpu") == ["eager", "fx", "inductor", "pt2e"]
    assert methods(plan, "gpt2", "cpu") == ["eager", "weight-only", "dynamic", "inductor"]
    assert {"eager-fp16", "inductor-bf16"} <= set(methods(plan, "resnet50", "cuda"))
    plan = plan_from_args("torch", ap.parse_args(["--model", "resnet50", "--methods", "eager,eager-bf16"]))
    assert [it.variant for it in plan.items if it.device == "cpu"] == [("eager", "fp32"), ("eager-bf16", "bf16")]


def test_split_method():
    assert tr.split_method("eager") == ("eager", "fp32")
    assert tr.split_method("inductor-bf16") == ("inductor", "bf16")
    assert tr.split_method("eager-fp16") == ("eager", "fp16")
    assert tr.split_method("weight-only") == ("weight-only", "fp32")  # a dash that is not a precision


@pytest.mark.parametrize("method", ["fx", "pt2e"])
def test_cpu_only_methods_are_skipped_on_cuda_with_the_x86_reason(method):
    why = tr.device_plan(method, "cuda", {**NO_CAPS, "cuda_bf16": True})
    assert why and "x86 CPU backend" in why and "CUDA" in why
    assert tr.device_plan(method, "cpu", NO_CAPS) is None


def test_half_precision_plan_on_cpu_and_cuda():
    # no native fp16 on this CPU: skipped, saying so; native bf16: runs
    why = tr.device_plan("eager-fp16", "cpu", NO_CAPS)
    assert "no native FP16" in why and "cuda" in why
    assert "no native BF16" in tr.device_plan("inductor-bf16", "cpu", NO_CAPS)
    assert tr.device_plan("inductor-bf16", "cpu", {**NO_CAPS, "cpu_bf16": True}) is None
    # cuda: fp16 always, bf16 where the GPU supports it
    assert tr.device_plan("eager-fp16", "cuda", NO_CAPS) is None
    assert "bfloat16" in tr.device_plan("eager-bf16", "cuda", NO_CAPS)
    assert tr.device_plan("eager-bf16", "cuda", {**NO_CAPS, "cuda_bf16": True}) is None
    for m in ("eager", "inductor", "weight-only", "dynamic"):
        assert tr.device_plan(m, "cuda", NO_CAPS) is None and tr.device_plan(m, "cpu", NO_CAPS) is None


def test_devices_flag_of_the_route():
    """--devices is the plan's (every declared device by default; cuda rows say why where CUDA is missing)."""
    from quantization import kit
    from quantization.kit.config import plan_from_args

    ap = kit.parser_for(tr.ROUTE)
    assert {it.device for it in plan_from_args("torch", ap.parse_args([])).items} == {"cpu", "cuda"}
    assert {it.device for it in plan_from_args("torch", ap.parse_args(["--devices", "cuda"])).items} == {"cuda"}
    with pytest.raises(SuiteError, match="unknown device 'tpu'"):
        plan_from_args("torch", ap.parse_args(["--devices", "cpu,tpu"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given where CUDA is absent")
def test_cuda_unavailable_reason_names_cuda():
    why = tr.ROUTE.device_unavailable("cuda", None)
    assert why.startswith("CUDA is not available") and torch.__version__ in why
    assert tr.ROUTE.device_unavailable("cpu", None) is None


class FakeEvent:
    """torch.cuda.Event stand-in: records the order of calls into a shared log; elapsed_time = 2.5 ms."""

    log: list = []

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.name = f"ev{len([x for x in self.log if x[0] == 'new'])}"
        self.log.append(("new", self.name))

    def record(self):
        self.log.append(("record", self.name))

    def synchronize(self):
        self.log.append(("sync", self.name))

    def elapsed_time(self, other):
        self.log.append(("elapsed", self.name, other.name))
        return 2.5


@pytest.fixture
def fake_events(monkeypatch):
    FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    return FakeEvent.log


def test_cuda_event_timer_brackets_the_call(fake_events):
    timer = tr.cuda_event_timer()
    ms = timer(lambda: fake_events.append(("call",)))
    assert ms == 2.5
    assert fake_events == [("new", "ev0"), ("new", "ev1"), ("record", "ev0"), ("call",), ("record", "ev1"),
                           ("sync", "ev1"), ("elapsed", "ev0", "ev1")]


def test_a_cuda_build_is_timed_with_cuda_events(monkeypatch, fake_events):
    """The eager/inductor image builder on device "cuda" hands the kit the CUDA-event timer and kind; the harness
    then takes every sample from it (no GPU: the device move is stubbed, the events are fakes)."""
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 10)).eval()
    monkeypatch.setattr(tr, "_classifier", lambda ctx: tiny)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(tr, "_to_device", lambda t, device, dtype=None, channels_last=False: t)
    built = tr.BUILDERS[("image-classification", "eager")](SimpleNamespace(), "cuda")
    assert built.latency_kind == "cuda-events" and built.timer is not None and built.timed is not None
    assert any("CUDA events" in n for n in built.notes)
    x = np.zeros((2, 3, 8, 8), np.float32)
    lat = measure(built.timed(x), items_per_call=2, kind=built.latency_kind, timer=built.timer, min_time_s=0.0,
                  min_iters=3, warmup=1)
    assert lat.kind == "cuda-events" and lat.samples_ms == (2.5, 2.5, 2.5) and lat.first_call_ms == 2.5
    assert sum(e[0] == "elapsed" for e in fake_events) == 5  # first call + warm-up + 3 samples, all from events
    cpu = tr.BUILDERS[("image-classification", "eager")](SimpleNamespace(), "cpu")
    assert cpu.timer is None and cpu.latency_kind == "host-wall"


def _route(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    p = subprocess.run([sys.executable, "-m", "quantization.torch.route", "--runs-dir", str(tmp_path), *args],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, env=env)
    rows = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("*.json"))]
    return p, rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skipped rows written where CUDA is absent")
def test_cuda_rows_are_skipped_with_the_reason_on_a_cpu_machine(tmp_path):
    p, rows = _route(tmp_path, "--model", "resnet50", "--methods", "eager,fx,eager-fp16", "--devices", "cuda",
                     "--batches", "1", "--eval-limit", "8")
    assert p.returncode == 0, p.stderr[-2000:]
    assert {(r["method"], r["device"], r["status"]) for r in rows} == {
        ("eager", "cuda", "skipped"), ("fx", "cuda", "skipped"), ("eager-fp16", "cuda", "skipped")}
    assert all(r["reason"].startswith("CUDA is not available") for r in rows)


@pytest.mark.requires_cuda
@pytest.mark.slow
def test_cuda_rows_run_for_real(tmp_path):
    """On a GPU machine: every torch cuda row of both models is ok (fx/pt2e skipped: x86 CPU backend), timed
    with CUDA events, accuracy close to the CPU FP32 row's."""
    p, rows = _route(tmp_path, "--model", "resnet50,gpt2", "--devices", "cuda", "--batches", "1",
                     "--eval-limit", "64", "--min-time", "0.2")
    assert p.returncode == 0, p.stderr[-3000:]
    decode = [r for r in rows if r.get("latency_kind") == "decode"]  # the KV-cache rows: checked apart
    bad = [(r["method"], r["reason"]) for r in decode if r["status"] != "ok"
           and not (r["method"] == "fp8" and r["status"] == "skipped")]
    assert not bad, bad
    by = {(r["model"], r["method"]): r for r in rows if r.get("latency_kind") != "decode"}
    for (model, method), r in by.items():
        assert r["device"] == "cuda"
        if method in ("fx", "pt2e"):
            assert r["status"] == "skipped" and "x86 CPU backend" in r["reason"]
            continue
        if method == "fp8" and not tr.capabilities()["cuda_fp8"]:
            assert r["status"] == "skipped" and ">= 8.9" in r["reason"]
            continue
        assert r["status"] == "ok", (model, method, r["reason"])
        assert r["latency_kind"] == "cuda-events" and r["latency_p50_ms"] > 0
        assert r["environment"]["gpu"]
        if method.startswith("inductor"):  # compiled, proven: graphs of its own, no fallback
            c = r["extra"]["compile"]
            assert c["frames"] >= 1 and c["fallbacks"] == 0 and c["graph_breaks"] == 0, (model, method, c)
    fp32 = by[("resnet50", "eager")]["value"]
    for m in ("inductor", "eager-fp16", "inductor-fp16", "eager-bf16", "inductor-bf16", "inductor-cl",
              "inductor-cl-fp16", "inductor-max", "inductor-max-fp16"):
        assert abs(by[("resnet50", m)]["value"] - fp32) <= 3.2, m  # 64 images: at most 2 flipped
    assert by[("resnet50", "inductor-cl")]["extra"]["torch_settings"]["cudnn_benchmark"] is True
    assert by[("resnet50", "inductor-max")]["extra"]["torch_settings"]["cuda_graphs"] is True
    ppl = by[("gpt2", "eager")]["value"]
    for m in ("inductor", "eager-fp16", "inductor-fp16", "weight-only", "dynamic", "inductor-max", "inductor-max-fp16"):
        assert abs(by[("gpt2", m)]["value"] / ppl - 1) < 0.02, m
    assert abs(by[("gpt2", "eager-bf16")]["value"] / ppl - 1) < 0.05
    if by[("gpt2", "fp8")]["status"] == "ok":
        assert abs(by[("gpt2", "fp8")]["value"] / ppl - 1) < 0.05


# ------------------------------------------------------------------------------ the GPU fast paths (planning, skipping)

H100 = {**NO_CAPS, "cuda_bf16": True, "cuda_fp8": True, "cuda_capability": (9, 0), "cuda_name": "NVIDIA H100"}
A100 = {**NO_CAPS, "cuda_bf16": True, "cuda_fp8": False, "cuda_capability": (8, 0), "cuda_name": "NVIDIA A100"}


def test_gpu_fast_paths_are_declared_planned_on_cuda_and_leave_the_cpu_plan_alone(tmp_path):
    from utils.plan import build_plan

    tc = TOOLCHAINS["torch"]
    assert dict(tc.model_variants("resnet50"))["inductor-cl"] == "fp32" and dict(tc.model_variants("resnet50"))["inductor-cl-fp16"] == "fp16"
    assert dict(tc.model_variants("gpt2"))["fp8"] == "fp8" and "inductor-cl" not in dict(tc.model_variants("gpt2"))
    for m in ("inductor-cl", "inductor-cl-fp16", "inductor-max", "inductor-max-fp16"):
        assert tc.baseline_for(m) == ("torch", "inductor")  # one change from the inductor row each
    assert tc.baseline_for("fp8") == ("torch", "eager") and "fp8" in tc.generating("gpt2")
    plan = build_plan(models="resnet50,gpt2", toolchains="torch", runs_dir=tmp_path)

    def methods(model, device):
        return [it.method for it in plan.items if it.model == model and it.device == device]

    # the CPU default plan is what it was; on cuda every fast path is planned, none skipped by declaration
    assert methods("resnet50", "cpu") == ["eager", "fx", "inductor", "pt2e"]
    assert methods("gpt2", "cpu") == ["eager", "weight-only", "dynamic", "inductor"]
    assert {"inductor-cl", "inductor-cl-fp16", "inductor-max", "inductor-max-fp16"} <= set(methods("resnet50", "cuda"))
    assert {"inductor-max", "inductor-max-fp16", "fp8"} <= set(methods("gpt2", "cuda"))
    assert not [it for it in plan.items if it.device == "cuda" and it.method in GPU_FAST_PATHS and it.skip]
    fp8 = next(it for it in plan.items if it.method == "fp8" and it.device == "cuda")
    assert fp8.decode and fp8.precision == "fp8"
    # named on the CPU: the cuDNN and FP8 paths are written skipped with the declared reason, without a build;
    # max-autotune is a real CPU path (inductor's CPU autotuning) and runs
    named = build_plan(models="resnet50,gpt2", toolchains="torch", devices="cpu", runs_dir=tmp_path,
                       methods="inductor-cl,inductor-cl-fp16,inductor-max,fp8")
    skip = {(it.model, it.method): it.skip for it in named.items}
    assert "cuDNN" in skip[("resnet50", "inductor-cl")] and skip[("resnet50", "inductor-cl-fp16")]
    assert "compute capability >= 8.9" in skip[("gpt2", "fp8")] and "no CPU path" in skip[("gpt2", "fp8")]
    assert skip[("resnet50", "inductor-max")] == "" and skip[("gpt2", "inductor-max")] == ""


def test_gpu_fast_path_device_plan():
    assert "cuDNN" in tr.device_plan("inductor-cl", "cpu", NO_CAPS)
    assert tr.device_plan("inductor-cl", "cuda", NO_CAPS) is None
    assert tr.device_plan("inductor-max", "cpu", NO_CAPS) is None and tr.device_plan("inductor-max", "cuda", NO_CAPS) is None
    assert "no native FP16" in tr.device_plan("inductor-max-fp16", "cpu", NO_CAPS)  # the half rule holds for them
    assert tr.device_plan("inductor-cl-fp16", "cuda", NO_CAPS) is None
    # fp8 on cuda: compute capability >= 8.9 (Ada, Hopper)
    why = tr.device_plan("fp8", "cuda", A100)
    assert why.startswith("fp8 on cuda: this GPU (NVIDIA A100) has compute capability 8.0") and ">= 8.9" in why
    assert tr.device_plan("fp8", "cuda", H100) is None
    for m in ("inductor-cl", "inductor-cl-fp16", "inductor-max", "inductor-max-fp16"):
        assert ("image-classification", m) in tr.BUILDERS
    for m in ("inductor-max", "inductor-max-fp16", "fp8"):
        assert ("language-model", m) in tr.BUILDERS


@pytest.mark.parametrize("cc,name,fp8", [((8, 0), "NVIDIA A100", False), ((8, 9), "NVIDIA L4", True),
                                         ((9, 0), "NVIDIA H200", True)])
def test_capabilities_reads_the_gpu(monkeypatch, cc, name, fp8):
    """capabilities() from torch.cuda's answers (faked: no GPU here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cc)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    caps = tr.capabilities()
    assert caps["cuda_fp8"] is fp8 and caps["cuda_capability"] == cc and caps["cuda_name"] == name
    assert (tr.device_plan("fp8", "cuda", caps) is None) is fp8


def test_fp8_on_a_gpu_without_fp8_is_skipped_with_the_reason():
    """The route's build on cuda checks the GPU before anything is loaded: SkipVariant naming its capability."""
    ctx = SimpleNamespace(state={"caps": A100})
    with pytest.raises(tr.SkipVariant, match=r"compute capability 8\.0; FP8 matmuls .* need >= 8\.9"):
        tr.ROUTE.build(ctx, "fp8", "fp8", "cuda")


def test_torchao_float8_has_no_cpu_path():
    """What the declared CPU reason says, with the real torchao: its float8 config refuses to quantize without an
    FP8-capable GPU. Its config is made without torchao's process-wide inductor settings."""
    from torchao.quantization import quantize_

    cfg = tr.torchao_config("fp8")
    assert type(cfg).__name__ == "Float8DynamicActivationFloat8WeightConfig" and cfg.set_inductor_config is False
    assert all(tr.torchao_config(m).set_inductor_config is False for m in ("weight-only", "dynamic"))
    with pytest.raises(AssertionError, match="8.9"):
        quantize_(torch.nn.Sequential(torch.nn.Linear(32, 32)), cfg)


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()


def _cuda_stubs(monkeypatch, calls):
    """No GPU: the module and tensor moves are stubbed (they record what was asked); the model runs on the CPU."""
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)

    def to_device(t, device, dtype=None, channels_last=False):
        calls.append(("to_device", device, channels_last))
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    monkeypatch.setattr(tr, "_to_device", to_device)


def test_channels_last_cudnn_benchmark_variant_on_cuda(monkeypatch, fake_events):
    """inductor-cl on cuda (faked device): compiled and proven, input converted to channels-last once outside the
    timed call, cudnn.benchmark on around its calls only, the settings recorded, timed with CUDA events."""
    calls = []
    monkeypatch.setattr(tr, "_classifier", lambda ctx: _tiny())
    _cuda_stubs(monkeypatch, calls)
    seen = []
    real = tr.with_cudnn_benchmark

    def spy(fn):
        wrapped = real(fn)

        def call(*a, **k):
            out = wrapped(*a, **k)
            seen.append(torch.backends.cudnn.benchmark)  # restored after the call
            return out
        return call

    monkeypatch.setattr(tr, "with_cudnn_benchmark", spy)
    built = tr.BUILDERS[("image-classification", "inductor-cl")](SimpleNamespace(), "cuda")
    assert isinstance(built.handle, tr.Compiled) and built.handle.cudnn_benchmark and built.latency_kind == "cuda-events"
    assert tr.CUDA_CHANNELS_LAST_NOTE in built.notes and tr.CUDNN_BENCHMARK_NOTE in built.notes
    assert "default mode" in built.notes[0] and "CUDA graphs" not in built.notes[0]
    s = tr.torch_settings("cuda", built)
    assert s["channels_last"] and s["cudnn_benchmark"] and s["compile_mode"] == "default" and not s["cuda_graphs"]
    x = np.zeros((2, 3, 16, 16), np.float32)
    once = built.timed(x)  # the input converted here, untimed
    assert calls == [("to_device", "cuda", True)]
    lat = measure(once, items_per_call=2, kind=built.latency_kind, timer=built.timer, min_time_s=0.0, min_iters=3,
                  warmup=1)
    assert lat.samples_ms == (2.5, 2.5, 2.5) and calls == [("to_device", "cuda", True)]
    assert built.extra["compile"]["frames"] == 1 and built.extra["compile"]["checked_calls"] == 1
    assert seen and not torch.backends.cudnn.benchmark  # each call went through the wrapper; the flag is off again


def test_max_autotune_variant_on_cuda_marks_each_cudagraph_step(monkeypatch, fake_events):
    """inductor-max on cuda (faked device, real max-autotune compile on the CPU): mode recorded, CUDA graphs said,
    and every timed call begins a new CUDA-graph step (torch.compiler.cudagraph_mark_step_begin)."""
    calls, steps = [], []
    monkeypatch.setattr(tr, "_classifier", lambda ctx: _tiny())
    _cuda_stubs(monkeypatch, calls)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    built = tr.BUILDERS[("image-classification", "inductor-max")](SimpleNamespace(), "cuda")
    assert built.handle.mode == "max-autotune" and built.handle.cudagraph_steps
    assert "mode=max-autotune" in built.notes[0] and "CUDA graphs" in built.notes[0]
    assert tr.torch_settings("cuda", built)["cuda_graphs"] is True
    once = built.timed(np.zeros((1, 3, 16, 16), np.float32))
    for _ in range(4):
        once()
    assert len(steps) == 4 and built.extra["compile"]["mode"] == "max-autotune"
    assert built.extra["compile"]["frames"] == 1 and built.extra["compile"]["fallbacks"] == 0
    # on the CPU the same mode has no CUDA graphs: no step marks, and the note says so
    cpu = tr.BUILDERS[("image-classification", "inductor-max")](SimpleNamespace(), "cpu")
    assert not cpu.handle.cudagraph_steps and "CUDA graphs" not in cpu.notes[0]
