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
from utils.registry import CLASSIFIER, MODELS, WEIGHTS, check_choice, model_decl

# the embedded recipes, random-weights configs and dataset names are declared with each model (models/catalog.py)
RANDOM_REASON = "random weights: latency only"
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
    weights_path: str | None = None  # classifier: a state-dict file; language model: hub id or local dir
    data: str | None = None  # classifier: ImageNet-layout folder; language model: text file or 'wikitext-2'

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_choice("weights", self.weights, WEIGHTS)
        decl = model_decl(self.model)
        if self.weights in ("embedded", "random") and (self.weights_path or self.data):
            raise SuiteError("--weights-path/--data apply to --weights pretrained only")
        if self.weights not in decl.weights_kinds():
            raise SuiteError(f"model {self.model} declares no {self.weights} weights (it has: "
                             f"{', '.join(decl.weights_kinds())})")
        if self.weights == "pretrained":  # the declaration's defaults where the flags name none
            if self.weights_path is None and decl.weights_path:
                object.__setattr__(self, "weights_path", decl.weights_path)
            if self.data is None and decl.data:
                object.__setattr__(self, "data", decl.data)
        if self.weights == "pretrained" and not self.data:
            what = "an ImageNet-layout folder (--data PATH)" if decl.task == CLASSIFIER else \
                "WikiText-2 (--data wikitext-2, needs HF datasets online or cached) or a local text file (--data FILE)"
            raise SuiteError(f"--weights pretrained needs {what}")

    @property
    def decl(self):
        return model_decl(self.model)

    @property
    def recipe(self) -> dict | None:
        """The embedded recipe or random-weights config the weights come from (None: pretrained)."""
        return self.decl.recipe(self.weights)

    @property
    def key(self) -> str:
        if self.weights in ("embedded", "random"):
            return config_key(self.recipe, 10)
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
