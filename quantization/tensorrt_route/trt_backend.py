"""Everything that calls TensorRT: build an engine from ONNX (optionally with the entropy
calibrator), deserialize it, and run it with cuda-python device buffers.

Written against the TensorRT 10.x Python API (and the parts 11.x kept): Builder,
create_network(flags), OnnxParser.parse_from_file, IBuilderConfig.set_flag /
set_memory_pool_limit / add_optimization_profile / int8_calibrator /
set_calibration_profile (10.x only), build_serialized_network, Runtime.deserialize_cuda_engine,
num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype, set_input_shape,
set_tensor_address, execute_async_v3. NOT YET EXECUTED ON A GPU (see docs/routes/tensorrt.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .cache import CalibrationCache
from .calib import CalibrationStream
from .gpu import DeviceBuffer, EventTimer, Stream
from .plan import WORKSPACE_BYTES, BuildPlan, Profile, np_dtype

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
    """An IInt8EntropyCalibrator2 feeding `batches` to the GPU, one fixed-size batch per get_batch."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the pybind base must be initialised explicitly
            self._batches = iter(batches)
            self._buffer = DeviceBuffer(batches.batch_nbytes)
            self.fed = 0

        def get_batch_size(self):
            return batches.batch_size

        def get_batch(self, names):
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

        def read_calibration_cache(self):
            return cache.read()  # None -> TensorRT calibrates

        def write_calibration_cache(self, data):
            cache.write(bytes(data))

        def release(self):
            self._buffer.free()

    return EntropyCalibrator()


def _set_profile(trt_profile, profile: Profile) -> None:
    for name, (lo, opt, hi) in profile.shapes.items():
        trt_profile.set_shape(name, lo, opt, hi)


def build_serialized(trt, logger, onnx_path: Path, plan: BuildPlan, profile: Profile, *, calibrator=None,
                     calib_profile: Profile | None = None, workspace: int = WORKSPACE_BYTES) -> bytes:
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
    missing = [n for n in profile.shapes if n not in inputs]
    if missing:
        raise RuntimeError(f"{onnx_path} has inputs {inputs}, expected {sorted(profile.shapes)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    opt = builder.create_optimization_profile()
    _set_profile(opt, profile)
    config.add_optimization_profile(opt)
    if plan.needs_calibrator:
        if calibrator is None or calib_profile is None:
            raise ValueError(f"{plan.method} needs a calibrator and a calibration profile")
        config.int8_calibrator = calibrator
        cp = builder.create_optimization_profile()
        _set_profile(cp, calib_profile)
        config.set_calibration_profile(cp)
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise RuntimeError(f"TensorRT could not build the {plan.method} engine (see the TensorRT log above)")
    return bytes(data)


class EngineRunner:
    """One engine, one execution context, device buffers for its single input and its outputs."""

    def __init__(self, trt, logger, engine_bytes: bytes):
        self.trt = trt
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1:
            raise RuntimeError(f"expected one engine input, got {self.inputs}")
        self.dtypes = {n: np_dtype(getattr(self.engine.get_tensor_dtype(n), "name", str(self.engine.get_tensor_dtype(n))))
                       for n in names}
        self.stream = Stream()
        self.timer = EventTimer(self.stream)
        self.buffers = {n: DeviceBuffer() for n in names}
        self.out_shapes: dict[str, tuple[int, ...]] = {}

    def set_input(self, x: np.ndarray) -> None:
        name = self.inputs[0]
        x = np.ascontiguousarray(x, dtype=self.dtypes[name])
        if not self.context.set_input_shape(name, tuple(x.shape)):
            raise RuntimeError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile")
        buf = self.buffers[name]
        buf.ensure(x.nbytes)
        self.stream.h2d(buf, x)
        self.stream.synchronize()
        self.context.set_tensor_address(name, int(buf))
        for o in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(o))
            self.out_shapes[o] = shape
            self.buffers[o].ensure(int(np.prod(shape)) * self.dtypes[o].itemsize)
            self.context.set_tensor_address(o, int(self.buffers[o]))

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

    def time_once(self) -> float:
        """Device milliseconds of one execute_async_v3 (CUDA events around it on the same stream)."""
        return self.timer.time(self.enqueue)

    def close(self) -> None:
        self.stream.synchronize()
        for b in self.buffers.values():
            b.free()
        self.timer.destroy()
        self.stream.destroy()
        self.context = None
        self.engine = None
