"""The one declaration of every toolchain and model (strings and tuples only: importing it imports no toolchain).

Everything else reads this module: environment creation (`evaluation.launch.envs`), the test command
(`evaluation.test`), the bench and sweeps (run order, devices, skipped rows), the environment
record (packages), aggregation (baselines, ordering, plot markers) and the route kit (variants,
route resolution). Adding a toolchain takes its route module or package, one `Toolchain(...)`
entry below, its requirements file and its tests folder: see docs/architecture.md.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from models.catalog import (CAUSAL_LM, CLASSIFIER, DEFAULT_SCOPE, MODEL_DECLS, MODELS, ModelDecl,  # noqa: F401
                            Scope, models_with)  # (re-exported: the model side of the declaration)

# embedded: the offline default trained on first use; pretrained: real weights and data; random: the real
# architectures randomly initialised, for latency, size and memory only
WEIGHTS = ("embedded", "pretrained", "random")


# ------------------------------------------------------------------------------ models (declared in models/catalog.py)

def task_of(model: str) -> str:
    return model_decl(model).task


def model_decl(model: str) -> ModelDecl:
    try:
        return MODEL_DECLS[model]
    except KeyError:
        from utils.errors import SuiteError

        raise SuiteError(f"unknown model {model!r}; valid: {', '.join(MODELS)}") from None


def models_of(task: str) -> tuple[str, ...]:
    """The declared models of `task`, the built-in ones first (an analysis's default model is the first)."""
    return tuple(m for m in MODELS if task_of(m) == task)


def default_batches(model: str, weights: str = "embedded") -> tuple[int, ...]:
    d = model_decl(model)
    return d.random_batches if weights == "random" else d.batches


def default_calib(model: str, weights: str = "embedded") -> int:
    d = model_decl(model)
    return d.random_calib if weights == "random" else d.calib_samples


def batches_text(weights: str | None = None) -> str:
    """'resnet50 1,32; gpt2 1,8' style text of every declared model's default batches (help texts)."""
    return "; ".join(f"{m} {','.join(map(str, default_batches(m, weights or 'embedded')))}" for m in MODELS)


def batches_example() -> str:
    """A per-model --batches value from the declared defaults ('resnet50=1,32;gpt2=1,8')."""
    return ";".join(f"{m}={','.join(map(str, default_batches(m)))}" for m in MODELS)


def calib_text(weights: str | None = None) -> str:
    return ", ".join(f"{m} {default_calib(m, weights or 'embedded')}" for m in MODELS)


SOURCE_HELP = {
    "weights_path": "pretrained weights: a classifier's state-dict file (default: torchvision's own weights of the "
                    "architecture, downloaded when online) or a language model's Hugging Face hub id / local "
                    "directory (default: the model declaration's)",
    "data": "pretrained data: an ImageNet-layout folder (classifiers); 'wikitext-2' or a local text file (language "
            "models)",
}


def scope_of(toolchain: str, model: str, method: str) -> tuple[str, Scope]:
    """(name, Scope) a toolchain's variant quantizes: its declared scope (Toolchain.method_scopes), else the
    model's default."""
    name = TOOLCHAINS[toolchain].method_scopes.get(method, DEFAULT_SCOPE)
    return name, model_decl(model).scope(name)


# ------------------------------------------------------------------------------ environments

@dataclass(frozen=True)
class Part:
    """One requirements file of an environment; an optional part may fail to install (recorded, not fatal)."""

    file: str
    pip_args: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class EnvDecl:
    name: str
    parts: tuple[Part, ...]
    tests: str | None = None  # tests folder run inside this environment by the test command
    tests_last: bool = False  # its tests drive the toolchains' environments: the test command runs them after those
    # top-level modules its required parts provide: checked in an existing interpreter (--python NAME=PATH,
    # --use-current-python) before anything runs; optional parts (TensorRT, nvtripy) are not listed
    imports: tuple[str, ...] = ()
    # self-contained modules (stdlib at import) that evaluation/launch/envs.py copies into the environment's site-packages
    # with a .pth line calling their install() when any interpreter of it starts (also into an environment that
    # exists already): e.g. utils.torchvision_hook, so that `import torchvision` works without the suite's code
    site_hooks: tuple[str, ...] = ()


# environments that are not a toolchain: the shared layer's tests and the report (pandas, matplotlib, scipy), and
# the Ray driver / task wrapper of `bench --cluster` (evaluation/launch/cluster.py; docs/scale-out.md)
SUPPORT_ENVS: dict[str, EnvDecl] = {
    "report": EnvDecl("report", (Part("report.txt"),), tests="tests/common",
                      imports=("numpy", "pandas", "matplotlib", "scipy", "tabulate")),
    "ray": EnvDecl("ray", (Part("ray.txt"),), tests="tests/cluster", tests_last=True, imports=("ray", "numpy")),
}


# ------------------------------------------------------------------------------ toolchains

@dataclass(frozen=True)
class Toolchain:
    name: str
    route: str  # "module:attribute" of its Route object, resolved lazily (quantization.kit.route_for)
    env: EnvDecl
    # task -> ((method, precision), ...) it produces for every model of that task, in display order
    variants: dict[str, tuple[tuple[str, str], ...]]
    packages: tuple[str, ...] = ()  # distributions recorded in every row's environment record
    devices: tuple[str, ...] = ("cpu",)  # devices its rows may target ("cpu", "cuda")
    device_flag: bool = False  # its route takes `--devices` (comma list of the declared devices, or auto)
    needs: tuple[str, ...] = ()  # toolchains whose artifacts it reads (they run first)
    # (toolchain, method) of the FP32 row that deltas and `speedup` compare against
    baseline: tuple[str, str] | None = None
    # method -> baseline method of the same toolchain, where the fair FP32 comparison differs
    method_baselines: dict[str, str] = field(default_factory=dict)
    requires: str = ""  # one line: what it needs beyond its environment
    marker: str = "x"  # matplotlib marker in plots
    prepares_models: bool = False  # its environment runs models.prepare (training, ONNX export, op counts)
    # device -> methods that run on that device only when named in --methods (bench, sweeps, the route); on the
    # other devices they run by default
    opt_in: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # method -> the method whose deployed graph and kernels it shares (only calibrated scales differ): with
    # --weights random (no accuracy to tell them apart; latency, size and memory identical) only the latter runs,
    # unless --methods names the twin
    latency_twins: dict[str, str] = field(default_factory=dict)
    # task -> methods whose built variant generates with a KV cache (Built.generate): their items get a decode row
    generates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # devices whose rows are accuracy only (not a deployment runtime there): one row at batch 1, never timed
    accuracy_only: tuple[str, ...] = ()
    # device -> {method: why it has no path there}: planned (the table says why) but written skipped without a build
    unsupported: dict[str, dict[str, str]] = field(default_factory=dict)
    # method -> factor on the default seconds planned for one of its GPU items that no earlier run has measured (a
    # method that compiles much longer than the others, e.g. max-autotune)
    estimate_factor: dict[str, float] = field(default_factory=dict)
    # method -> the model's quantization scope it quantizes (ModelDecl.scopes), where not the default
    method_scopes: dict[str, str] = field(default_factory=dict)
    # methods that run by default only with --weights random (elsewhere when --methods names them): the scope
    # variants, whose point is the real model's speed and whose cost the embedded default run need not carry
    random_only: tuple[str, ...] = ()
    # the architectures its route implements ("hf:gpt2"), where not every architecture of a task: other models of
    # the task have no variants of it
    archs: tuple[str, ...] = ()
    # sweeps (evaluation/launch/sweep.py) that take it when no --toolchain(s) names one: "calib", "batch"
    default_sweeps: tuple[str, ...] = ()
    # methods a calibration sweep leaves out unless --methods names them (too slow to repeat once per size)
    calib_sweep_exclude: tuple[str, ...] = ()
    # methods that use no calibration data (weights only, casts, activation ranges computed at run time): a
    # calibration sweep has nothing to vary for them
    uncalibrated: tuple[str, ...] = ()
    # task -> the methods a batch sweep runs by default (a task not listed: all of its methods)
    batch_sweep_methods: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # "module:attribute" of its device ceilings in its route folder (a utils.ceilings.Provider: its libraries' CPU
    # matmul and memory kernels, the GPU's own through it), resolved lazily; a toolchain declaring one measures them in
    # its environment and the bench merges them into the run's device record
    ceilings: str = ""
    # analysis -> the module in its route folder that implements it for this toolchain (quantization/<toolchain>/...),
    # imported lazily (utils.registry.tool) by the evaluation command of that name, which documents what the module
    # provides: layer_report, planted, profile, options, vendor (evaluation/analysis/<name>.py); dq (the on/off
    # timing the results table's notes cite, python -m <module>)
    tools: dict[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        """`python -m <module>` entry point of the route: its package (quantization/<toolchain>/__main__.py)."""
        mod = self.route.split(":", 1)[0]
        return mod[: -len(".route")] if mod.endswith(".route") else mod

    def model_variants(self, model: str) -> tuple[tuple[str, str], ...]:
        """((method, precision), ...) this toolchain produces for `model` (by its task and architecture)."""
        d = model_decl(model)
        if self.archs and d.arch not in self.archs:
            return ()
        return self.variants.get(d.task, ())

    def methods(self, model: str) -> tuple[str, ...]:
        return tuple(m for m, _ in self.model_variants(model))

    def models(self) -> tuple[str, ...]:
        """The declared models it has variants of."""
        return tuple(m for m in MODELS if self.methods(m))

    def generating(self, model: str) -> tuple[str, ...]:
        """The methods whose variants of `model` also generate (decode rows)."""
        return self.generates.get(task_of(model), ()) if self.methods(model) else ()

    def default_methods(self, model: str, device: str, weights: str = "embedded") -> tuple[str, ...]:
        """The methods a run on `device` does when --methods names none: all but the device's opt-in ones (and, with
        random weights, but the latency twins)."""
        skip = set(self.opt_in.get(device, ())) | (set(self.latency_twins) if weights == "random" else set())
        skip |= set(self.random_only) if weights != "random" else set()
        return tuple(m for m in self.methods(model) if m not in skip)

    def opt_in_text(self) -> str:
        """'cpu: a,b' for --help, or ''."""
        return "; ".join(f"{d}: {','.join(ms)}" for d, ms in self.opt_in.items() if ms)

    def precision(self, model: str, method: str) -> str:
        return dict(self.model_variants(model))[method]

    def baseline_for(self, method: str) -> tuple[str, str] | None:
        if method in self.method_baselines:
            return (self.name, self.method_baselines[method])
        return self.baseline

    def default_device(self) -> str:
        return self.devices[0]


_TASKS = (CLASSIFIER, CAUSAL_LM)
_TORCH_HALF = (("eager-fp16", "fp16"), ("eager-bf16", "bf16"), ("inductor-fp16", "fp16"), ("inductor-bf16", "bf16"))
# the GPU fast paths PyTorch and torchao document, each one change from its baseline (docs/routes/torch.md, docs/gpu.md):
# channels-last + cudnn.benchmark (ResNet50), torch.compile mode="max-autotune" (Triton autotuning + CUDA graphs), and
# torchao FP8 (dynamic activations and weights, compute capability >= 8.9) on GPT-2's block linears
_TORCH_CL = (("inductor-cl", "fp32"), ("inductor-cl-fp16", "fp16"))
_TORCH_MAX = (("inductor-max", "fp32"), ("inductor-max-fp16", "fp16"))
_TORCH_GPU = {CLASSIFIER: _TORCH_CL + _TORCH_MAX, CAUSAL_LM: _TORCH_MAX + (("fp8", "fp8"),)}
_TORCH_CUDA_ONLY = {
    "inductor-cl": "channels-last + cudnn.benchmark is cuDNN's convolution fast path (NHWC tensor-core kernels, "
                   "algorithms picked by timing); on the CPU channels-last was measured for the eager and inductor "
                   "rows (docs/routes/torch.md, Fast-path settings) and there is no cuDNN",
    "fp8": "torchao's Float8DynamicActivationFloat8WeightConfig runs FP8 matmuls (torch._scaled_mm) on NVIDIA GPUs of "
           "compute capability >= 8.9 (Ada, Hopper); it has no CPU path",
}
_BASE = ("numpy", "scikit-learn")
_BASE_IMPORTS = ("numpy", "sklearn", "tqdm")

_DECLS = (
    Toolchain(
        name="torch",
        route="quantization.torch.route:ROUTE",
        env=EnvDecl("torch", (Part("torch.txt"), Part("torch-nodeps.txt", ("--no-deps",))), tests="tests/torch",
                    imports=_BASE_IMPORTS + ("torch", "torchvision", "torchao", "transformers", "tokenizers", "onnx"),
                    site_hooks=("utils.torchvision_hook",)),
        # fx/pt2e: x86 CPU backend only; *-fp16/*-bf16: cuda, and the CPU where oneDNN has that dtype natively (opt-in
        # there: see opt_in)
        variants={
            CLASSIFIER: (("eager", "fp32"), ("fx", "int8"), ("inductor", "fp32"), ("pt2e", "int8"),
                         *_TORCH_HALF, *_TORCH_GPU[CLASSIFIER]),
            CAUSAL_LM: (("eager", "fp32"), ("weight-only", "int8"), ("dynamic", "int8"), ("inductor", "fp32"),
                        *_TORCH_HALF, *_TORCH_GPU[CAUSAL_LM]),
        },
        packages=_BASE + ("torch", "torchvision", "torchao", "transformers", "tokenizers", "onnx", "datasets"),
        devices=("cpu", "cuda"),
        device_flag=True,
        baseline=("torch", "eager"),
        method_baselines={"pt2e": "inductor", "inductor-fp16": "inductor", "inductor-bf16": "inductor",
                          **{m: "inductor" for m, _ in _TORCH_CL + _TORCH_MAX}},
        marker="o",
        prepares_models=True,
        # the half-precision casts on the CPU run only when named in --methods: slow (compiled or emulated there) and
        # rarely what a CPU deployment runs; on cuda they run by default. The GPU fast paths likewise: the CPU default
        # plan is unchanged by them (inductor-max runs on the CPU when named; the others are declared cuda-only below)
        opt_in={"cpu": tuple(m for m, _ in _TORCH_HALF) + tuple(dict.fromkeys(m for vs in _TORCH_GPU.values()
                                                                                 for m, _ in vs))},
        unsupported={"cpu": {"inductor-cl": _TORCH_CUDA_ONLY["inductor-cl"],
                             "inductor-cl-fp16": _TORCH_CUDA_ONLY["inductor-cl"], "fp8": _TORCH_CUDA_ONLY["fp8"]},
                     "cuda": {
            "fx": "fx runs the x86 CPU backend (FX INT8 with fbgemm/oneDNN quantized kernels); it has no CUDA path",
            "pt2e": "pt2e uses X86InductorQuantizer, which targets the x86 CPU backend (oneDNN INT8 through inductor's "
                    "CPU code generation); it has no CUDA path"}},
        # Hugging Face's cached decoding: eager (any dtype) and the torchao variants; inductor compiles static shapes
        generates={CAUSAL_LM: ("eager", "weight-only", "dynamic", "eager-fp16", "eager-bf16", "fp8")},
        # max-autotune benchmarks candidate kernels at every new shape (scoring, each batch): not measured here yet,
        # planned at several times the default compile until a run's item records say better
        estimate_factor={m: 6.0 for m, _ in _TORCH_MAX},
        default_sweeps=("batch",),
        calib_sweep_exclude=("pt2e",),  # compiles two graphs with torch.compile per run
        # weights only, dynamic activation ranges (fp8: dynamic scales), and the half-precision casts
        uncalibrated=("weight-only", "dynamic", "fp8", *(m for m, p in _TORCH_HALF + _TORCH_CL + _TORCH_MAX
                                                           if p != "fp32")),
        batch_sweep_methods={CLASSIFIER: ("eager", "fx"), CAUSAL_LM: ("eager", "dynamic")},
        ceilings="quantization.torch.ceilings:CEILINGS",
        tools={"layer_report": "quantization.torch.layer_report", "planted": "quantization.torch.planted",
               "profile": "quantization.torch.profile", "vendor": "quantization.torch.vendor"},
    ),
    Toolchain(
        name="onnxruntime",
        route="quantization.onnxruntime.route:ROUTE",
        env=EnvDecl("onnxruntime", (Part("onnxruntime.txt"),), tests="tests/onnxruntime",
                    imports=_BASE_IMPORTS + ("onnx", "onnxruntime")),
        # minmax+head: the "head" scope (a language model's LM head quantized too), beside minmax's default scope
        variants={CLASSIFIER: (("fp32", "fp32"), ("minmax", "int8"), ("entropy", "int8"), ("percentile", "int8")),
                  CAUSAL_LM: (("fp32", "fp32"), ("minmax", "int8"), ("entropy", "int8"), ("percentile", "int8"),
                              ("minmax+head", "int8"))},
        packages=_BASE + ("onnx", "onnxruntime", "onnxruntime-gpu"),
        devices=("cpu", "cuda"),
        device_flag=True,
        needs=("torch",),
        baseline=("onnxruntime", "fp32"),
        latency_twins={"entropy": "minmax", "percentile": "minmax"},
        generates={CAUSAL_LM: ("fp32", "minmax", "entropy", "percentile")},  # the exported KV-cache decoder graph
        marker="s",
        method_scopes={"minmax+head": "head"},
        random_only=("minmax+head",),
        default_sweeps=("calib", "batch"),
        batch_sweep_methods={CLASSIFIER: ("fp32", "minmax"), CAUSAL_LM: ("fp32", "minmax")},
        ceilings="quantization.onnxruntime.ceilings:CEILINGS",
        tools={"layer_report": "quantization.onnxruntime.layer_report", "vendor": "quantization.onnxruntime.vendor"},
    ),
    Toolchain(
        name="modelopt-onnx",
        route="quantization.modelopt_onnx.route:ROUTE",
        env=EnvDecl("modelopt-onnx", (Part("modelopt-onnx.txt"),), tests="tests/modelopt_onnx",
                    imports=_BASE_IMPORTS + ("torch", "onnx", "onnxruntime", "modelopt", "requests")),
        variants={t: (("max", "int8"), ("entropy", "int8"), ("fp8", "fp8"), ("int4", "int4")) for t in _TASKS},
        packages=_BASE + ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "nvidia-modelopt"),
        devices=("cpu", "cuda"),
        device_flag=True,
        needs=("torch",),
        baseline=("onnxruntime", "fp32"),
        latency_twins={"entropy": "max"},
        marker="D",
        batch_sweep_methods={CLASSIFIER: ("max",)},
        tools={"options": "quantization.modelopt_onnx.options"},
    ),
    Toolchain(
        name="openvino",
        route="quantization.openvino.route:ROUTE",
        env=EnvDecl("openvino", (Part("openvino.txt"),), tests="tests/openvino",
                    imports=_BASE_IMPORTS + ("openvino", "nncf", "onnx")),
        # int8: NNCF post-training quantization (GPT-2 with model_type=transformer, the scope's kept layers in NNCF's
        # ignored scope); int8+head: the same with GPT-2's LM head quantized too ("head" scope); int8-wo / int4-wo:
        # NNCF weight-only compression (INT8_ASYM; INT4_SYM, group 128, embedding and LM head kept INT8_ASYM by NNCF)
        variants={CLASSIFIER: (("fp32", "fp32"), ("int8", "int8")),
                  CAUSAL_LM: (("fp32", "fp32"), ("int8", "int8"), ("int8-wo", "int8"), ("int4-wo", "int4"),
                              ("int8+head", "int8"))},
        packages=_BASE + ("openvino", "nncf", "onnx"),
        devices=("cpu",),
        needs=("torch",),  # reads the FP32 ONNX that models.prepare exports
        baseline=("openvino", "fp32"),
        marker="P",
        method_scopes={"int8+head": "head"},
        random_only=("int8+head",),
        tools={"vendor": "quantization.openvino.vendor", "dq": "quantization.openvino.dq"},
    ),
    Toolchain(
        name="modelopt-tripy",
        route="quantization.modelopt_tripy.route:ROUTE",
        env=EnvDecl("modelopt-tripy", (Part("modelopt-tripy.txt"), Part("modelopt-tripy-gpu.txt", optional=True)),
                    tests="tests/modelopt_tripy",
                    imports=_BASE_IMPORTS + ("torch", "transformers", "tokenizers", "modelopt", "requests")),
        # the seed's route: Hugging Face GPT-2 re-implemented in Tripy (quantization/modelopt_tripy/model.py)
        variants={CAUSAL_LM: (("fp32", "fp32"), ("int8-weight-only", "int8"), ("int4-weight-only", "int4"),
                              ("float8", "fp8"))},
        archs=("hf:gpt2",),
        packages=_BASE + ("torch", "transformers", "tokenizers", "nvidia-modelopt", "nvtripy", "tensorrt-cu12",
                          "datasets"),
        devices=("cpu", "cuda"),
        needs=("torch",),
        baseline=("modelopt-tripy", "fp32"),
        requires="nvtripy (NVIDIA's package index) and a CUDA GPU for the Tripy rows",
        accuracy_only=("cpu",),  # ModelOpt fake quant and the NumPy/torch reference runtime: no CPU latency
        marker="^",
    ),
    Toolchain(
        name="tensorrt",
        route="quantization.tensorrt.route:ROUTE",
        env=EnvDecl("tensorrt", (Part("tensorrt.txt"), Part("tensorrt-gpu.txt", optional=True)), tests="tests/tensorrt",
                    imports=_BASE_IMPORTS + ("onnx", "cuda.bindings")),
        variants={t: (("fp32", "fp32"), ("fp16", "fp16"), ("int8-entropy", "int8"), ("int8-qdq", "int8"))
                  for t in _TASKS},
        packages=_BASE + ("onnx", "tensorrt", "tensorrt-cu12", "cuda-python", "cuda-bindings"),
        devices=("cuda",),
        needs=("torch", "modelopt-onnx"),  # the FP32 ONNX, and ModelOpt's Q/DQ ONNX for int8-qdq
        baseline=("tensorrt", "fp32"),
        requires="TensorRT (NVIDIA's package index) and a CUDA GPU",
        marker="v",
        batch_sweep_methods={CLASSIFIER: ("fp32", "fp16", "int8-qdq")},
    ),
)
TOOLCHAINS: dict[str, Toolchain] = {t.name: t for t in _DECLS}


def _run_order() -> tuple[str, ...]:
    """Declaration order, except that a toolchain runs after every toolchain it `needs` (stable topological sort)."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ValueError(f"toolchain dependency cycle through {name}")
        visiting.add(name)
        for dep in TOOLCHAINS[name].needs:
            visit(dep)
        visiting.discard(name)
        done.append(name)

    for n in TOOLCHAINS:
        visit(n)
    return tuple(done)


ORDER = _run_order()
# the FP32 reference runtime every other runtime's FP32 outputs are compared with (cross-runtime fidelity)
REFERENCE = ("torch", "eager")
PREPARE_TOOLCHAIN = next(t.name for t in _DECLS if t.prepares_models)


def all_envs() -> dict[str, EnvDecl]:
    """Every environment: the toolchains' and the support ones (report)."""
    out = {t.env.name: t.env for t in _DECLS}
    out.update(SUPPORT_ENVS)
    return out


def test_order() -> list[str]:
    """Environments whose tests the test command runs, in order: the model-preparing toolchain first (its tests
    train and export the embedded models later folders use), then the support environments, then the run order, then
    the support environments whose tests drive the toolchains' environments (`tests_last`, e.g. the cluster's)."""
    envs = all_envs()
    names = [TOOLCHAINS[PREPARE_TOOLCHAIN].env.name, *(n for n, d in SUPPORT_ENVS.items() if not d.tests_last),
             *(TOOLCHAINS[t].env.name for t in ORDER), *(n for n, d in SUPPORT_ENVS.items() if d.tests_last)]
    return [n for n in dict.fromkeys(names) if envs[n].tests]


def recorded_packages() -> tuple[str, ...]:
    """Every distribution any toolchain records (the environment record looks up the ones installed)."""
    return tuple(dict.fromkeys(p for t in _DECLS for p in t.packages))


def with_tool(name: str) -> tuple[str, ...]:
    """The toolchains that declare the analysis `name` (Toolchain.tools), in run order."""
    return tuple(t for t in ORDER if name in TOOLCHAINS[t].tools)


def tool(toolchain: str, name: str):
    """A toolchain's module for the analysis `name` (Toolchain.tools), imported now."""
    return resolve(TOOLCHAINS[toolchain].tools[name])


def resolve(ref: str):
    """'module:attr' -> the object (imports the module only now)."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


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
