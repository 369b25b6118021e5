"""What a toolchain declares for the device ceilings, and the catalogue of everything measurable here.

A toolchain whose libraries have their own matmul (or memory, or GPU) kernels declares `Toolchain.ceilings`: the
"module:attribute" of a `Provider` in its route folder (quantization/<toolchain>/ceilings.py). This package resolves
it lazily (utils.registry.resolve) and imports no toolchain library itself: a provider's factories import theirs when
called, and raise `Unavailable` (recorded, never fatal) where the library is missing. The suite's own NumPy kernels
(utils.ceilings.matmul, .memory) are measured everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

Factory = Callable[[int, int], Callable[[], object]]


class Unavailable(Exception):
    """A library cannot run here (not importable, op missing, no such device)."""


@dataclass(frozen=True)
class Library:
    """An n x n x n matmul of one library on the CPU: factory(n, threads) -> a zero-argument call (operands made
    once); Unavailable where the library cannot run here."""

    factory: Factory
    precision: str  # "fp32" | "int8": the ceiling it competes for
    method: str  # what it runs, in words (device.json's <precision>_method when it wins)


@dataclass(frozen=True)
class MemoryKernel:
    """One STREAM-like pass over the shared float32 arrays (utils.ceilings.memory.memory_arrays(n)):
    factory(n elements, threads) -> a zero-argument call."""

    factory: Factory
    arrays: int  # arrays a pass streams once each (the bytes counted)
    method: str


@dataclass(frozen=True)
class Gpu:
    """The GPU's own matmul ceilings through one library (utils.ceilings.gpu.measure_cuda drives them)."""

    info: Callable[[], dict]  # device 0: gpu, capability, cc (tuple), library ("name version"), ...; Unavailable if none
    matmul: Callable[..., Callable[[], object]]  # (precision, n, device, cc) -> a zero-argument call on the device
    timer: Callable[[Callable[[], object], int], float]  # (fn, calls) -> the device's seconds for the calls
    release: Callable[[], None]  # frees what one measured size held
    methods: dict[str, str] = field(default_factory=dict)  # precision -> what it runs, in words


@dataclass(frozen=True)
class Provider:
    """A toolchain's ceilings (Toolchain.ceilings): CPU matmul libraries and memory kernels by name, and the GPU's."""

    libraries: dict[str, Library] = field(default_factory=dict)
    memory: dict[str, MemoryKernel] = field(default_factory=dict)
    gpu: Gpu | None = None


def declared(toolchains: Iterable[str] | None = None) -> dict[str, Provider]:
    """toolchain -> its Provider, for the named toolchains (default: every one declaring ceilings), in run order."""
    from utils.registry import ORDER, TOOLCHAINS, resolve

    names = ORDER if toolchains is None else tuple(toolchains)
    return {t: resolve(TOOLCHAINS[t].ceilings) for t in names if TOOLCHAINS[t].ceilings}


def declaring() -> tuple[str, ...]:
    """The toolchains that declare ceilings, in run order."""
    from utils.registry import ORDER, TOOLCHAINS

    return tuple(t for t in ORDER if TOOLCHAINS[t].ceilings)


def declared_gpu(toolchains: Iterable[str] | None = None) -> Gpu | None:
    """The first named toolchain's GPU ceilings (the model-preparing one's, by run order), or None."""
    return next((p.gpu for p in declared(toolchains).values() if p.gpu is not None), None)
