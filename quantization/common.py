"""What every route's entry script shares: flags, data, the environment record, row writing.

NumPy only at import time. A route module builds its parser with `route_parser`, turns it
into a `RouteConfig`, and for each (model, method) writes ResultRows with `RowWriter`.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.data import Split, calibration_subset, digits_splits, image_folder_splits, subset
from utils.envinfo import environment_record
from utils.errors import SuiteError
from utils.paths import RUNS_DIR
from utils.registry import DEFAULT_BATCHES, METRIC, TOOLCHAINS, parse_list
from utils.rows import ResultRow, status_rows, write_row
from utils.specs import DATASET_NAME, DEFAULT_CALIB, ModelSource, ppl_stride
from utils.text import ids_sha, lm_calibration

log = logging.getLogger(__name__)


def route_parser(toolchain: str, description: str) -> argparse.ArgumentParser:
    tc = TOOLCHAINS[toolchain]
    ap = argparse.ArgumentParser(prog=f"python -m {tc.module}", description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    models = ",".join(tc.variants)
    ap.add_argument("--model", default=models, help=f"comma list of models: {models}")
    ap.add_argument("--methods", default="all", help="comma list; per model: " + "; ".join(
        f"{m}: {','.join(tc.methods(m))}" for m in tc.variants))
    ap.add_argument("--weights", default="embedded", choices=("embedded", "pretrained"),
                    help="embedded: the offline default trained on first use; pretrained: real weights")
    ap.add_argument("--weights-path", default=None,
                    help="pretrained weights: ResNet50 state-dict file (default: torchvision IMAGENET1K_V1, "
                         "downloaded when online) or GPT-2 hub id / local directory (default: gpt2)")
    ap.add_argument("--data", default=None, help="pretrained data: ImageNet-layout folder (resnet50); "
                                                  "'wikitext-2' or a local text file (gpt2)")
    ap.add_argument("--batches", default=None, help="comma list of latency batch sizes (default: resnet50 1,32; gpt2 1,8)")
    ap.add_argument("--calib-samples", type=int, default=None,
                    help=f"calibration samples from the train split (default: {DEFAULT_CALIB})")
    ap.add_argument("--eval-limit", type=int, default=None, help="cap on evaluation samples (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for inference")
    ap.add_argument("--min-time", type=float, default=1.0, help="minimum seconds of timed calls per latency row")
    ap.add_argument("--min-iters", type=int, default=5, help="minimum timed calls per latency row")
    ap.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where result rows (one JSON each) go")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


@dataclass(frozen=True)
class RouteConfig:
    toolchain: str
    models: tuple[str, ...]
    methods: dict[str, tuple[str, ...]]
    weights: str = "embedded"
    weights_path: str | None = None
    data: str | None = None
    batches: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calib_samples: dict[str, int] = field(default_factory=dict)
    eval_limit: int | None = None
    threads: int = 2
    min_time: float = 1.0
    min_iters: int = 5
    runs_dir: Path = RUNS_DIR

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise SuiteError("--threads must be >= 1")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise SuiteError("--eval-limit must be >= 1")
        for m, n in self.calib_samples.items():
            if n < 1:
                raise SuiteError(f"calibration size must be >= 1 (got {n})")

    @classmethod
    def from_args(cls, toolchain: str, args: argparse.Namespace) -> "RouteConfig":
        tc = TOOLCHAINS[toolchain]
        models = parse_list("model", args.model, tuple(tc.variants))
        methods = {}
        for m in models:
            wanted = parse_list("method", args.methods, tc.methods(m)) if args.methods != "all" else tc.methods(m)
            methods[m] = wanted
        if args.batches:
            try:
                b = tuple(int(x) for x in args.batches.split(","))
            except ValueError:
                raise SuiteError(f"--batches must be a comma list of integers, got {args.batches!r}") from None
            if any(x < 1 for x in b):
                raise SuiteError("batch sizes must be >= 1")
            batches = {m: b for m in models}
        else:
            batches = {m: DEFAULT_BATCHES[m] for m in models}
        calib = {m: args.calib_samples if args.calib_samples is not None else DEFAULT_CALIB[m] for m in models}
        return cls(toolchain=toolchain, models=models, methods=methods, weights=args.weights,
                   weights_path=args.weights_path, data=args.data, batches=batches, calib_samples=calib,
                   eval_limit=args.eval_limit, threads=args.threads, min_time=args.min_time,
                   min_iters=args.min_iters, runs_dir=args.runs_dir)

    def source(self, model: str) -> ModelSource:
        return ModelSource(model, self.weights, self.weights_path, self.data)

    def variants(self, model: str) -> list[tuple[str, str]]:
        """(method, precision) pairs selected for this model, in registry order."""
        return [(m, p) for m, p in TOOLCHAINS[self.toolchain].variants[model] if m in self.methods[model]]


# ------------------------------------------------------------------------------------ data

@dataclass(frozen=True)
class ImageData:
    calib: Split
    test: Split
    resolution: int  # accuracy resolution (latency is always 224)


@dataclass(frozen=True)
class TextData:
    calib: np.ndarray  # (n, seq_len) int64, from train
    val_ids: np.ndarray  # 1-D int64
    seq_len: int
    stride: int
    vocab_size: int


def load_data(source: ModelSource, manifest: dict, calib_samples: int, eval_limit: int | None = None):
    """The shared calibration and evaluation samples for this model (identical in every environment)."""
    if source.model == "resnet50":
        if source.weights == "embedded":
            sp = digits_splits(resolution=manifest["resolution"])
            calib = calibration_subset(sp["train"], calib_samples)
            test = sp["test"] if eval_limit is None else subset(sp["test"], min(eval_limit, len(sp["test"])), seed=0,
                                                                 name="test", what="evaluation")
            return ImageData(calib, test, manifest["resolution"])
        cal, ev = image_folder_splits(source.data, n_eval=eval_limit, n_calib=calib_samples)
        return ImageData(cal, ev, 224)
    train_ids = np.load(Path(manifest["train_ids"]))
    val_ids = np.load(Path(manifest["val_ids"]))
    if eval_limit is not None:
        val_ids = val_ids[:max(2, eval_limit)]
    calib = lm_calibration(train_ids, calib_samples, manifest["seq_len"])
    return TextData(calib, val_ids, manifest["seq_len"], manifest.get("ppl_stride") or ppl_stride(manifest["seq_len"]),
                    manifest["vocab_size"])


def data_hashes(data) -> dict:
    if isinstance(data, ImageData):
        return {"calib_sha": data.calib.sha, "eval_sha": data.test.sha, "n_calib": len(data.calib), "n_eval": len(data.test)}
    return {"calib_sha": ids_sha(data.calib), "eval_sha": ids_sha(data.val_ids), "n_calib": int(data.calib.shape[0]),
            "n_eval_tokens": int(data.val_ids.size)}


# ------------------------------------------------------------------------------------ rows

class RowWriter:
    """Builds and writes the rows of one (toolchain, model) run with the identity fields filled."""

    def __init__(self, cfg: RouteConfig, model: str, manifest: dict | None, *, device: str = "cpu",
                 data=None, gpu: str | None = None, **env_extra):
        self.cfg, self.model, self.device = cfg, model, device
        self.manifest = manifest or {}
        self.source = cfg.source(model)
        self.dataset = self.manifest.get("dataset") or DATASET_NAME.get((model, cfg.weights), cfg.data or "?")
        self.env = environment_record(threads=cfg.threads, gpu=gpu, source=self.source.to_dict(),
                                      **(data_hashes(data) if data is not None else {}), **env_extra)
        self.written: list[Path] = []

    def row(self, method: str, precision: str, batch: int, **fields) -> ResultRow:
        base = dict(model=self.model, weights=self.cfg.weights, dataset=self.dataset, toolchain=self.cfg.toolchain,
                    method=method, precision=precision, device=self.device, batch=batch, metric=METRIC[self.model],
                    ops_per_item=self.manifest.get("ops_per_item"), environment=self.env)
        base.update(fields)
        return ResultRow(**base)

    def write(self, row: ResultRow) -> ResultRow:
        self.written.append(write_row(row, self.cfg.runs_dir))
        log.info("row %s: %s %s", row.key, row.status,
                 f"{row.metric}={row.value:.4g} p50={row.latency_p50_ms}" if row.status == "ok" and row.value is not None
                 else row.reason)
        return row

    def status(self, status: str, reason: str, variants, batches=None) -> list[ResultRow]:
        rows = status_rows(status=status, reason=reason, model=self.model, weights=self.cfg.weights,
                           dataset=self.dataset, toolchain=self.cfg.toolchain, variants=variants, device=self.device,
                           batches=batches or self.cfg.batches[self.model], metric=METRIC[self.model],
                           environment=self.env)
        return [self.write(r) for r in rows]


def file_size_mb(path: Path | str) -> float:
    p = Path(path)
    total = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 1e6
