"""Task objects: how a model's samples are loaded, scored and fed to the timer, per kind of task.

The kit dispatches on the model declaration's task (models/catalog.py) once, here; routes and analysis tools ask
the task instead of comparing model names. NumPy only at import time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from utils.data import (Split, calibration_subset, digits_inputs, digits_splits, image_folder_splits, latency_input,
                        subset)
from utils.errors import SuiteError
from utils.metrics import ClassificationScore, PerplexityScore, classification_score, strided_perplexity
from utils.registry import CAUSAL_LM, CLASSIFIER, model_decl, task_of
from utils.specs import LM_CALIB_WINDOW, ModelSource, ppl_stride
from utils.text import ids_sha, lm_calibration, lm_latency_input


@dataclass(frozen=True)
class ImageData:
    calib: Split
    test: Split
    resolution: int  # accuracy resolution (latency is at the manifest's latency_resolution, 224)


@dataclass(frozen=True)
class TextData:
    calib: np.ndarray  # (n, seq_len) int64, from train
    val_ids: np.ndarray  # 1-D int64
    seq_len: int
    stride: int
    vocab_size: int


@dataclass(frozen=True)
class LatencyInput:
    x: np.ndarray
    items: int  # items per call (images, or tokens)
    unit: str  # throughput unit
    shape: tuple[int, ...]


class Task:
    kind: str
    input_name: str  # the FP32 ONNX graph's input
    value_field: str  # the score attribute that fills a row's `value`

    def load_data(self, source: ModelSource, manifest: dict, calib_samples: int, eval_limit: int | None = None):
        raise NotImplementedError

    def calib_array(self, data) -> np.ndarray:
        raise NotImplementedError

    def score(self, predict: Callable[[np.ndarray], np.ndarray], data, *, batch: int | None = None,
              pad: bool = False, progress: bool = False):
        raise NotImplementedError

    def latency_input(self, batch: int, manifest: dict, data) -> LatencyInput:
        raise NotImplementedError

    def score_fields(self, score) -> dict:
        """ResultRow fields a score fills (value, and top5 for classifiers)."""
        raise NotImplementedError

    def score_outputs(self, predict, data, *, batch: int | None = None, pad: bool = False, progress: bool = False,
                      reference=None):
        """(score, this run's outputs for later comparisons, fidelity against `reference` outputs or None)."""
        raise NotImplementedError

    @staticmethod
    def fidelity_fields(fid: dict | None) -> dict:
        """ResultRow fidelity fields from a utils.fidelity.compare result."""
        if not fid:
            return {}
        return {k: fid.get(k) for k in ("agreement", "flips_lost", "flips_gained", "sqnr_db", "kl")}

    def hashes(self, data) -> dict:
        raise NotImplementedError


class ImageClassification(Task):
    kind = CLASSIFIER
    input_name = "input"
    value_field = "top1"
    default_batch = 64

    def load_data(self, source, manifest, calib_samples, eval_limit=None) -> ImageData:
        if source.weights == "embedded":
            sp = digits_splits(resolution=manifest["resolution"])
            calib = calibration_subset(sp["train"], calib_samples)
            test = sp["test"] if eval_limit is None else subset(sp["test"], min(eval_limit, len(sp["test"])), seed=0,
                                                                 name="test", what="evaluation")
            return ImageData(calib, test, manifest["resolution"])
        if source.weights == "random":
            res = int(manifest["resolution"])
            declared = int(manifest.get("n_eval") or source.recipe.get("n_eval", 64))
            n_eval = declared if eval_limit is None else min(eval_limit, declared)
            cal, ev = digits_inputs(res, calib_samples, n_eval)
            return ImageData(cal, ev, res)
        cal, ev = image_folder_splits(source.data, n_eval=eval_limit, n_calib=calib_samples)
        return ImageData(cal, ev, 224)

    def calib_array(self, data: ImageData) -> np.ndarray:
        return data.calib.x

    def score(self, predict, data: ImageData, *, batch=None, pad=False, progress=False, sink=None) -> ClassificationScore:
        """Top-1/top-5 over the evaluation split in batches of `batch`; with `pad` every call sees exactly `batch`
        samples (the last batch zero-padded, the padding dropped), for runtimes compiled for one shape.
        `sink` (a list) receives each batch's logits."""
        bs = batch or self.default_batch

        def batches():
            for x, y in data.test.batches(bs):
                n = len(y)
                if pad and n < bs and len(data.test) > bs:
                    x = np.concatenate([x, np.zeros((bs - n, *x.shape[1:]), x.dtype)])
                out = np.asarray(predict(x))[:n]
                if sink is not None:
                    sink.append(out)
                yield out, y

        return classification_score(batches())

    def score_outputs(self, predict, data: ImageData, *, batch=None, pad=False, progress=False, reference=None):
        from utils.fidelity import ClassifierOutputs, compare

        sink: list = []
        score = self.score(predict, data, batch=batch, pad=pad, progress=progress, sink=sink)
        outputs = ClassifierOutputs(np.concatenate(sink).astype(np.float32), np.asarray(data.test.y))
        fid = compare(reference, outputs) if reference is not None else None
        return score, outputs, fid

    def latency_input(self, batch, manifest, data) -> LatencyInput:
        res = int(manifest.get("latency_resolution", 224))
        return LatencyInput(latency_input(batch, res), batch, "images/s", (batch, 3, res, res))

    def score_fields(self, score: ClassificationScore) -> dict:
        return {"value": score.top1, "top5": score.top5}

    def hashes(self, data: ImageData) -> dict:
        return {"calib_sha": data.calib.sha, "eval_sha": data.test.sha, "n_calib": len(data.calib),
                "n_eval": len(data.test)}


class LanguageModel(Task):
    kind = CAUSAL_LM
    input_name = "input_ids"
    value_field = "ppl"

    def load_data(self, source, manifest, calib_samples, eval_limit=None) -> TextData:
        train_ids = np.load(source.path(manifest["train_ids"]))
        val_ids = np.load(source.path(manifest["val_ids"]))
        if eval_limit is not None:
            val_ids = val_ids[:max(2, eval_limit)]
        seq_len = int(manifest["seq_len"])
        try:  # windows no longer than LM_CALIB_WINDOW tokens: calibration memory stays bounded on long contexts
            calib = lm_calibration(train_ids, calib_samples, min(seq_len, LM_CALIB_WINDOW))
        except SuiteError as exc:  # name the text the windows come from
            raise SuiteError(f"{exc} (text: {source.data or 'the embedded corpus'}, "
                             f"token ids {source.path(manifest['train_ids'])})") from None
        return TextData(calib, val_ids, seq_len, manifest.get("ppl_stride") or ppl_stride(seq_len),
                        int(manifest["vocab_size"]))

    def calib_array(self, data: TextData) -> np.ndarray:
        return data.calib

    def score(self, predict, data: TextData, *, batch=None, pad=False, progress=False) -> PerplexityScore:
        return strided_perplexity(predict, data.val_ids, max_length=data.seq_len, stride=data.stride,
                                  progress=progress)

    def score_outputs(self, predict, data: TextData, *, batch=None, pad=False, progress=False, reference=None):
        """Perplexity exactly as `score`, while keeping per-token outputs (top-1, NLL, top-k log-probs) of every
        scored token, and per-token agreement/KL against `reference` outputs of the baseline run."""
        from utils.fidelity import LMFidelity
        from utils.metrics import strided_windows

        ids = np.asarray(data.val_ids, dtype=np.int64).reshape(-1)
        windows = strided_windows(ids.size, data.seq_len, data.stride)
        own = LMFidelity(topk=LM_TOPK)
        vs = LMFidelity(reference=reference, topk=LM_TOPK) if reference is not None else None
        i = [0]

        def fn(chunk: np.ndarray) -> np.ndarray:
            logits = np.asarray(predict(chunk))
            begin, end, n_scored = windows[i[0]]
            i[0] += 1
            pos = np.arange(end - begin)[-n_scored:]
            pos = pos[pos >= 1]  # position t-1 predicts token t (the scoring rule of strided_perplexity)
            rows, targets = logits[0][pos - 1], chunk[0, pos]
            own.update(ref_logits=rows, targets=targets)
            if vs is not None:
                vs.update(q_logits=rows, targets=targets)
            return logits

        score = strided_perplexity(fn, ids, max_length=data.seq_len, stride=data.stride, progress=progress)
        fid = vs.result() if vs is not None else None
        return score, own.reference_outputs(), fid

    def latency_input(self, batch, manifest, data: TextData) -> LatencyInput:
        ids = lm_latency_input(batch, data.seq_len, data.vocab_size)
        return LatencyInput(ids, batch * data.seq_len, "tokens/s", (batch, data.seq_len))

    def generation_input(self, batch: int, manifest: dict, data: TextData) -> tuple[np.ndarray, int]:
        """(prompt ids (batch, P), new tokens) of the generation latency rows: P = min(128, context / 2) tokens of
        the evaluation text (a different window per batch row), min(32, context / 4) new tokens (greedy)."""
        ctx_len = int(manifest.get("n_positions") or data.seq_len)
        p, new = min(GEN_PROMPT, ctx_len // 2), min(GEN_NEW, ctx_len // 4)
        ids = np.asarray(data.val_ids, dtype=np.int64).reshape(-1)
        if ids.size < p * batch:
            ids = np.resize(ids, p * batch)
        return ids[:p * batch].reshape(batch, p), new

    def score_fields(self, score: PerplexityScore) -> dict:
        return {"value": score.ppl}

    def hashes(self, data: TextData) -> dict:
        return {"calib_sha": ids_sha(data.calib), "eval_sha": ids_sha(data.val_ids), "n_calib": int(data.calib.shape[0]),
                "n_eval_tokens": int(data.val_ids.size)}


GEN_PROMPT, GEN_NEW = 128, 32  # generation rows: prompt and new tokens (capped by the context, see generation_input)
LM_TOPK = 32  # reference log-probs kept per token for cross-process KL (exact when the vocabulary is <= this)

TASKS: dict[str, Task] = {t.kind: t for t in (ImageClassification(), LanguageModel())}


def task_for(model: str) -> Task:
    return TASKS[task_of(model)]


def metric_of(model: str) -> str:
    return model_decl(model).metric


def load_data(source: ModelSource, manifest: dict, calib_samples: int, eval_limit: int | None = None):
    """The shared calibration and evaluation samples for this model (identical in every environment)."""
    return task_for(source.model).load_data(source, manifest, calib_samples, eval_limit)


def data_hashes(data) -> dict:
    return (TASKS[CLASSIFIER] if isinstance(data, ImageData) else TASKS[CAUSAL_LM]).hashes(data)


def file_size_mb(path: Path | str) -> float:
    p = Path(path)
    total = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 1e6
