"""Everything that calls TensorRT: build an engine from ONNX (optionally with the entropy
calibrator), deserialize it, and run it with cuda-python device buffers.

Written against the TensorRT 10.x Python API (and the parts 11.x kept): Builder,
create_network(flags), OnnxParser.parse_from_file, IBuilderConfig.set_flag /
set_memory_pool_limit / add_optimization_profile / int8_calibrator /
set_calibration_profile (10.x only), build_serialized_network, Runtime.deserialize_cuda_engine,
num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype, set_input_shape,
set_tensor_address, execute_async_v3. NOT YET EXECUTED ON A GPU (see docs/routes/tensorrt.md).

Every status TensorRT returns is checked: add_optimization_profile (index, -1 when invalid),
set_calibration_profile / set_input_shape / set_tensor_address / execute_async_v3 (bool);
set_optimization_profile_async raises by itself. The calibrator records the exception TensorRT's
wrapper would swallow, and build_serialized checks the calibration (calib.check_calibration).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .cache import CalibrationCache
from .calib import CalibrationError, CalibrationStream, check_calibration
from .gpu import DeviceBuffer, EventTimer, Stream, e2e_timer
from .plan import WORKSPACE_BYTES, BuildPlan, Profile, np_dtype, select_profile

log = logging.getLogger(__name__)


def import_tensorrt():
    """The tensorrt module, or None when it is not installed."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        return None
    return trt


def make_logger(trt, verbose: bool = False):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def make_entropy_calibrator(trt, batches: CalibrationStream, cache: CalibrationCache, stream: Stream):
    """An IInt8EntropyCalibrator2 feeding `batches` to the GPU, one fixed-size batch per get_batch.

    TensorRT's pybind wrapper catches whatever a calibrator method raises, prints it and carries on
    (get_batch: calibration ends; read_calibration_cache: no cache). So each method records the first
    exception in `error` (then re-raises it for TensorRT's log); `fed` counts the batches handed over,
    `expected` is the stream's batch count and `cache_served` says TensorRT got cached scales.
    `check_calibration(calibrator)` turns all that into an error (build_serialized calls it)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the pybind base must be initialised explicitly
            self._batches = iter(batches)
            self._buffer = DeviceBuffer(batches.batch_nbytes)
            self.fed, self.expected = 0, batches.num_batches
            self.error: BaseException | None = None
            self.cache_served = False

        def _record(self, exc: BaseException) -> None:
            if self.error is None:
                self.error = exc
            log.error("INT8 calibrator: %s: %s", type(exc).__name__, exc)

        def get_batch_size(self):
            return batches.batch_size

        def get_batch(self, names):
            try:
                if len(names) != 1:
                    raise RuntimeError(f"the calibrator feeds one input, the network has {list(names)}")
                try:
                    host = next(self._batches)
                except StopIteration:
                    return None  # calibration done
                stream.h2d(self._buffer, host)
                stream.synchronize()  # `host` must outlive the copy
                self.fed += 1
                return [int(self._buffer)]
            except BaseException as exc:
                self._record(exc)
                raise

        def read_calibration_cache(self):
            try:
                data = cache.read()  # None -> TensorRT calibrates
            except BaseException as exc:
                self._record(exc)
                raise
            self.cache_served = data is not None
            return data

        def write_calibration_cache(self, data):
            if self.error is not None or (not self.cache_served and self.fed != self.expected):
                # a partial calibration must never become a valid cache that a later run would build from
                log.warning("not writing the calibration cache: calibration incomplete (%d of %d batches fed%s)",
                            self.fed, self.expected, f", {self.error!r}" if self.error is not None else "")
                return
            try:
                cache.write(bytes(data))
            except BaseException as exc:
                self._record(exc)
                raise

        def release(self):
            self._buffer.free()

    return EntropyCalibrator()


def _set_profile(trt_profile, profile: Profile) -> None:
    for name, (lo, opt, hi) in profile.shapes.items():
        trt_profile.set_shape(name, lo, opt, hi)


def _profiles(profile) -> list[Profile]:
    profiles = [profile] if isinstance(profile, Profile) else list(profile)
    if not profiles:
        raise ValueError("need at least one optimization profile")
    return profiles


def build_serialized(trt, logger, onnx_path: Path, plan: BuildPlan, profiles, *, calibrator=None,
                     calib_profile: Profile | None = None, workspace: int = WORKSPACE_BYTES) -> bytes:
    """Serialized engine of `onnx_path` per `plan`, with every optimization profile in `profiles` (a list
    from plan.image_profiles / text_profiles, or one Profile), added in order (their engine indices).
    With a calibrator, the calibration is checked (calib.check_calibration) before the bytes are returned."""
    profiles = _profiles(profiles)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors or 'no parser message'}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    for profile in profiles:
        missing = [n for n in profile.shapes if n not in inputs]
        if missing:
            raise RuntimeError(f"{onnx_path} has inputs {inputs}, expected {sorted(profile.shapes)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    detailed = getattr(getattr(trt, "ProfilingVerbosity", None), "DETAILED", None)
    if detailed is not None:  # the engine inspector then reports each layer's formats (a row's coverage)
        config.profiling_verbosity = detailed
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    for i, profile in enumerate(profiles):
        opt = builder.create_optimization_profile()
        _set_profile(opt, profile)
        index = config.add_optimization_profile(opt)
        if index is None or int(index) != i:
            raise RuntimeError(f"TensorRT rejected optimization profile #{i} {profile.to_dict()} "
                               f"(add_optimization_profile returned {index})")
    if plan.needs_calibrator:
        if calibrator is None or calib_profile is None:
            raise ValueError(f"{plan.method} needs a calibrator and a calibration profile")
        config.int8_calibrator = calibrator
        cp = builder.create_optimization_profile()
        _set_profile(cp, calib_profile)
        if not config.set_calibration_profile(cp):
            raise RuntimeError(f"TensorRT rejected the calibration profile {calib_profile.to_dict()} "
                               "(set_calibration_profile returned False)")
    data = builder.build_serialized_network(network, config)
    if calibrator is not None and plan.needs_calibrator:
        check_calibration(calibrator)  # before "could not build": the calibrator's own error is the cause
    if data is None:
        raise RuntimeError(f"TensorRT could not build the {plan.method} engine (see the TensorRT log above)")
    return bytes(data)


# tensor formats of a layer whose arithmetic runs in a reduced type ("Four wide channel vectorized row major Int8
# format", "Channel major FP16 format where channel % 8 == 0", ...)
REDUCED_FORMATS = ("Int8", "FP16", "Half", "FP8", "BF16", "Int4")


def engine_layers(trt, engine) -> list[dict] | None:
    """The engine inspector's per-layer records (LayerInformationFormat.JSON), or None when this binding has no
    inspector or the engine was built without detailed profiling verbosity (layer names only)."""
    import json

    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # noqa: BLE001 - an older binding, a serialized engine without layer information
        return None
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not layers or not all(isinstance(x, dict) for x in layers):
        return None
    return layers


def reduced_layer_names(layers: list[dict]) -> list[str]:
    """The ONNX node names held by the engine layers whose first input runs in a reduced type: from each layer's
    `Metadata` ('[ONNX Layer: /conv1/Conv]' per fused node), else its name ('/a/Conv + /a/Relu')."""
    import re

    out: list[str] = []
    for layer in layers:
        ins = layer.get("Inputs") or []
        fmt = str(ins[0].get("Format/Datatype", "")) if ins and isinstance(ins[0], dict) else ""
        if not any(k in fmt for k in REDUCED_FORMATS):
            continue
        names = re.findall(r"\[ONNX Layer: ([^\]]+)\]", str(layer.get("Metadata") or ""))
        out += names or [n.strip() for n in str(layer.get("Name", "")).split(" + ") if n.strip()]
    return out


class EngineRunner:
    """One engine, one execution context, device buffers for its single input and its outputs.

    With several optimization profiles, `set_input` selects the profile for the input's shape
    (plan.select_profile over the engine's own profile shapes: the one tuned for exactly that shape
    first) with set_optimization_profile_async before set_input_shape."""

    def __init__(self, trt, logger, engine_bytes: bytes):
        self.trt = trt
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1:
            raise RuntimeError(f"expected one engine input, got {self.inputs}")
        self.dtypes = {n: np_dtype(getattr(self.engine.get_tensor_dtype(n), "name", str(self.engine.get_tensor_dtype(n))))
                       for n in names}
        self.profiles = self._engine_profiles()
        self.profile_index = 0  # a new context starts on profile 0
        self.stream = Stream()
        self.timer = EventTimer(self.stream)
        self.buffers = {n: DeviceBuffer() for n in names}
        self.out_shapes: dict[str, tuple[int, ...]] = {}
        self._host_in: np.ndarray | None = None

    def reduced_layer_names(self) -> list[str] | None:
        """ONNX node names of the layers this engine runs in a reduced type (engine inspector), or None."""
        layers = engine_layers(self.trt, self.engine)
        return None if layers is None else reduced_layer_names(layers)

    def _engine_profiles(self) -> list[Profile]:
        name = self.inputs[0]
        n = int(getattr(self.engine, "num_optimization_profiles", 1))
        out = []
        for i in range(n):
            lo, opt, hi = (tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(name, i))
            out.append(Profile({name: (lo, opt, hi)}))
        return out

    def select_profile(self, shape: tuple[int, ...]) -> int:
        """Make the profile for `shape` the context's active one (before set_input_shape); its index."""
        try:
            index = select_profile(self.profiles, self.inputs[0], tuple(shape))
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        if index != self.profile_index:
            # raises RuntimeError itself when TensorRT refuses (the binding asserts the bool)
            self.context.set_optimization_profile_async(index, self.stream.handle)
            self.profile_index = index
        return index

    def _set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, int(ptr)):
            raise RuntimeError(f"TensorRT rejected the device address {int(ptr):#x} for tensor {name!r} "
                               "(set_tensor_address returned False)")

    def set_input(self, x: np.ndarray) -> None:
        name = self.inputs[0]
        x = np.ascontiguousarray(x, dtype=self.dtypes[name])
        self.select_profile(tuple(x.shape))
        if not self.context.set_input_shape(name, tuple(x.shape)):
            raise RuntimeError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile "
                               f"#{self.profile_index} {self.profiles[self.profile_index].shapes[name]}")
        buf = self.buffers[name]
        buf.ensure(x.nbytes)
        self.stream.h2d(buf, x)
        self.stream.synchronize()
        self._host_in = x
        self._set_address(name, int(buf))
        for o in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(o))
            self.out_shapes[o] = shape
            self.buffers[o].ensure(int(np.prod(shape)) * self.dtypes[o].itemsize)
            self._set_address(o, int(self.buffers[o]))

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("execute_async_v3 failed")

    def fetch(self, name: str | None = None) -> np.ndarray:
        name = name or self.outputs[0]
        out = np.empty(self.out_shapes[name], dtype=self.dtypes[name])
        self.stream.d2h(out, self.buffers[name])
        self.stream.synchronize()
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.set_input(x)
        self.enqueue()
        return self.fetch().astype(np.float32, copy=False)

    # -------------------------------------------------------------- timing (harness plug-ins)

    def gpu_timer(self, repeat: int = 8, lead: int = 1):
        """`timer(fn) -> GPU ms per run` for the harness, used with fn = self.enqueue after set_input(x):
        CUDA events around `repeat` back-to-back enqueues after `lead` untimed ones (latency kind
        gpu.GPU_COMPUTE_KIND)."""
        return self.timer.timer(repeat=repeat, lead=lead)

    def e2e_call(self) -> None:
        """One end-to-end run of the input last given to set_input: H2D copy, execute, D2H copy of every
        output, all enqueued on the stream (time it with e2e_timer())."""
        if self._host_in is None:
            raise RuntimeError("call set_input(x) before e2e_call")
        self.stream.h2d(self.buffers[self.inputs[0]], self._host_in)
        self.enqueue()
        outs = getattr(self, "_host_out", None)
        if outs is None or any(outs[o].shape != self.out_shapes[o] for o in self.outputs):
            outs = self._host_out = {o: np.empty(self.out_shapes[o], dtype=self.dtypes[o]) for o in self.outputs}
        for o in self.outputs:
            self.stream.d2h(outs[o], self.buffers[o])

    def e2e_timer(self):
        """`timer(fn) -> host ms per call until the stream is idle`, for fn = self.e2e_call (latency kind
        gpu.E2E_KIND, which includes the copies: never compare it with the GPU-compute kind)."""
        return e2e_timer(self.stream)

    def close(self) -> None:
        self.stream.synchronize()
        for b in self.buffers.values():
            b.free()
        self.timer.destroy()
        self.stream.destroy()
        self.context = None
        self.engine = None


__all__ = ["CalibrationError", "EngineRunner", "build_serialized", "check_calibration", "import_tensorrt",
           "make_entropy_calibrator", "make_logger"]
