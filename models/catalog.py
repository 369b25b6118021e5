"""The one declaration of every model (strings, numbers and tuples only: importing it imports no toolchain).

A model is one `ModelDecl`: where its architecture comes from (a torchvision classifier builder or a Hugging Face
causal-LM `model_type`), its task, the recipe of its offline embedded weights, its random-weights configuration,
its quantization scopes, its default batches, calibration size and sweep batches, and what its data are called.
Everything else reads it: preparation (`models.prepare`: build, train, export by task and architecture), the route
kit (samples, scoring and timing by task), the launchers (plans, time estimates, sweeps) and the report.

A user's own models are declared the same way in a Python file that defines `MODELS = [ModelDecl(...), ...]`,
named by `--models-file FILE` on the bench (or the environment variable SUITE_MODELS, a list of such files separated
by os.pathsep, which the bench sets for every process it starts). See docs/architecture.md, "Adding a model".
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

# the tasks the route kit scores and times (quantization/kit/tasks.py): a toolchain declares its variants per task
CLASSIFIER = "image-classification"
CAUSAL_LM = "language-model"
TASKS = (CLASSIFIER, CAUSAL_LM)
METRICS = {CLASSIFIER: "top1", CAUSAL_LM: "ppl"}  # top-1 in percent; perplexity
# the sources an architecture can come from: "torchvision:<builder>" (torchvision.models.get_model's name, e.g. a
# classifier builder) or "hf:<model_type>" (transformers' AutoConfig.for_model / AutoModelForCausalLM)
ARCH_SOURCES = {CLASSIFIER: ("torchvision",), CAUSAL_LM: ("hf",)}
MODELS_ENV = "SUITE_MODELS"

# keys of an embedded recipe or a random-weights config that describe training or data, not the architecture: every
# other key of a language model's recipe is an argument of its Hugging Face config (AutoConfig.for_model)
RECIPE_KEYS = frozenset({"arch", "config", "init", "inputs", "data", "corpus", "tokenizer", "resolution", "epochs",
                         "batch_size", "lr", "seed", "version", "n_eval", "seq_len", "train_tokens", "val_tokens",
                         "num_classes"})


@dataclass(frozen=True)
class Scope:
    """Which layers a quantized variant leaves in the higher precision. A layer is a torch module path
    (`transformer.h.0.attn.c_attn`, `lm_head`, `layer1.0.conv1`) or a module's bucket of activation x activation
    MatMuls (`transformer.h.0.attn:scores`: attention scores and context); `keep` holds fnmatch patterns of them
    (quantization/kit/macs.py names the layers of the exported FP32 ONNX the same way)."""

    keep: tuple[str, ...] = ()
    doc: str = ""

    def keeps(self, layer: str) -> bool:
        return any(fnmatchcase(layer, p) for p in self.keep)


DEFAULT_SCOPE = "default"
# a language model's usual scope: its LM head and the attention score/context MatMuls stay in the higher precision,
# as ModelOpt's and most LLM recipes do; "head" quantizes the LM head too
LM_SCOPES = {
    DEFAULT_SCOPE: Scope(("lm_head", "*:scores"), "the transformer blocks' linear layers; LM head and attention "
                                                   "score/context MatMuls in the higher precision"),
    "head": Scope(("*:scores",), "the blocks' linear layers and the LM head; attention score/context MatMuls in the "
                                 "higher precision"),
}


@dataclass(frozen=True)
class ModelDecl:
    name: str
    task: str  # CLASSIFIER | CAUSAL_LM: the kit's task object scores and times it
    arch: str  # "torchvision:<builder>" | "hf:<model_type>"
    batches: tuple[int, ...]  # default latency batches
    calib_samples: int  # default calibration size (from the train split)
    # --weights random: the real-size model on 2 cores (one latency batch, fewer calibration samples: bounded memory)
    random_batches: tuple[int, ...] = (1,)
    random_calib: int = 32
    # the quantization scopes: "default" is what every INT8/INT4/FP8 variant quantizes unless its toolchain declares
    # another scope for it (Toolchain.method_scopes); a route honours its variant's scope or its rows say which layers
    # differ (the kit compares the scope with the layers the runtime ran in reduced precision)
    scopes: dict[str, Scope] = field(default_factory=lambda: {DEFAULT_SCOPE: Scope()})
    # --weights embedded: the offline recipe (trained on first use, cached by this dict's hash); None: none declared.
    # Classifiers: num_classes, data ("sklearn-digits"), resolution, epochs, batch_size, lr, seed. Language models:
    # corpus ("pydoc_data.topics"), tokenizer ("tokenizers.ByteLevelBPE"), epochs, batch_size, lr, seed, and every
    # other key an argument of the architecture's config (vocab_size is the tokenizer's vocabulary)
    embedded: dict | None = None
    # --weights random: the real architecture randomly initialised (seeded), cached by this dict's hash; None: none.
    # Classifiers: num_classes, resolution, n_eval (digits upscaled stand in for images). Language models: seq_len
    # (the prefill timed), train_tokens/val_tokens (seeded uniform token ids), every other key a config argument
    random: dict | None = None
    # weights kind -> what the rows call its data
    datasets: dict[str, str] = field(default_factory=dict)
    sweep_batches: tuple[int, ...] = (1, 2, 4, 8, 16)  # the batch sweep's default batches
    # weights kind -> seconds preparation takes on 2 cores when no earlier run measured it (the plan's estimate)
    prepare_seconds: dict[str, float] = field(default_factory=dict)
    # --weights pretrained defaults: a state-dict file / "DEFAULT" (torchvision's weights, downloaded when online), or
    # a Hugging Face hub id / directory; the evaluation data (an ImageNet-layout folder; a text file or 'wikitext-2')
    weights_path: str | None = None
    data: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        from utils.errors import SuiteError

        if self.task not in TASKS:
            raise SuiteError(f"model {self.name!r}: unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        source, _, name = self.arch.partition(":")
        if source not in ARCH_SOURCES[self.task] or not name:
            raise SuiteError(f"model {self.name!r}: arch {self.arch!r} is not one of "
                             f"{', '.join(s + ':<name>' for s in ARCH_SOURCES[self.task])} (task {self.task})")
        if DEFAULT_SCOPE not in self.scopes:
            raise SuiteError(f"model {self.name!r}: scopes must include {DEFAULT_SCOPE!r}")
        if not self.batches or not all(int(b) >= 1 for b in self.batches):
            raise SuiteError(f"model {self.name!r}: batches must be positive integers")

    @property
    def metric(self) -> str:
        return METRICS[self.task]

    @property
    def arch_source(self) -> str:
        return self.arch.partition(":")[0]

    @property
    def arch_name(self) -> str:
        return self.arch.partition(":")[2]

    def scope(self, name: str = DEFAULT_SCOPE) -> Scope:
        return self.scopes[name]

    def recipe(self, weights: str) -> dict | None:
        """The embedded recipe or random-weights config (None for pretrained weights or when not declared)."""
        return {"embedded": self.embedded, "random": self.random}.get(weights)

    def config_args(self, weights: str) -> dict:
        """A language model's Hugging Face config arguments from its recipe (every non-recipe key)."""
        return {k: v for k, v in (self.recipe(weights) or {}).items() if k not in RECIPE_KEYS}

    def weights_kinds(self) -> tuple[str, ...]:
        return tuple(w for w, ok in (("embedded", self.embedded is not None), ("pretrained", True),
                                     ("random", self.random is not None)) if ok)

    def dataset(self, weights: str) -> str | None:
        return self.datasets.get(weights)


BUILTIN: tuple[ModelDecl, ...] = (
    ModelDecl(
        "resnet50", CLASSIFIER, "torchvision:resnet50", (1, 32), 128,
        scopes={DEFAULT_SCOPE: Scope((), "every convolution and the classifier")},
        embedded={"arch": "torchvision.models.resnet50", "num_classes": 10, "data": "sklearn-digits", "resolution": 16,
                  "epochs": 15, "batch_size": 64, "lr": 0.05, "seed": 0, "version": 1},
        random={"arch": "torchvision.models.resnet50", "num_classes": 1000, "init": "torchvision default",
                "resolution": 224, "inputs": "sklearn-digits upscaled to 224", "n_eval": 64, "seed": 0, "version": 1},
        datasets={"embedded": "sklearn-digits-16px", "random": "digits-224 inputs"},
        # bounded for a 2-core CPU (FP32 eager is ~90 ms per 224x224 image there: batch 64 is ~6 s per call, each row
        # makes first + 1 warm-up (calls over 1 s) + >=2 timed calls); 128 and 256 are opt-in
        sweep_batches=(1, 2, 4, 8, 16, 32, 64),
        prepare_seconds={"embedded": 220.0, "random": 30.0, "pretrained": 120.0},
        doc="torchvision's ResNet50; embedded: 10 classes trained on scikit-learn's digits at 16x16 (timed at 224x224)",
    ),
    ModelDecl(
        "gpt2", CAUSAL_LM, "hf:gpt2", (1, 8), 64,
        # the LM head is tied to the token embedding (768 x 50,257 per token, a third of GPT-2 small's prefill)
        scopes=LM_SCOPES,
        embedded={"arch": "transformers.GPT2LMHeadModel", "n_layer": 4, "n_embd": 128, "n_head": 4,
                  "n_positions": 128, "vocab_size": 2048, "corpus": "pydoc_data.topics",
                  "tokenizer": "tokenizers.ByteLevelBPE", "epochs": 10, "batch_size": 16, "lr": 2e-3, "seed": 0,
                  "version": 2},  # v2: split by document groups
        random={"arch": "transformers.GPT2LMHeadModel", "config": "GPT2Config() defaults", "n_layer": 12,
                "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257,
                "init": "transformers default (std 0.02)", "inputs": "seeded uniform token ids", "seq_len": 128,
                "train_tokens": 8192, "val_tokens": 1024, "seed": 0, "version": 1},
        datasets={"embedded": "pydoc-topics", "random": "random token ids"},
        sweep_batches=(1, 2, 4, 8, 16),
        prepare_seconds={"embedded": 100.0, "random": 60.0, "pretrained": 120.0},
        weights_path="gpt2",
        doc="Hugging Face GPT-2; embedded: 4 layers x 128 trained on CPython's pydoc topics; random: GPT-2 small",
    ),
)


def load_file(path: str | Path) -> tuple[ModelDecl, ...]:
    """The ModelDecls a user's file declares (`MODELS = [ModelDecl(...), ...]`); one-line errors."""
    import runpy

    from utils.errors import SuiteError

    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"models file {p} does not exist")
    try:
        ns = runpy.run_path(str(p), run_name="suite_models")
    except SuiteError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's file: name it and the error in one line
        raise SuiteError(f"models file {p}: {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}") from None
    decls = ns.get("MODELS")
    if not isinstance(decls, (list, tuple)) or not decls or not all(isinstance(d, ModelDecl) for d in decls):
        raise SuiteError(f"models file {p} must define MODELS = [ModelDecl(...), ...] "
                         "(from models.catalog import ModelDecl)")
    return tuple(decls)


def _declared() -> dict[str, ModelDecl]:
    from utils.errors import SuiteError

    out = {d.name: d for d in BUILTIN}
    for f in filter(None, os.environ.get(MODELS_ENV, "").split(os.pathsep)):
        for d in load_file(f):
            if d.name in out and out[d.name] != d:
                raise SuiteError(f"models file {f}: model {d.name!r} is declared already")
            out[d.name] = d
    return out


class _Names(tuple):
    """The declared model names, live: a models file added later (use_models_file) shows in every module that
    imported MODELS."""

    def _names(self) -> tuple[str, ...]:
        return tuple(MODEL_DECLS)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(MODEL_DECLS)

    def __contains__(self, name) -> bool:
        return name in MODEL_DECLS

    def __getitem__(self, i):
        return self._names()[i]

    def index(self, name, *args) -> int:
        return self._names().index(name, *args)

    def __eq__(self, other) -> bool:
        return tuple(self._names()) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


MODEL_DECLS: dict[str, ModelDecl] = _declared()
MODELS: tuple[str, ...] = _Names()


def use_models_file(path: str | Path) -> None:
    """Add a user's models file to this process and every process it starts (SUITE_MODELS)."""
    path = str(Path(path).resolve())
    files = [f for f in os.environ.get(MODELS_ENV, "").split(os.pathsep) if f]
    new = load_file(path)
    if path not in files:
        os.environ[MODELS_ENV] = os.pathsep.join([*files, path])
    for d in new:
        if d.name in MODEL_DECLS and MODEL_DECLS[d.name] != d:
            from utils.errors import SuiteError

            raise SuiteError(f"models file {path}: model {d.name!r} is declared already")
        MODEL_DECLS[d.name] = d


def models_with(weights: str) -> tuple[str, ...]:
    """The declared models that have `weights` (embedded recipe / random config; every model takes pretrained)."""
    return tuple(n for n, d in MODEL_DECLS.items() if weights in d.weights_kinds())
