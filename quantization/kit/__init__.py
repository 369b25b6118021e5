"""The route kit: the one contract every toolchain route implements, and the one loop that measures it.

    contract.py    Route, Built, Calibration, ModelContext, SkipVariant, open_model: what a route is and builds
    runner.py      the one loop over a plan's items (build, score, write at once, time, record), execute()
    scoring.py     accuracy, outputs and fidelity, coverage, scores reused from an earlier row
    timing.py      interleaved trials with the in-process FP32 baselines, rows rewritten as batches are timed
    generation.py  greedy KV-cache generation rows (language models)
    variant.py     one item in flight, item records, what a row keeps of a paired comparison
    cli.py         a route process's command line (--plan FILE, or a route's own flags), build_variant
    config.py      flags -> plan (utils/plan.py), RouteConfig, RowWriter
    tasks.py, onnx.py, cache.py, macs.py: tasks, ONNX Runtime sessions, verified artifacts, MACs per layer

    python -m quantization.kit <toolchain> --plan FILE     # what the launchers run
    python -m quantization.<toolchain> [route flags]        # a route on its own: its flags become a plan

Analysis tools (per-layer report, planted faults, vendor recipes) call `build_variant` instead of faking command
lines or importing a route's internals.
"""
from __future__ import annotations

from quantization.kit.cli import build_variant, main_for, parser_for, run
from quantization.kit.contract import (CALIB_BATCH, Built, Calibration, ModelContext, Route, SkipVariant,
                                       calibration_batches, open_model, route_for, unavailable_import)
from quantization.kit.generation import greedy, token_match
from quantization.kit.runner import execute
from quantization.kit.scoring import coverage_of, score_built
from quantization.kit.tasks import Task, data_hashes, file_size_mb, load_data, task_for
from utils.errors import FAILED_REASON_CHARS, RouteUnavailable, SuiteError, failure_reason

__all__ = ["CALIB_BATCH", "Built", "Calibration", "FAILED_REASON_CHARS", "ModelContext", "Route", "RouteUnavailable",
           "SkipVariant", "SuiteError", "Task", "build_variant", "calibration_batches", "coverage_of", "data_hashes",
           "execute", "failure_reason", "file_size_mb", "greedy", "load_data", "main_for", "open_model", "parser_for",
           "route_for", "run", "score_built", "task_for", "token_match", "unavailable_import"]
