"""The whole route against a fake `tensorrt` module and fake device memory (no TensorRT, no GPU).

The fake follows the documented call sequence (Builder -> create_network -> OnnxParser ->
config flags/profiles/int8_calibrator -> build_serialized_network, which drives the calibrator
like TensorRT does: read_calibration_cache, then get_batch until None, then
write_calibration_cache; Runtime -> engine -> context -> set_input_shape / set_tensor_address /
execute_async_v3). It checks what the route asks TensorRT for and what it does with the
answers: flags per variant, calibration-cache use, engine-cache reuse, rows. Real TensorRT
behaviour is covered only by test_tensorrt_gpu.py on a GPU machine.
"""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from quantization.tensorrt_route import gpu, route, trt_backend
from quantization.tensorrt_route.cache import DeviceInfo
from utils.specs import EMBEDDED, ModelSource

MEM: dict[int, bytearray] = {}
BUILDS: list[dict] = []
SEQ, VOCAB, CLASSES = 64, 50, 10


# ------------------------------------------------------------------ fake device memory

class FakeBuffer:
    counter = [0x1000]

    def __init__(self, nbytes=0):
        self.ptr, self.nbytes = 0, 0
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, n):
        if n > self.nbytes:
            self.free()
            self.ptr = FakeBuffer.counter[0]
            FakeBuffer.counter[0] += 1
            MEM[self.ptr], self.nbytes = bytearray(n), n
        return self.ptr

    def free(self):
        MEM.pop(self.ptr, None)
        self.ptr, self.nbytes = 0, 0

    def __int__(self):
        return self.ptr


class FakeStream:
    handle = 0

    def h2d(self, dst, host):
        host = np.ascontiguousarray(host)
        assert host.nbytes <= len(MEM[int(dst)])
        MEM[int(dst)][:host.nbytes] = host.tobytes()

    def d2h(self, host, src):
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(MEM[int(src)][:host.nbytes]), np.uint8)

    def synchronize(self):
        pass

    def destroy(self):
        pass


class FakeTimer:
    def __init__(self, stream):
        pass

    def time(self, enqueue):
        enqueue()
        return 1.5

    def destroy(self):
        pass


# ------------------------------------------------------------------ fake tensorrt

def make_fake_trt(version):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING, VERBOSE = 2, 0

        def __init__(self, level):
            self.level = level

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class BuilderFlag:
        FP16, INT8, TF32 = "FP16", "INT8", "TF32"

    if int(version.split(".")[0]) >= 11:  # removed in 11.x
        del BuilderFlag.FP16, BuilderFlag.INT8
        del IInt8EntropyCalibrator2

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.spec = flags, [], None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            spec = json.loads(Path(path).read_text())
            self.network.spec = spec
            self.network.inputs = [types.SimpleNamespace(name=spec["input"])]
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles = set(), set(), []
            self.int8_calibrator = self.calib_profile = None

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.cleared.add(f)

        def set_memory_pool_limit(self, pool, size):
            assert pool == "WORKSPACE" and size > 0

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def set_calibration_profile(self, p):
            self.calib_profile = p

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            fed, cal = 0, config.int8_calibrator
            if cal is not None:
                (shape, _, _), = config.calib_profile.shapes.values()
                assert shape[0] == cal.get_batch_size()
                if cal.read_calibration_cache() is None:
                    while (ptrs := cal.get_batch([network.inputs[0].name])) is not None:
                        assert len(ptrs) == 1 and ptrs[0] in MEM
                        fed += 1
                    cal.write_calibration_cache(memoryview(b"FAKE-ENTROPY2-CACHE"))
            BUILDS.append({"model": network.spec["kind"], "flags": sorted(config.flags),
                           "cleared": sorted(config.cleared), "network_flags": network.flags, "fed": fed,
                           "profile": config.profiles[0].shapes})
            return json.dumps(network.spec).encode()

    class DT:
        def __init__(self, name):
            self.name = name

    class Context:
        def __init__(self, spec):
            self.spec, self.addr, self.shape = spec, {}, None

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n = self.shape[0]
            return (n, self.shape[1], VOCAB) if self.spec["kind"] == "lm" else (n, CLASSES)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream_handle):
            out_shape = self.get_tensor_shape("logits")
            logits = np.zeros(out_shape, np.float32)
            if self.spec["kind"] == "cls":  # predict class = 3 for every image
                logits[:, 3] = 1.0
            MEM[self.addr["logits"]][:logits.nbytes] = logits.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, spec):
            self.spec = spec

        def get_tensor_name(self, i):
            return [self.spec["input"], "logits"][i]

        def get_tensor_mode(self, name):
            return "INPUT" if name == self.spec["input"] else "OUTPUT"

        def get_tensor_dtype(self, name):
            return DT("INT64" if name == "input_ids" else "FLOAT")

        def create_execution_context(self):
            return Context(self.spec)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(json.loads(data))

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode, Builder,
                OnnxParser, Runtime):
        setattr(trt, obj.__name__, obj)
    if int(version.split(".")[0]) < 11:
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def env(tmp_path, monkeypatch):
    MEM.clear()
    BUILDS.clear()
    monkeypatch.setattr("utils.specs.CACHE_DIR", tmp_path / "cache")
    for mod in (trt_backend,):
        monkeypatch.setattr(mod, "DeviceBuffer", FakeBuffer)
        monkeypatch.setattr(mod, "Stream", FakeStream)
        monkeypatch.setattr(mod, "EventTimer", FakeTimer)
    monkeypatch.setattr(gpu, "Stream", FakeStream)
    monkeypatch.setattr(gpu, "device_info", lambda index=0: DeviceInfo("NVIDIA H100 80GB HBM3", "9.0"))
    monkeypatch.setattr(gpu, "cuda_problem", lambda: None)

    res = EMBEDDED["resnet50"]["resolution"]
    src = ModelSource("resnet50")
    src.cache_dir.mkdir(parents=True)
    (src.cache_dir / "model.onnx").write_text(json.dumps({"kind": "cls", "input": "input"}))
    src.manifest_path.write_text(json.dumps({
        "onnx": str(src.cache_dir / "model.onnx"), "onnx_sha": "resnet-sha", "resolution": res, "num_classes": 10,
        "latency_resolution": 32, "ops_per_item": 4.1e9, "dataset": "sklearn-digits"}))

    g = ModelSource("gpt2")
    g.cache_dir.mkdir(parents=True)
    (g.cache_dir / "model.onnx").write_text(json.dumps({"kind": "lm", "input": "input_ids"}))
    rng = np.random.default_rng(0)
    np.save(g.cache_dir / "train.npy", rng.integers(0, VOCAB, 64 * 40, dtype=np.int64))
    np.save(g.cache_dir / "val.npy", rng.integers(0, VOCAB, 200, dtype=np.int64))
    g.manifest_path.write_text(json.dumps({
        "onnx": str(g.cache_dir / "model.onnx"), "onnx_sha": "gpt2-sha", "seq_len": SEQ, "vocab_size": VOCAB,
        "train_ids": str(g.cache_dir / "train.npy"), "val_ids": str(g.cache_dir / "val.npy"), "ops_per_item": 1e6,
        "dataset": "pydoc-topics"}))
    return types.SimpleNamespace(tmp=tmp_path, resnet=src, gpt2=g, runs=tmp_path / "runs", monkeypatch=monkeypatch)


def run(env, version, *extra, model="resnet50,gpt2"):
    env.monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(version))
    args = ["--model", model, "--batches", "1,2", "--min-time", "0", "--min-iters", "2", "--eval-limit", "20",
            "--calib-samples", "20", "--calib-batch", "8", "--runs-dir", str(env.runs), *extra]
    assert route.main(args) == 0
    return {(r["model"], r["method"], r["batch"]): r for r in
            (json.loads(p.read_text()) for p in env.runs.glob("*.json"))}


def add_qdq_index(env, source, calib_sha="other"):
    d = source.cache_dir / "modelopt-onnx"
    d.mkdir()
    kind, name = ("lm", "input_ids") if source.model == "gpt2" else ("cls", "input")
    (d / "max.onnx").write_text(json.dumps({"kind": kind, "input": name, "qdq": True}))
    (d / "index.json").write_text(json.dumps({"entries": {"k": {
        "method": "max", "path": "max.onnx", "calib_sha": calib_sha, "calib_samples": 20, "src_onnx_sha": "older-sha",
        "high_precision_dtype": "fp32"}}}))


# ------------------------------------------------------------------ tests

def test_trt10_builds_three_variants_and_skips_qdq_without_modelopt(env):
    rows = run(env, "10.16.1.11")
    assert len(rows) == 16
    for model in ("resnet50", "gpt2"):
        for b in (1, 2):
            assert rows[(model, "int8-qdq", b)]["status"] == "skipped"
            assert "modelopt-onnx route first" in rows[(model, "int8-qdq", b)]["reason"]
            for m in ("fp32", "fp16", "int8-entropy"):
                r = rows[(model, m, b)]
                assert r["status"] == "ok", r["reason"]
                assert r["latency_kind"] == "cuda-events" and r["latency_p50_ms"] == 1.5
                assert r["environment"]["gpu"] == "NVIDIA H100 80GB HBM3"
                assert r["environment"]["tensorrt"] == "10.16.1.11"
                assert r["compute_precision"] == {"fp32": "fp32", "fp16": "fp16"}.get(m, "int8")
    # GPT-2: uniform logits -> perplexity == vocabulary size; every evaluated token after the first is
    # scored once (--eval-limit 20 caps the ids; the one 20-token window is right-padded to length 64)
    g = rows[("gpt2", "fp32", 1)]
    assert g["value"] == pytest.approx(VOCAB, rel=1e-6) and g["extra"]["n_tokens_scored"] == 19
    assert g["throughput_unit"] == "tokens/s" and g["throughput"] == pytest.approx(1 * SEQ / 1.5e-3)
    r = rows[("resnet50", "fp32", 2)]
    assert r["extra"]["n_eval"] == 20 and r["throughput_unit"] == "images/s"
    assert r["throughput"] == pytest.approx(2 / 1.5e-3)
    e = rows[("resnet50", "int8-entropy", 1)]
    assert e["calib_samples"] == 20 and e["calib_method"] == "entropy2" and e["calib_seconds"] is not None
    assert e["extra"]["calib_batch"] == 8 and e["extra"]["calib_padded"] == 4 and e["extra"]["calib_batches"] == 3
    # what TensorRT was asked for
    by = {(b["model"], tuple(b["flags"])): b for b in BUILDS}
    assert len(BUILDS) == 6
    assert by[("cls", ())]["cleared"] == ["TF32"]
    assert by[("cls", ("INT8",))]["fed"] == 3 and by[("lm", ("INT8",))]["fed"] == 3  # ceil(20 / 8)
    assert ("lm", ("FP16",)) in by
    assert by[("lm", ())]["profile"]["input_ids"] == ((1, SEQ), (2, SEQ), (2, SEQ))  # latency batches only
    assert by[("lm", ("INT8",))]["profile"]["input_ids"] == ((1, SEQ), (2, SEQ), (8, SEQ))  # + calibration batch
    res = EMBEDDED["resnet50"]["resolution"]
    assert by[("cls", ())]["profile"]["input"] == ((1, 3, res, res), (2, 3, 32, 32), (32, 3, 32, 32))  # eval batch 32
    assert (env.resnet.cache_dir / "tensorrt" / "int8-entropy.calib").read_bytes() == b"FAKE-ENTROPY2-CACHE"


def test_second_run_reuses_engines_rebuild_rebuilds(env):
    run(env, "10.16.1.11", model="gpt2")
    assert len(BUILDS) == 3
    run(env, "10.16.1.11", model="gpt2")
    assert len(BUILDS) == 3  # all three engines came from the cache
    run(env, "10.16.1.11", "--rebuild", model="gpt2")
    assert len(BUILDS) == 6 and BUILDS[-1]["fed"] + BUILDS[-2]["fed"] + BUILDS[-3]["fed"] == 3  # recalibrated


def test_calibration_cache_reused_then_invalidated_by_a_new_calibration_set(env):
    run(env, "10.16.1.11", "--methods", "int8-entropy", model="resnet50")
    assert [b["fed"] for b in BUILDS] == [3]
    for p in (env.resnet.cache_dir / "tensorrt").glob("*.engine*"):
        p.unlink()
    rows = run(env, "10.16.1.11", "--methods", "int8-entropy", model="resnet50")
    assert [b["fed"] for b in BUILDS] == [3, 0]  # engine rebuilt from the calibration cache
    assert rows[("resnet50", "int8-entropy", 1)]["extra"]["calibration_cache_hit"] is True
    assert rows[("resnet50", "int8-entropy", 1)]["calib_seconds"] is None
    env.monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt("10.16.1.11"))
    assert route.main(["--model", "resnet50", "--methods", "int8-entropy", "--batches", "1", "--min-time", "0",
                       "--min-iters", "1", "--eval-limit", "20", "--calib-samples", "24", "--calib-batch", "8",
                       "--runs-dir", str(env.runs)]) == 0
    assert [b["fed"] for b in BUILDS] == [3, 0, 3]  # other calibration set: new engine key, calibrated again
    header = json.loads((env.resnet.cache_dir / "tensorrt" / "int8-entropy.calib.json").read_text())
    assert header["inputs"]["n_samples"] == 24


def test_engine_from_another_tensorrt_version_fails_that_variant_clearly(env):
    run(env, "10.16.1.11", "--methods", "fp32", model="resnet50")
    rows = run(env, "10.16.2.5", "--methods", "fp32", model="resnet50")
    r = rows[("resnet50", "fp32", 1)]
    assert r["status"] == "failed" and "10.16.1.11" in r["reason"] and "--rebuild" in r["reason"]
    rows = run(env, "10.16.2.5", "--methods", "fp32", "--rebuild", model="resnet50")
    assert rows[("resnet50", "fp32", 1)]["status"] == "ok"


def test_trt11_skips_fp16_and_entropy_builds_fp32_and_qdq(env):
    add_qdq_index(env, env.gpt2)
    rows = run(env, "11.1.0", model="gpt2")
    for b in (1, 2):
        assert rows[("gpt2", "fp16", b)]["status"] == "skipped" and "FP16" in rows[("gpt2", "fp16", b)]["reason"]
        ent = rows[("gpt2", "int8-entropy", b)]
        assert ent["status"] == "skipped" and "removed implicit INT8 calibration" in ent["reason"]
        assert rows[("gpt2", "fp32", b)]["status"] == "ok"
        q = rows[("gpt2", "int8-qdq", b)]
        assert q["status"] == "ok" and q["calib_method"] == "modelopt-max" and q["calib_samples"] == 20
        assert "another calibration set" in q["notes"] and "another FP32 ONNX" in q["notes"]
        assert q["extra"]["qdq_high_precision_dtype"] == "fp32"
    assert all(not b["flags"] and b["network_flags"] == 0 for b in BUILDS)  # strongly typed by default in 11


def test_trt10_qdq_is_strongly_typed(env):
    add_qdq_index(env, env.resnet)
    rows = run(env, "10.16.1.11", "--methods", "int8-qdq", model="resnet50")
    assert rows[("resnet50", "int8-qdq", 1)]["status"] == "ok"
    assert BUILDS[0]["network_flags"] == 1 << 1 and BUILDS[0]["flags"] == []
