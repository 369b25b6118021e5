"""What the analysis commands (evaluation/analysis/) and the routes' own analysis modules share.

A toolchain implements an analysis in its route folder (quantization/<toolchain>/<analysis>.py) and declares it in
`Toolchain.tools`; the evaluation command of that name imports it through the declaration and does the rest (flags,
the other side's build, timing, statistics, files). These are the types and helpers both sides use: nothing here
imports a toolchain library.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Recipe:
    """A vendor recipe's deployed model (evaluation/analysis/vendor.py): `timed(x)` -> zero-argument call, the layers
    its runtime ran in reduced precision (torch module paths, or runtime names of the FP32 ONNX's nodes), what it is,
    and how to release it."""

    timed: Callable[[Any], Callable[[], object]]
    reduced_layers: list[str] | None = None
    reduced_nodes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    close: Callable[[], object] | None = None


@dataclass
class LayerReport:
    """A per-layer report (evaluation/analysis/layer_report.py): rows (rank, layer, kind, local/accumulated SQNR and
    relative error, weight scheme, ...; worst local SQNR first), the file stem it is written under, a plot title."""

    rows: list[dict]
    stem: str
    title: str


def scope_kept(ctx, method: str):
    """(the variant's quantization scope, the FP32 ONNX node names of the layers it keeps in the higher precision)."""
    from quantization.kit.macs import nodes_kept

    _, scope = ctx.scope_for(method)
    return scope, (nodes_kept(ctx.macs, scope.keeps) if scope.keep else [])


def route_argv(calib_samples: int | None, threads: int, eval_limit: int | None = None, weights: str | None = None) -> list[str]:
    """The route flags an analysis passes to kit.build_variant."""
    return ((["--weights", weights] if weights else []) + ["--threads", str(threads)]
            + (["--calib-samples", str(calib_samples)] if calib_samples else [])
            + (["--eval-limit", str(eval_limit)] if eval_limit else []))
