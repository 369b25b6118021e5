"""A strict fake `tensorrt` module (10.x or 11.x) and fake device memory, for tests without TensorRT or a GPU.

Strict means: it rejects what the real Python bindings reject, the way they reject it (checked against
NVIDIA/TensorRT python/src/infer/pyCore.cpp and pyInt8.cpp, 10.16 and 11.x):

- per version: 10.x has IInt8EntropyCalibrator2, IBuilderConfig.int8_calibrator / set_calibration_profile and
  BuilderFlag.FP16/INT8; 11.x has none of them (AttributeError), only strongly typed networks;
- a calibrator subclass whose __init__ does not call the base __init__ raises TypeError on construction
  (the pybind11 trampoline does), and an un-overridden pure virtual method raises RuntimeError;
- exceptions raised in calibrator methods are printed and swallowed like pyInt8.cpp does (get_batch ->
  calibration ends, read_calibration_cache -> no cache);
- get_batch's device pointers must be allocations of at least the calibration batch's bytes, holding data
  of the network input's dtype (the fake memory remembers the dtype copied into it);
- add_optimization_profile returns the profile index or -1 for an invalid profile; set_calibration_profile,
  set_input_shape, set_tensor_address and execute_async_v3 return bool; set_input_shape is False for a
  shape outside the *selected* profile; set_tensor_address is False for an unknown name or an address not
  256-byte aligned; set_optimization_profile_async raises RuntimeError for a bad index.

The network "ONNX" is JSON: {"kind": "cls"|"lm", "input": name, "dtype": "FLOAT"|"INT64"}; an engine is
JSON too (spec, profiles, flags). `BUILDS` records what each build was asked for.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

VOCAB, CLASSES = 50, 10
ALIGN = 256
NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32}


class Alloc:
    def __init__(self, n):
        self.data, self.dtype = bytearray(n), None  # dtype: what was last copied in


MEM: dict[int, Alloc] = {}
BUILDS: list[dict] = []
_next = [0x10000]


def reset() -> None:
    MEM.clear()
    BUILDS.clear()


# ------------------------------------------------------------------ fake device memory (gpu.py's interface)

class FakeBuffer:
    def __init__(self, nbytes=0):
        self.ptr, self.nbytes = 0, 0
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, n):
        if n > self.nbytes:
            self.free()
            self.ptr = _next[0]
            _next[0] += ((int(n) + ALIGN - 1) // ALIGN + 1) * ALIGN
            MEM[self.ptr], self.nbytes = Alloc(int(n)), int(n)
        return self.ptr

    def free(self):
        MEM.pop(self.ptr, None)
        self.ptr, self.nbytes = 0, 0

    def __int__(self):
        return self.ptr


class FakeStream:
    handle = 0x5

    def h2d(self, dst, host):
        host = np.ascontiguousarray(host)
        a = MEM[int(dst)]
        if host.nbytes > len(a.data):
            raise RuntimeError(f"fake cudaMemcpy: {host.nbytes} bytes into an allocation of {len(a.data)}")
        a.data[:host.nbytes] = host.tobytes()
        a.dtype = host.dtype

    def d2h(self, host, src):
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(MEM[int(src)].data[:host.nbytes]), np.uint8)

    def synchronize(self):
        pass

    def destroy(self):
        pass


class FakeTimer:
    """EventTimer's interface: 1.5 ms per run whatever is enqueued."""

    def __init__(self, stream):
        self.calls = []

    def time(self, enqueue, repeat=1, lead=1):
        for _ in range(lead + repeat):
            enqueue()
        self.calls.append((repeat, lead))
        return 1.5

    def timer(self, repeat=8, lead=1):
        return lambda enqueue: self.time(enqueue, repeat=repeat, lead=lead)

    def destroy(self):
        pass


def patch_device(monkeypatch, *modules) -> None:
    """Replace DeviceBuffer / Stream / EventTimer in `modules` (e.g. trt_backend) by the fakes."""
    for mod in modules:
        monkeypatch.setattr(mod, "DeviceBuffer", FakeBuffer)
        monkeypatch.setattr(mod, "Stream", FakeStream)
        monkeypatch.setattr(mod, "EventTimer", FakeTimer)


def write_onnx(path: Path, kind: str = "cls", input_name: str | None = None) -> Path:
    name = input_name or ("input_ids" if kind == "lm" else "input")
    Path(path).write_text(json.dumps({"kind": kind, "input": name, "dtype": "INT64" if kind == "lm" else "FLOAT"}))
    return Path(path)


# ------------------------------------------------------------------ fake tensorrt

def _dims_ok(lo, opt, hi):
    return len(lo) == len(opt) == len(hi) and all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi))


def _swallow(what, fn, *args, default=None):
    """What pyInt8.cpp does around every Python override: print the exception, return a default."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - like the catch (std::exception const&) in the bindings
        print(f"[ERROR] Exception caught in {what}(): {exc}", file=sys.stderr)
        return default


def make_fake_trt(version: str = "10.16.1.11"):
    major = int(version.split(".")[0])
    modern = major >= 11
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.reject_calibration_profile = False  # test knob: set_calibration_profile returns False

    class Logger:
        WARNING, VERBOSE = 2, 0

        def __init__(self, level=2):
            self.level = level

    class _PybindMeta(type):
        def __call__(cls, *args, **kwargs):
            obj = super().__call__(*args, **kwargs)
            if not obj.__dict__.get("_pybind_initialised"):
                raise TypeError(f"tensorrt.{cls.__mro__[-2].__name__}.__init__() must be called when overriding "
                                "__init__")
            return obj

    class IInt8EntropyCalibrator2(metaclass=_PybindMeta):
        def __init__(self):
            self._pybind_initialised = True

        def _pure(self, name):
            raise RuntimeError(f'Tried to call pure virtual function "IInt8Calibrator::{name}"')

        def get_batch_size(self):
            self._pure("get_batch_size")

        def get_batch(self, names):
            self._pure("get_batch")

        def read_calibration_cache(self):
            self._pure("read_calibration_cache")

        def write_calibration_cache(self, data):
            self._pure("write_calibration_cache")

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class BuilderFlag:
        TF32 = "TF32"
        if not modern:
            FP16, INT8 = "FP16", "INT8"

    flag_names = {v for k, v in vars(BuilderFlag).items() if not k.startswith("_")}

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class ProfilingVerbosity:
        LAYER_NAMES_ONLY, NONE, DETAILED = "LAYER_NAMES_ONLY", "NONE", "DETAILED"

    class LayerInformationFormat:
        ONELINE, JSON = "ONELINE", "JSON"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DT:
        def __init__(self, name):
            self.name = name

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
            spec.setdefault("dtype", "INT64" if spec["kind"] == "lm" else "FLOAT")
            self.network.spec = spec
            self.network.inputs = [types.SimpleNamespace(name=spec["input"])]
            return True

    class IOptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - the binding's argument names
            self.shapes[input] = (tuple(int(d) for d in min), tuple(int(d) for d in opt), tuple(int(d) for d in max))

        def valid_for(self, network):
            names = {i.name for i in network.inputs}
            return set(self.shapes) == names and all(_dims_ok(*s) for s in self.shapes.values())

    class IBuilderConfig:
        _attrs = {"flags", "cleared", "profiles", "calib_profile", "network", "_int8_calibrator"}

        def __init__(self, network):
            object.__setattr__(self, "profiling_verbosity", ProfilingVerbosity.LAYER_NAMES_ONLY)
            object.__setattr__(self, "flags", set())
            object.__setattr__(self, "cleared", set())
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "calib_profile", None)
            object.__setattr__(self, "network", network)
            object.__setattr__(self, "_int8_calibrator", None)

        def __setattr__(self, name, value):  # pybind classes have no __dict__: unknown attributes fail
            if name == "int8_calibrator" and not modern:
                object.__setattr__(self, "_int8_calibrator", value)
                return
            if name == "profiling_verbosity":
                assert value in vars(ProfilingVerbosity).values(), value
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")

        if not modern:
            @property
            def int8_calibrator(self):
                return self._int8_calibrator

            def set_calibration_profile(self, profile):
                if trt.reject_calibration_profile or not profile.valid_for(self.network):
                    return False
                object.__setattr__(self, "calib_profile", profile)
                return True

        def set_flag(self, f):
            assert f in flag_names, f
            self.flags.add(f)

        def clear_flag(self, f):
            assert f in flag_names, f
            self.flags.discard(f)
            self.cleared.add(f)

        def set_memory_pool_limit(self, pool, size):
            assert pool == "WORKSPACE" and size > 0

        def add_optimization_profile(self, p):
            if not p.valid_for(self.network):
                return -1
            self.profiles.append(p)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

    class Builder:
        def __init__(self, logger):
            self._network = None

        def create_network(self, flags=0):
            self._network = Network(flags)
            return self._network

        def create_builder_config(self):
            return IBuilderConfig(self._network)

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def _calibrate(self, network, config, cal):
            name = network.inputs[0].name
            if config.calib_profile is None:
                print("[E] calibration profile is not set for a network with dynamic shapes", file=sys.stderr)
                return None
            (shape, _, _), = config.calib_profile.shapes.values()
            batch = _swallow("get_batch_size", cal.get_batch_size, default=0)
            if batch != shape[0]:
                print(f"[E] calibrator batch {batch} != calibration profile batch {shape[0]}", file=sys.stderr)
                return None
            itemsize = np.dtype(NP[network.spec["dtype"]]).itemsize
            need = int(np.prod(shape)) * itemsize
            cached = _swallow("read_calibration_cache", cal.read_calibration_cache)
            fed = 0
            if cached is None:
                while True:
                    ptrs = _swallow("get_batch", cal.get_batch, [name])
                    if ptrs is None or len(ptrs) == 0:
                        break
                    if len(ptrs) != 1 or not all(isinstance(p, int) for p in ptrs):
                        print("[ERROR] Exception caught in get_batch(): unable to cast to vector<size_t>",
                              file=sys.stderr)
                        break
                    a = MEM.get(ptrs[0])
                    if a is None or len(a.data) < need or a.dtype != np.dtype(NP[network.spec["dtype"]]):
                        raise AssertionError(f"calibration buffer {ptrs[0]:#x}: {None if a is None else len(a.data)} "
                                             f"bytes of {None if a is None else a.dtype}, the binding needs {need} "
                                             f"bytes of {network.spec['dtype']}")
                    fed += 1
                if fed == 0:
                    print("[E] calibration failure: no batch", file=sys.stderr)
                    return None
                _swallow("write_calibration_cache", cal.write_calibration_cache, memoryview(b"FAKE-ENTROPY2-CACHE"))
            return fed

        def build_serialized_network(self, network, config):
            if not config.profiles:
                return None  # dynamic input without a profile
            fed, cal = 0, config._int8_calibrator
            if cal is not None and "INT8" in config.flags:
                fed = self._calibrate(network, config, cal)
                if fed is None:
                    return None
            BUILDS.append({"model": network.spec["kind"], "flags": sorted(config.flags),
                           "cleared": sorted(config.cleared), "network_flags": network.flags, "fed": fed,
                           "profiles": [p.shapes for p in config.profiles]})
            engine = {"spec": network.spec, "profiles": [p.shapes[network.inputs[0].name] for p in config.profiles],
                      "flags": sorted(config.flags), "verbosity": config.profiling_verbosity}
            return json.dumps(engine).encode()

    class IExecutionContext:
        def __init__(self, engine):
            self.engine, self.addr, self.shape = engine, {}, None
            self.active_optimization_profile = 0

        def set_optimization_profile_async(self, profile_index, stream_handle):
            if not 0 <= int(profile_index) < self.engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            self.active_optimization_profile = int(profile_index)
            self.shape = None  # shapes must be set again for the new profile
            return True

        def set_input_shape(self, name, shape):
            if name != self.engine.input:
                return False
            lo, _, hi = self.engine.profiles[self.active_optimization_profile]
            shape = tuple(int(s) for s in shape)
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shape = shape
            return True

        def get_tensor_shape(self, name):
            if self.shape is None:
                return (-1,) * (3 if self.engine.spec["kind"] == "lm" else 2)
            n = self.shape[0]
            return (n, self.shape[1], VOCAB) if self.engine.spec["kind"] == "lm" else (n, CLASSES)

        def set_tensor_address(self, name, memory):
            if name not in (self.engine.input, "logits") or int(memory) % ALIGN:
                return False
            self.addr[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle):
            if self.shape is None or set(self.addr) != {self.engine.input, "logits"}:
                return False
            x = MEM.get(self.addr[self.engine.input])
            need = int(np.prod(self.shape)) * np.dtype(NP[self.engine.spec["dtype"]]).itemsize
            if x is None or len(x.data) < need:
                return False
            out_shape = self.get_tensor_shape("logits")
            logits = np.zeros(out_shape, np.float32)
            if self.engine.spec["kind"] == "cls":
                logits[:, 3] = 1.0 + self.active_optimization_profile  # which profile ran, for the tests
            out = MEM.get(self.addr["logits"])
            if out is None or len(out.data) < logits.nbytes:
                return False
            out.data[:logits.nbytes] = logits.tobytes()
            return True

    class EngineInspector:
        """Layer information as TensorRT's inspector gives it: names only unless built with DETAILED verbosity; a
        spec layer ({"name", "keep": bool}) runs INT8 in an INT8 build (FP16 in an FP16 one) unless it is kept FP32."""

        def __init__(self, engine):
            self.engine = engine

        def get_engine_information(self, fmt):
            assert fmt == LayerInformationFormat.JSON
            layers = self.engine.spec.get("layers", [])
            if self.engine.verbosity != ProfilingVerbosity.DETAILED:
                return json.dumps({"Layers": [x["name"] for x in layers]})
            dtype = "Int8" if "INT8" in self.engine.flags or self.engine.spec.get("qdq") else (
                "FP16" if "FP16" in self.engine.flags else "FP32")
            out = []
            for x in layers:
                d = "FP32" if x.get("keep") else dtype
                fmt_ = {"Int8": "Four wide channel vectorized row major Int8 format",
                        "FP16": "Channel major FP16 format where channel % 8 == 0"}.get(d, "Row major linear FP32")
                out.append({"Name": x["name"] + " + " + x["name"].rsplit("/", 1)[0] + "/Relu",
                            "LayerType": "CaskConvolution", "Inputs": [{"Name": "in", "Format/Datatype": fmt_}],
                            "Metadata": f"[ONNX Layer: {x['name']}]\x1e[ONNX Layer: {x['name'].rsplit('/', 1)[0]}/Relu]"})
            return json.dumps({"Layers": out, "Bindings": [self.engine.input, "logits"]})

    class ICudaEngine:
        def __init__(self, data):
            self.spec = data["spec"]
            self.flags, self.verbosity = data.get("flags", []), data.get("verbosity")
            self.profiles = [tuple(tuple(s) for s in p) for p in data["profiles"]]
            self.input = self.spec["input"]
            self.contexts = []

        num_io_tensors = 2

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

        def get_tensor_name(self, i):
            return [self.input, "logits"][i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == self.input else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DT(self.spec["dtype"] if name == self.input else "FLOAT")

        def get_tensor_profile_shape(self, name, profile_index):
            if name != self.input or not 0 <= profile_index < len(self.profiles):
                raise RuntimeError("get_tensor_profile_shape: invalid name or profile index")
            return [list(s) for s in self.profiles[profile_index]]

        def create_engine_inspector(self):
            return EngineInspector(self)

        def create_execution_context(self):
            ctx = IExecutionContext(self)
            self.contexts.append(ctx)
            return ctx

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return ICudaEngine(json.loads(bytes(data)))

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode, Builder,
                OnnxParser, Runtime, ProfilingVerbosity, LayerInformationFormat):
        setattr(trt, obj.__name__, obj)
    if not modern:
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt
