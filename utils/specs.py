"""Which model, which weights, which data: the cache key and the manifest every route reads.

`python -m models.prepare` (torch environment) trains or loads the model, tokenises the
text, exports the FP32 ONNX and counts operations, then writes `manifest.json` in the
model's cache folder. Every route reads that manifest, so all of them score the same
weights on the same samples.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from utils import artifacts
from utils.artifacts import resolve
from utils.atomic import config_key
from utils.errors import SuiteError
from utils.paths import CACHE_DIR
from utils.registry import DEFAULT_CALIB, MODELS, WEIGHTS, check_choice  # noqa: F401 (DEFAULT_CALIB re-exported)

EMBEDDED = {
    "resnet50": {
        "arch": "torchvision.models.resnet50", "num_classes": 10, "data": "sklearn-digits", "resolution": 16,
        "epochs": 15, "batch_size": 64, "lr": 0.05, "seed": 0, "version": 1,
    },
    "gpt2": {
        "arch": "transformers.GPT2LMHeadModel", "n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 128,
        "vocab_size": 2048, "corpus": "pydoc_data.topics", "tokenizer": "tokenizers.ByteLevelBPE",
        "epochs": 10, "batch_size": 16, "lr": 2e-3, "seed": 0, "version": 2,  # v2: split by document groups
    },
}
# --weights random: the real architectures with randomly initialised weights (no download), for latency,
# throughput, size and memory; accuracy is meaningless and stays empty. Inputs: calibration and fidelity samples
# are scikit-learn's digits upscaled to 224x224 (ResNet50) and seeded uniform token ids (GPT-2); latency is
# measured at ResNet50's 224x224 and a 128-token GPT-2 prefill (plus KV-cache generation).
RANDOM = {
    "resnet50": {
        "arch": "torchvision.models.resnet50", "num_classes": 1000, "init": "torchvision default",
        "resolution": 224, "inputs": "sklearn-digits upscaled to 224", "n_eval": 64, "seed": 0, "version": 1,
    },
    "gpt2": {
        "arch": "transformers.GPT2LMHeadModel", "config": "GPT2Config() defaults", "n_layer": 12, "n_embd": 768,
        "n_head": 12, "n_positions": 1024, "vocab_size": 50257, "init": "transformers default (std 0.02)",
        "inputs": "seeded uniform token ids", "seq_len": 128, "train_tokens": 8192, "val_tokens": 1024, "seed": 0,
        "version": 1,
    },
}
RANDOM_REASON = "random weights: latency only"
DATASET_NAME = {("resnet50", "embedded"): "sklearn-digits-16px", ("gpt2", "embedded"): "pydoc-topics",
                ("resnet50", "random"): "digits-224 inputs", ("gpt2", "random"): "random token ids"}
# the longest calibration window of a language model (tokens): bounded calibration memory for long contexts
# (HF GPT-2's 1,024 positions); the embedded GPT-2's 128-token context is calibrated whole
LM_CALIB_WINDOW = 256


def ppl_stride(context: int) -> int:
    """Perplexity window stride: half the model's context (64 for the embedded GPT-2, 512 for HF gpt2)."""
    return max(1, context // 2)
# manifest entries that are file paths (stored relative to the model's cache folder)
PATH_KEYS = ("checkpoint", "onnx", "decoder_onnx", "hf_dir", "train_ids", "val_ids")


@dataclass(frozen=True)
class ModelSource:
    model: str
    weights: str = "embedded"
    weights_path: str | None = None  # resnet50: a state-dict file; gpt2: hub id or local dir
    data: str | None = None  # resnet50: ImageNet-layout folder; gpt2: text file or 'wikitext-2'

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_choice("weights", self.weights, WEIGHTS)
        if self.weights in ("embedded", "random") and (self.weights_path or self.data):
            raise SuiteError("--weights-path/--data apply to --weights pretrained only")
        if self.weights == "pretrained" and not self.data:
            what = "an ImageNet-layout folder (--data PATH)" if self.model == "resnet50" else \
                "WikiText-2 (--data wikitext-2, needs HF datasets online or cached) or a local text file (--data FILE)"
            raise SuiteError(f"--weights pretrained needs {what}")

    @property
    def key(self) -> str:
        if self.weights == "embedded":
            return config_key(EMBEDDED[self.model], 10)
        if self.weights == "random":
            return config_key(RANDOM[self.model], 10)
        return config_key([self.weights_path, _abs(self.data)], 10)

    @property
    def cache_dir(self) -> Path:
        return CACHE_DIR / f"{self.model}-{self.weights}-{self.key}"

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / "manifest.json"

    def load_manifest(self, *, verify: bool = True) -> dict:
        """The manifest with its file paths resolved against this cache folder (they are stored relative to it,
        so a moved cache still works); with `verify`, every recorded file is checked against its hash."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise SuiteError(
                f"{self.model} ({self.weights}) is not prepared yet: run `python3 -m evaluation.bench --models "
                f"{self.model}` or, in the torch environment, `python -m models.prepare --model {self.model}`"
            ) from None
        except ValueError:
            raise SuiteError(f"{self.manifest_path} is corrupt; delete {self.cache_dir} and prepare again") from None
        for k in PATH_KEYS:
            if manifest.get(k):
                manifest[k] = str(resolve(self.cache_dir, manifest[k]))
        if verify:
            for k, rec in (manifest.get("files") or {}).items():
                if manifest.get(k):
                    artifacts.verify(manifest[k], rec, fix=f"run `python -m models.prepare --model {self.model} "
                                                            f"--force` (torch environment) to make it again")
        return manifest

    def path(self, stored: str) -> Path:
        return resolve(self.cache_dir, stored)

    def to_dict(self) -> dict:
        return asdict(self)


def _abs(p: str | None) -> str | None:
    if p is None or not Path(p).exists():
        return p
    return str(Path(p).resolve())
