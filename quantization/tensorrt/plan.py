"""Pure decisions of the TensorRT route (no tensorrt, no CUDA): what to build and with which flags.

Everything here is plain Python so it is tested on machines without TensorRT or a GPU:
the TensorRT version policy (10.x vs 11.x), the per-variant build plan, the optimization
profiles, the engine-cache key and the NumPy dtype of a TensorRT tensor.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from utils.atomic import config_key

INSTALL_HINT = ("get it from NVIDIA's package index (pip install --extra-index-url https://pypi.nvidia.com "
                "tensorrt-cu12) or an NGC container")
NOT_INSTALLED = f"TensorRT is not installed: {INSTALL_HINT}"
NO_CUDA = "no CUDA device"
METHODS = ("fp32", "fp16", "int8-entropy", "int8-qdq")
NO_TF32 = ("TF32",)  # cleared on every engine's builder config
WORKSPACE_BYTES = 4 << 30  # builder scratch memory limit (IBuilderConfig memory pool WORKSPACE)


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int = 0
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
        if not m:
            raise ValueError(f"not a TensorRT version: {text!r}")
        return cls(*(int(g) if g else 0 for g in m.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


@dataclass(frozen=True)
class BuildPlan:
    """How one variant is built with one TensorRT version.

    network_flags: NetworkDefinitionCreationFlag names passed to Builder.create_network.
    builder_flags: BuilderFlag names set on the IBuilderConfig; clear_flags: names cleared.
    onnx: 'fp32' (manifest["onnx"]) or 'qdq' (the ModelOpt-ONNX route's Q/DQ model).
    """

    method: str
    precision: str
    trt_version: str
    available: bool
    reason: str = ""
    onnx: str = "fp32"
    strongly_typed: bool = False
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    needs_calibrator: bool = False
    compute_precision: str = ""

    def key_fields(self) -> dict:
        """The parts of the plan that change the engine (for its cache key)."""
        d = asdict(self)
        for k in ("reason", "available", "trt_version"):
            d.pop(k)
        return d


PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8-entropy": "int8", "int8-qdq": "int8"}


def build_plan(method: str, trt_version: str | TrtVersion) -> BuildPlan:
    """The flags for `method` under TensorRT `trt_version`, or why it cannot be built there.

    Every plan clears BuilderFlag.TF32: FP32 layers run in FP32 in every engine, including the FP32
    fallback layers of the fp16 and int8 engines (TF32 is on by default in TensorRT).
    10.x: fp32, fp16 (BuilderFlag.FP16, weakly typed),
    int8-entropy (BuilderFlag.INT8 + IInt8EntropyCalibrator2, implicit quantization),
    int8-qdq (strongly typed network from the explicit Q/DQ ONNX).
    11.x: networks are always strongly typed and the precision flags and calibrators are
    gone, so only fp32 and int8-qdq can be built from the ONNX files this suite has.
    """
    if method not in PRECISION:
        raise ValueError(f"unknown TensorRT method {method!r}; valid: {', '.join(METHODS)}")
    v = trt_version if isinstance(trt_version, TrtVersion) else TrtVersion.parse(trt_version)
    base = dict(method=method, precision=PRECISION[method], trt_version=str(v), clear_flags=NO_TF32)
    if v.major < 10:
        return BuildPlan(**base, available=False,
                         reason=f"TensorRT {v} is too old for this route (needs 10.x, or 11.x for fp32/int8-qdq)")
    modern = v.major >= 11
    if method == "fp32":
        return BuildPlan(**base, available=True, strongly_typed=modern, compute_precision="fp32")
    if method == "fp16":
        if modern:
            return BuildPlan(**base, available=False, reason=(
                f"TensorRT {v} removed BuilderFlag.FP16 (strong typing only): an FP16 engine needs an FP16 ONNX "
                "(ModelOpt AutoCast); use tensorrt-cu12<11 for this variant"))
        return BuildPlan(**base, available=True, builder_flags=("FP16",), compute_precision="fp16")
    if method == "int8-entropy":
        if modern:
            return BuildPlan(**base, available=False, reason=(
                f"TensorRT {v} removed implicit INT8 calibration (IInt8EntropyCalibrator2); install "
                "tensorrt-cu12>=10.16,<11 for int8-entropy, or use int8-qdq"))
        return BuildPlan(**base, available=True, builder_flags=("INT8",), needs_calibrator=True,
                         compute_precision="int8")
    # int8-qdq: explicit quantization, strongly typed (flag needed on 10.x, always on and ignored on 11.x)
    return BuildPlan(**base, available=True, onnx="qdq", strongly_typed=True,
                     network_flags=() if modern else ("STRONGLY_TYPED",), compute_precision="int8")


# ------------------------------------------------------------------------------ profiles

@dataclass(frozen=True)
class Profile:
    """One optimization profile: input name -> (min, opt, max) shapes."""

    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: [list(s) for s in v] for k, v in sorted(self.shapes.items())}

    def covers(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.shapes[name]
        return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))


def image_profile(batches, *, eval_resolution: int, latency_resolution: int = 224, eval_batch: int = 32,
                  calib_batch: int = 32, name: str = "input") -> Profile:
    """ResNet50 `input` [N,3,H,W]: N from 1 to the largest batch used, H=W spanning both resolutions.
    One profile for everything (tuned for the largest timed batch); `image_profiles` is what engines use."""
    lo_r, hi_r = min(eval_resolution, latency_resolution), max(eval_resolution, latency_resolution)
    max_b = max([*batches, eval_batch, calib_batch])
    return Profile({name: ((1, 3, lo_r, lo_r), (max(batches), 3, latency_resolution, latency_resolution),
                           (max_b, 3, hi_r, hi_r))})


def text_profile(batches, *, seq_len: int, calib_batch: int = 8, name: str = "input_ids") -> Profile:
    """GPT-2 `input_ids` [N,L] with a fixed sequence length L (shorter windows are right-padded)."""
    max_b = max([*batches, 1, calib_batch])
    return Profile({name: ((1, seq_len), (max(batches), seq_len), (max_b, seq_len))})


def _fixed(name: str, shape: tuple[int, ...]) -> Profile:
    s = tuple(int(x) for x in shape)
    return Profile({name: (s, s, s)})


def image_profiles(batches, *, eval_resolution: int, latency_resolution: int = 224, eval_batch: int = 32,
                   calib_batch: int | None = None, name: str = "input") -> list[Profile]:
    """The optimization profiles of a ResNet50 engine, in this order:

    - one fixed-shape profile per timed batch b (min = opt = max = (b, 3, R, R), R = latency resolution),
      so the batch-1 latency runs on kernels TensorRT chose for batch 1, not for the largest batch;
    - one dynamic profile for the accuracy pass at the evaluation resolution: N from 1 (the last partial
      batch) to max(eval_batch, calib_batch), opt = eval_batch.
    `select_profile` picks the profile for an input shape (exact fixed shape first).
    """
    bs = sorted({int(b) for b in batches})
    if not bs or bs[0] < 1:
        raise ValueError("need at least one timed batch >= 1")
    r, e = int(latency_resolution), int(eval_resolution)
    out = [_fixed(name, (b, 3, r, r)) for b in bs]
    hi = max(int(eval_batch), int(calib_batch or 1))
    out.append(Profile({name: ((1, 3, e, e), (int(eval_batch), 3, e, e), (hi, 3, e, e))}))
    return out


def text_profiles(batches, *, seq_len: int, calib_batch: int | None = None, eval_batch: int = 1,
                  name: str = "input_ids") -> list[Profile]:
    """The optimization profiles of a GPT-2 engine ([N, L], L fixed): one fixed-shape profile per timed
    batch (opt = that batch), then one dynamic profile N in 1..max(eval_batch, calib_batch, timed batches),
    opt = eval_batch (the strided-perplexity pass runs (1, L) windows)."""
    bs = sorted({int(b) for b in batches})
    if not bs or bs[0] < 1:
        raise ValueError("need at least one timed batch >= 1")
    L = int(seq_len)
    out = [_fixed(name, (b, L)) for b in bs]
    hi = max(int(eval_batch), int(calib_batch or 1), bs[-1])
    out.append(Profile({name: ((1, L), (int(eval_batch), L), (hi, L))}))
    return out


def select_profile(profiles, name: str, shape: tuple[int, ...]) -> int:
    """Index of the profile to run `shape` with: a profile tuned for exactly this shape (opt == shape)
    first, else the covering profile with the narrowest range. ValueError when none covers it."""
    shape = tuple(int(s) for s in shape)
    best, best_width = None, None
    for i, p in enumerate(profiles):
        if name not in p.shapes or not p.covers(name, shape):
            continue
        lo, opt, hi = p.shapes[name]
        if tuple(opt) == shape:
            return i
        width = sum(b - a for a, b in zip(lo, hi))
        if best is None or width < best_width:
            best, best_width = i, width
    if best is None:
        ranges = "; ".join(f"#{i}: {p.shapes.get(name, ('?',) * 3)[0]}..{p.shapes.get(name, ('?',) * 3)[2]}"
                           for i, p in enumerate(profiles))
        raise ValueError(f"input shape {shape} of {name!r} is outside every optimization profile ({ranges})")
    return best


def profiles_key(profile) -> object:
    """What the engine key records of one Profile (its dict) or a list of them (the list of dicts, in order)."""
    if isinstance(profile, Profile):
        return profile.to_dict()
    return [p.to_dict() for p in profile]


def calibration_profile(shape: tuple[int, ...], name: str) -> Profile:
    """The fixed-shape profile implicit calibration runs with (IBuilderConfig.set_calibration_profile)."""
    s = tuple(int(x) for x in shape)
    return Profile({name: (s, s, s)})


def pad_right(chunk: np.ndarray, length: int, pad_id: int = 0) -> np.ndarray:
    """(1, l) ids -> (1, length) ids, padded on the right. A causal LM's logits at positions < l
    do not depend on later tokens, so the first l positions of the padded run are exact."""
    chunk = np.asarray(chunk, dtype=np.int64)
    if chunk.ndim != 2:
        raise ValueError("expected (batch, length) ids")
    n = chunk.shape[1]
    if n > length:
        raise ValueError(f"window of {n} tokens is longer than the engine's fixed length {length}")
    if n == length:
        return np.ascontiguousarray(chunk)
    out = np.full((chunk.shape[0], length), pad_id, dtype=np.int64)
    out[:, :n] = chunk
    return out


# ------------------------------------------------------------------------------ keys

def engine_key(*, onnx_sha: str, plan: BuildPlan, profile, calib: dict | None = None,
               workspace: int = WORKSPACE_BYTES) -> str:
    """Cache key of an engine: everything that goes into the build except the TensorRT version and
    the GPU, which the sidecar records and checks (a mismatch is an error, not a silent rebuild).
    `profile`: one Profile or the list of every profile the engine is built with (all of them, in order)."""
    return config_key({"onnx_sha": onnx_sha, "plan": plan.key_fields(), "profile": profiles_key(profile),
                       "calib": calib or None, "workspace": workspace}, 16)


_NP_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
              "UINT8": np.uint8, "BOOL": np.bool_}


def np_dtype(trt_dtype_name: str) -> np.dtype:
    """NumPy dtype of a TensorRT DataType given by name (DataType.FLOAT -> 'FLOAT')."""
    name = str(trt_dtype_name).rsplit(".", 1)[-1].upper()
    if name not in _NP_DTYPES:
        raise ValueError(f"TensorRT tensor type {name} has no NumPy equivalent here")
    return np.dtype(_NP_DTYPES[name])


def trt_unavailable(trt_version: str | None, cuda_error: str | None) -> str | None:
    """Why nothing can run here (None when TensorRT and a CUDA device are present)."""
    if trt_version is None:
        return NOT_INSTALLED
    if cuda_error is not None:
        return f"{NO_CUDA} ({cuda_error})" if cuda_error else NO_CUDA
    return None
