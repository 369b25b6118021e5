"""The calibration batch stream the entropy calibrator feeds to TensorRT (NumPy only).

TensorRT's implicit calibration asks for batches of one fixed size (get_batch_size), so
the shared calibration subset is cut into fixed-size batches in its original order.
A last partial batch is, by default, PADDED by wrapping around to the first samples of
the set: every calibration sample is seen at least once (the same samples every route
uses) and `padded` samples are seen twice; `partial="drop"` drops it instead (those
samples are then not used). A batch size larger than the set is lowered to the set size,
so a small set is one exact batch, never padded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

PARTIAL_POLICIES = ("pad", "drop")


@dataclass(frozen=True)
class CalibrationStream:
    samples: np.ndarray  # (n, ...) float32 images or int64 token ids
    requested_batch: int
    partial: str = "pad"
    dtype: str | None = None  # default: float32 for floating input, int64 for integer input

    def __post_init__(self) -> None:
        if self.partial not in PARTIAL_POLICIES:
            raise ValueError(f"partial must be one of {PARTIAL_POLICIES}, got {self.partial!r}")
        if self.requested_batch < 1:
            raise ValueError("calibration batch size must be >= 1")
        if len(self.samples) < 1:
            raise ValueError("empty calibration set")

    @property
    def n(self) -> int:
        return int(len(self.samples))

    @property
    def batch_size(self) -> int:
        """The fixed batch TensorRT sees (get_batch_size)."""
        return min(self.requested_batch, self.n)

    @property
    def num_batches(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and self.partial == "pad" else 0)

    @property
    def padded(self) -> int:
        """Samples repeated to fill the last batch (0 with 'drop' or an exact split)."""
        rest = self.n % self.batch_size
        return (self.batch_size - rest) if rest and self.partial == "pad" else 0

    @property
    def dropped(self) -> int:
        rest = self.n % self.batch_size
        return rest if self.partial == "drop" else 0

    @property
    def np_dtype(self) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.int64) if np.issubdtype(np.asarray(self.samples[:1]).dtype, np.integer) else np.dtype(np.float32)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return (self.batch_size, *np.asarray(self.samples).shape[1:])

    @property
    def batch_nbytes(self) -> int:
        return int(np.prod(self.batch_shape)) * self.np_dtype.itemsize

    def indices(self) -> list[np.ndarray]:
        """Sample indices of each batch, in order (the last one wraps around when padded)."""
        b, out = self.batch_size, []
        for i in range(self.num_batches):
            idx = np.arange(i * b, (i + 1) * b)
            out.append(idx % self.n)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        x = np.asarray(self.samples)
        for idx in self.indices():
            yield np.ascontiguousarray(x[idx], dtype=self.np_dtype)

    def __len__(self) -> int:
        return self.num_batches

    def describe(self) -> dict:
        return {"calib_batch": self.batch_size, "calib_batches": self.num_batches, "calib_padded": self.padded,
                "calib_dropped": self.dropped, "calib_partial": self.partial}


# ------------------------------------------------------------------------------ checks after a build

class CalibrationError(RuntimeError):
    """Implicit INT8 calibration did not see the whole calibration set (or a calibrator method raised)."""


def check_calibration(calibrator, stream: CalibrationStream | None = None) -> None:
    """Raise CalibrationError unless the calibrator fed the whole stream or TensorRT used the cache.

    TensorRT's Python wrapper catches an exception raised in get_batch / read_calibration_cache /
    write_calibration_cache, prints it and goes on (get_batch: calibration simply ends early), so the
    build can "succeed" on part of the data. The calibrator (trt_backend.make_entropy_calibrator)
    records the first exception it raised (`error`), how many batches it fed (`fed`), and whether
    read_calibration_cache handed TensorRT cached scales (`cache_served`).
    `stream`: the batches that should have been fed (default: `calibrator.expected`).
    """
    err = getattr(calibrator, "error", None)
    if err is not None:
        raise CalibrationError(f"the INT8 calibrator raised {type(err).__name__}: {err} (TensorRT only printed it; "
                               "the engine was calibrated on partial data or none)") from err
    if getattr(calibrator, "cache_served", False):
        return  # TensorRT took the scales from the calibration cache: no batch is fed
    expected = stream.num_batches if stream is not None else getattr(calibrator, "expected", None)
    if expected is None:
        raise ValueError("check_calibration needs the calibration stream (or calibrator.expected)")
    fed = int(getattr(calibrator, "fed", 0))
    if fed != int(expected):
        raise CalibrationError(f"TensorRT calibrated on {fed} of {expected} calibration batches (no calibrator error "
                               "recorded; see the TensorRT log)")
