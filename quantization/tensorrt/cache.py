"""Calibration cache and engine cache with JSON headers, checked before TensorRT reads them.

Both live under `ModelSource.cache_dir / "tensorrt"`.

Calibration cache (`int8-entropy.calib` + `int8-entropy.calib.json`): the bytes TensorRT's
entropy calibrator writes, valid only for the ONNX model, calibration set, calibration batch
(and padding policy) and TensorRT version recorded in its header. A header that differs in
the model, the data or the batch means the cache is stale: the calibrator ignores it,
calibrates again and rewrites both files. The same inputs with another TensorRT version is
an error (rerun with --rebuild), so a cache from another installation is never used silently.

Engines (`<method>-<key>.engine` + `.engine.json`): the key hashes every build input (ONNX
sha, build plan, profile, calibration key); the sidecar records the TensorRT version and
the GPU (name, compute capability) the plan was built for. Loading an engine built by
another TensorRT version or for another GPU raises a one-line SuiteError before the bytes
reach Runtime.deserialize_cuda_engine.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.atomic import atomic_write_bytes, atomic_write_json, config_key
from utils.errors import SuiteError

log = logging.getLogger(__name__)
REBUILD_HINT = "rerun with --rebuild to rebuild it for this machine (or delete it)"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def __str__(self) -> str:
        return f"{self.name} ({self.sm})"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------ calibration cache

@dataclass(frozen=True)
class CalibKey:
    onnx_sha: str
    calib_sha: str
    batch_size: int
    trt_version: str
    n_samples: int = 0
    partial: str = "pad"
    algorithm: str = "entropy2"

    def inputs(self) -> dict:
        """What the calibration depends on apart from the TensorRT version."""
        d = asdict(self)
        d.pop("trt_version")
        return d

    @property
    def key(self) -> str:
        return config_key(asdict(self), 16)


class CalibrationCache:
    """read() is what IInt8EntropyCalibrator2.read_calibration_cache returns; write() stores
    what write_calibration_cache receives."""

    def __init__(self, directory: Path, key: CalibKey, *, rebuild: bool = False, name: str = "int8-entropy.calib"):
        self.path = Path(directory) / name
        self.header_path = self.path.with_name(self.path.name + ".json")
        self.key, self.rebuild = key, rebuild
        self.hit: bool | None = None  # set by read(): True when TensorRT got the cached scales

    def state(self) -> str:
        """'hit', 'absent', 'stale' (inputs changed, will be rewritten) or 'rebuild'.
        Raises SuiteError for a cache of the same inputs written by another TensorRT version."""
        if self.rebuild:
            return "rebuild"
        if not self.path.exists():
            return "absent"
        header = _read_json(self.header_path)
        if not header:
            log.warning("calibration cache %s has no readable header: calibrating again", self.path)
            return "stale"
        if header.get("inputs") != self.key.inputs():
            return "stale"
        if header.get("trt_version") != self.key.trt_version:
            raise SuiteError(
                f"calibration cache {self.path} was written by TensorRT {header.get('trt_version')}, this is "
                f"TensorRT {self.key.trt_version}: {REBUILD_HINT}")
        return "hit"

    def read(self) -> bytes | None:
        st = self.state()
        self.hit = st == "hit"
        if not self.hit:
            if st == "stale":
                log.info("calibration cache %s is for another model/calibration set/batch: calibrating again", self.path)
            return None
        return self.path.read_bytes()

    def write(self, data: bytes) -> None:
        atomic_write_bytes(self.path, bytes(data))
        atomic_write_json(self.header_path, {"key": self.key.key, "inputs": self.key.inputs(),
                                             "trt_version": self.key.trt_version,
                                             "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


# ------------------------------------------------------------------------------ engine cache

class EngineCache:
    def __init__(self, directory: Path, method: str, key: str):
        self.path = Path(directory) / f"{method}-{key}.engine"
        self.sidecar = self.path.with_name(self.path.name + ".json")
        self.key = key

    def check(self, trt_version: str, device: DeviceInfo) -> bool:
        """True: a usable engine is cached. False: none (or no sidecar) -> build.
        SuiteError: the cached engine is for another TensorRT version or GPU."""
        if not self.path.exists():
            return False
        meta = _read_json(self.sidecar)
        if not meta:
            log.warning("engine %s has no readable sidecar: building it again", self.path)
            return False
        if meta.get("key") != self.key:
            return False
        theirs = (meta.get("trt_version"), meta.get("gpu_name"), meta.get("compute_capability"))
        ours = (trt_version, device.name, device.compute_capability)
        if theirs != ours:
            raise SuiteError(
                f"cached engine built with TensorRT {theirs[0]} for {theirs[1]} (sm_{str(theirs[2]).replace('.', '')}); "
                f"this machine has TensorRT {ours[0]} and {device}: {REBUILD_HINT} (engine {self.path.name})")
        return True

    def load(self, trt_version: str, device: DeviceInfo) -> bytes:
        if not self.check(trt_version, device):
            raise SuiteError(f"no cached engine at {self.path}")
        return self.path.read_bytes()

    def save(self, data: bytes, trt_version: str, device: DeviceInfo, **meta) -> Path:
        atomic_write_bytes(self.path, bytes(data))
        atomic_write_json(self.sidecar, {"key": self.key, "trt_version": trt_version, "gpu_name": device.name,
                                         "compute_capability": device.compute_capability,
                                         "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta})
        return self.path

    def meta(self) -> dict:
        return _read_json(self.sidecar) or {}
