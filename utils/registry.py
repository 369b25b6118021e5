"""Lazy registry of toolchains and models (strings only: importing it imports no toolchain).

Adding a toolchain touches: its module under quantization/, one entry here, its
requirements file (and an entry in evaluation/envs.py), and its tests under tests/<env>/.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("resnet50", "gpt2")
WEIGHTS = ("embedded", "pretrained")
METRIC = {"resnet50": "top1", "gpt2": "ppl"}
# latency batches per model (ResNet50 at 3x224x224; GPT-2 at a fixed sequence length)
DEFAULT_BATCHES = {"resnet50": (1, 32), "gpt2": (1, 8)}


@dataclass(frozen=True)
class Toolchain:
    name: str
    env: str  # evaluation.envs environment that runs it
    module: str  # `python -m <module>` entry point
    # model -> ((method, precision), ...) it produces
    variants: dict[str, tuple[tuple[str, str], ...]]
    # (toolchain, method) of the FP32 row that deltas and `speedup` compare against
    baseline: tuple[str, str] | None = None
    needs: str = ""  # one line: what it needs beyond its environment
    # method -> baseline method of the same toolchain, where the fair FP32 comparison differs
    # (pt2e runs under torch.compile, so it is compared with FP32 under torch.compile)
    method_baselines: dict[str, str] = field(default_factory=dict)

    def methods(self, model: str) -> tuple[str, ...]:
        return tuple(m for m, _ in self.variants.get(model, ()))

    def baseline_for(self, method: str) -> tuple[str, str] | None:
        if method in self.method_baselines:
            return (self.name, self.method_baselines[method])
        return self.baseline


TOOLCHAINS: dict[str, Toolchain] = {
    "torch": Toolchain(
        name="torch",
        env="torch",
        module="quantization.torch_route",
        variants={
            "resnet50": (("eager", "fp32"), ("fx", "int8"), ("inductor", "fp32"), ("pt2e", "int8")),
            "gpt2": (("eager", "fp32"), ("weight-only", "int8"), ("dynamic", "int8")),
        },
        baseline=("torch", "eager"),
        method_baselines={"pt2e": "inductor"},
    ),
    "onnxruntime": Toolchain(
        name="onnxruntime",
        env="onnxruntime",
        module="quantization.onnxruntime_route",
        variants={
            "resnet50": (("fp32", "fp32"), ("minmax", "int8"), ("entropy", "int8"), ("percentile", "int8")),
            "gpt2": (("fp32", "fp32"), ("minmax", "int8"), ("entropy", "int8"), ("percentile", "int8")),
        },
        baseline=("onnxruntime", "fp32"),
    ),
    "modelopt-onnx": Toolchain(
        name="modelopt-onnx",
        env="modelopt-onnx",
        module="quantization.modelopt_onnx_route",
        variants={
            "resnet50": (("max", "int8"), ("entropy", "int8"), ("fp8", "fp8"), ("int4", "int4")),
            "gpt2": (("max", "int8"), ("entropy", "int8"), ("fp8", "fp8"), ("int4", "int4")),
        },
        baseline=("onnxruntime", "fp32"),
    ),
    "modelopt-tripy": Toolchain(
        name="modelopt-tripy",
        env="modelopt-tripy",
        module="quantization.modelopt_tripy",
        variants={
            "gpt2": (
                ("fp32", "fp32"),
                ("int8-weight-only", "int8"),
                ("int4-weight-only", "int4"),
                ("float8", "fp8"),
            ),
        },
        baseline=("modelopt-tripy", "fp32"),
        needs="nvtripy (NVIDIA's package index) and a CUDA GPU for the Tripy rows",
    ),
    "tensorrt": Toolchain(
        name="tensorrt",
        env="tensorrt",
        module="quantization.tensorrt_route",
        variants={
            "resnet50": (("fp32", "fp32"), ("fp16", "fp16"), ("int8-entropy", "int8"), ("int8-qdq", "int8")),
            "gpt2": (("fp32", "fp32"), ("fp16", "fp16"), ("int8-entropy", "int8"), ("int8-qdq", "int8")),
        },
        baseline=("tensorrt", "fp32"),
        needs="TensorRT (NVIDIA's package index) and a CUDA GPU",
    ),
}

# the order the bench command runs them in (ONNX consumers after the torch export)
ORDER = ("torch", "onnxruntime", "modelopt-onnx", "modelopt-tripy", "tensorrt")


def check_choice(kind: str, value: str, valid) -> str:
    from utils.errors import SuiteError

    if value not in valid:
        raise SuiteError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def parse_list(kind: str, text: str | None, valid) -> tuple[str, ...]:
    """'a,b' -> ('a','b') validated; None/'all' -> all valid values."""
    if text is None or text == "all":
        return tuple(valid)
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        from utils.errors import SuiteError

        raise SuiteError(f"empty {kind} list; valid: {', '.join(valid)}")
    return tuple(check_choice(kind, x, valid) for x in items)
