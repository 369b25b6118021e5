"""Each CPU route beside its vendor's own minimal recipe, on the same FP32 artifact and the same quantization scope,
timed in the same interleaved trials.

    python3 -m evaluation.analysis.vendor                                    # both models, random weights -> results/local/
    python3 -m evaluation.analysis.vendor --models resnet50 --toolchains onnxruntime --min-iters 5
    python3 -m evaluation.analysis.vendor --publish                          # results/vendor_<model>.csv (docs/routes/*.md)

Stdlib launcher (like evaluation.launch.sweep): prepares the models in the torch environment, then runs this module's
`measure` sub-command in each toolchain's environment. There, for every (route method, vendor recipe) pair, the
route's variant is built exactly as the bench builds it (quantization.kit.build_variant) and the vendor's minimal
documented recipe is applied to the same FP32 artifact (the manifest's ONNX, or the same torch checkpoint) with
the same calibration samples and the same scope (the layers the route's scope keeps in the higher precision are
excluded from the recipe too); then both are timed at batch 1 and the model's large batch in the same interleaved
trials (utils.harness.interleaved). Rows: each side's p50, the time ratio route / vendor with a paired 95 %
interval (utils.stats.speedup_ci), whether the route is within 10 % of the recipe (yes: the ratio is; no: its whole
interval is outside; unclear: the ratio is outside, the interval reaches inside), each side's coverage (% of the
model's MACs run in reduced precision, read from its runtime), and what the route does differently.

Recipes (the vendors' documented minimal paths; nothing of the suite's own tuning):
  onnxruntime  quant_pre_process, quantize_static(QDQ, per_channel=True, U8 activations / S8 weights (ORT's advice for
               x86-64: its default S8 activations leave MatMuls and convolutions unfused on this CPU EP); GPT-2:
               op_types_to_quantize MatMul/Gemm), the scope's kept nodes in nodes_to_exclude; InferenceSession with
               only intra_op_num_threads set
  openvino     core.read_model(onnx), nncf.quantize(model, nncf.Dataset(...)) (GPT-2: model_type TRANSFORMER),
               the scope's kept ops in an IgnoredScope; core.compile_model(model, "CPU") with the thread count and
               INFERENCE_PRECISION_HINT f32 (the CPU's bf16 default would change the kept layers' precision)
  torch fx     prepare_fx(model, get_default_qconfig_mapping("x86"), example) -> calibrate -> convert_fx, eager
  torch pt2e   torch.export (dynamic batch) -> prepare_pt2e(X86InductorQuantizer default config) -> calibrate ->
               convert_pt2e -> torch.compile with inductor freezing
  torch gpt2   torchao quantize_(model, Int8DynamicActivationInt8WeightConfig()) on the scope's linear layers (GPT-2's
               Conv1D layers made nn.Linear first: torchao quantizes nn.Linear), called as model(input_ids)
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from utils.cli import ArgParser, positive_int
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.registry import MODEL_DECLS, MODELS, PREPARE_TOOLCHAIN, TOOLCHAINS, parse_list

# toolchain -> model -> route methods compared with their vendor's recipe
PAIRS: dict[str, dict[str, tuple[str, ...]]] = {
    "torch": {"resnet50": ("fx", "pt2e"), "gpt2": ("dynamic",)},
    "onnxruntime": {"resnet50": ("minmax",), "gpt2": ("minmax",)},
    "openvino": {"resnet50": ("int8",), "gpt2": ("int8",)},
}
RECIPE = {
    ("onnxruntime", "minmax"): "ORT quant_pre_process + quantize_static (QDQ, per-channel, U8S8, MinMax), default "
                               "session",
    ("openvino", "int8"): "NNCF quantize + compile_model(CPU) (threads, f32 hint)",
    ("torch", "fx"): "prepare_fx/convert_fx (x86 qconfig mapping), GraphModule called eagerly",
    ("torch", "pt2e"): "torchao pt2e X86InductorQuantizer + torch.compile (freezing)",
    ("torch", "dynamic"): "torchao quantize_ Int8DynamicActivationInt8WeightConfig, model(input_ids)",
}
# what the route's deployment does beyond the recipe (said in every row; the reason when a ratio is outside 10 %)
DIFFERENCES = {
    ("onnxruntime", "minmax"): "route: U8/S8 with ActivationSymmetric=False spelled out, strided calibration for large "
                               "models, session ORT_ENABLE_ALL + ORT_SEQUENTIAL + allow_spinning=0 (the suite times "
                               "several sessions in one process, where spinning sessions slow each other); the "
                               "recipe keeps ORT's default intra-op spinning, faster for a lone session on an idle "
                               "machine at small batches, and in these interleaved trials its idle threads spin on "
                               "after each call and take the cores from the route's next one (docs/routes/onnx.md)",
    ("openvino", "int8"): "route: PERFORMANCE_HINT LATENCY, NUM_STREAMS 1, no CPU pinning, IR saved without FP16 "
                          "compression, preset performance and fast bias correction spelled out",
    ("torch", "fx"): "route: the converted model traced and frozen as TorchScript (torch.jit.trace + freeze)",
    ("torch", "pt2e"): "route: the same recipe, spatial dims exported at the latency resolution from the calibrated "
                       "graph's state",
    ("torch", "dynamic"): "route: logits only (use_cache=False), Conv1D made nn.Linear the same way",
}
WITHIN = 0.10
FIELDS = ("toolchain", "model", "weights", "route_method", "vendor_recipe", "batch", "route_p50_ms", "vendor_p50_ms",
          "route_vs_vendor", "ci_low", "ci_high", "within_10pct", "route_coverage_pct", "vendor_coverage_pct",
          "trials", "status", "note")


def say(msg: str) -> None:
    print(f"[vendor {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def default_batches(model: str) -> tuple[int, ...]:
    """Batch 1 and the model's large batch (the largest of its declared latency batches)."""
    return tuple(sorted({1, max(MODEL_DECLS[model].batches)}))


# ------------------------------------------------------------------------------ the launcher (stdlib)

def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python3 -m evaluation.analysis.vendor", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="cmd")
    for p in (ap, sub.add_parser("measure", help="(internal) one toolchain and model, in its environment")):
        p.add_argument("--models", "--model", dest="models", default=",".join(m for m in MODELS),
                       help="comma list of models")
        p.add_argument("--toolchains", "--toolchain", dest="toolchains", default=",".join(PAIRS),
                       help=f"comma list of {', '.join(PAIRS)}")
        p.add_argument("--methods", default=None, help="route methods to compare (default: " + "; ".join(
            f"{t}: {', '.join(dict.fromkeys(x for v in ms.values() for x in v))}" for t, ms in PAIRS.items()) + ")")
        p.add_argument("--weights", default="random", choices=("embedded", "random"),
                       help="random (default): the real-size models; embedded: the small trained ones")
        p.add_argument("--batches", default=None, help="comma list (default: 1 and the model's large batch: " + "; ".join(
            f"{m} {','.join(map(str, default_batches(m)))}" for m in MODELS) + ")")
        p.add_argument("--calib-samples", type=positive_int, default=None,
                       help="calibration samples (default: the declaration's for the weights)")
        p.add_argument("--threads", type=positive_int, default=2)
        p.add_argument("--min-iters", type=positive_int, default=10, help="interleaved trials per batch")
        p.add_argument("--out", type=Path, default=None, help="folder of the CSVs (default results/local/)")
        p.add_argument("--publish", action="store_true", help="write the committed CSVs in results/")
        p.add_argument("-v", "--verbose", action="store_true")
    sub.choices["measure"].add_argument("--part", type=Path, required=True, help="JSON file the rows go to")
    return ap


def selection(args) -> list[tuple[str, str, tuple[str, ...]]]:
    """(toolchain, model, route methods) the flags select, checked against PAIRS (one line, exit 2, when empty)."""
    tcs = parse_list("toolchain", args.toolchains, tuple(PAIRS))
    models = parse_list("model", args.models, MODELS)
    named = tuple(x.strip() for x in args.methods.split(",") if x.strip()) if args.methods else None
    out = []
    for tc in tcs:
        for m in models:
            methods = tuple(x for x in PAIRS[tc].get(m, ()) if named is None or x in named)
            if methods:
                out.append((tc, m, methods))
    if not out:
        raise SuiteError("the flags select no (route, vendor recipe) pair; pairs: " + "; ".join(
            f"{t}/{m}: {','.join(v)}" for t, ms in PAIRS.items() for m, v in ms.items()))
    return out


def batches_of(args, model: str) -> tuple[int, ...]:
    if not args.batches:
        return default_batches(model)
    try:
        out = tuple(sorted({int(x) for x in args.batches.split(",") if x.strip()}))
    except ValueError:
        raise SuiteError(f"--batches must be a comma list of integers, got {args.batches!r}") from None
    if not out or min(out) < 1:
        raise SuiteError("--batches must name batches >= 1")
    return out


def out_dir(args) -> Path:
    if args.publish and args.out is not None:
        raise SuiteError("--publish writes results/; drop --out")
    return RESULTS_DIR if args.publish else (args.out or LOCAL_DIR)


def write_csv(path: Path, rows: list[dict]) -> Path:
    from utils.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def launch(args) -> int:
    from evaluation.launch import envs

    pairs = selection(args)
    out = out_dir(args)
    models = list(dict.fromkeys(m for _, m, _ in pairs))
    for m in models:
        batches_of(args, m)
    prep_env = TOOLCHAINS[PREPARE_TOOLCHAIN].env.name
    try:
        envs.ensure_env(prep_env)
    except envs.EnvError as exc:
        raise SuiteError(f"environment '{prep_env}' unavailable: {exc}") from None
    say(f"preparing {', '.join(models)} ({args.weights}) in the {prep_env} environment")
    rc = envs.run_in_env(prep_env, ["-m", "models.prepare", "--model", ",".join(models), "--weights", args.weights,
                                    "--threads", str(args.threads)]).returncode
    if rc:
        raise SuiteError(f"models.prepare exited {rc}")
    rows: dict[str, list[dict]] = {m: [] for m in models}
    failed = []
    with tempfile.TemporaryDirectory(prefix="vendor-") as tmp:
        for tc, model, methods in pairs:
            env = TOOLCHAINS[tc].env.name
            part = Path(tmp) / f"{tc}-{model}.json"
            cmd = ["-m", "evaluation.analysis.vendor", "measure", "--toolchain", tc, "--model", model, "--methods",
                   ",".join(methods), "--weights", args.weights, "--threads", str(args.threads), "--min-iters",
                   str(args.min_iters), "--part", str(part)]
            for flag, val in (("--batches", args.batches), ("--calib-samples", args.calib_samples)):
                if val is not None:
                    cmd += [flag, str(val)]
            say(f"{tc} / {model}: {', '.join(methods)} beside the vendor's recipe (in the {env} environment)")
            try:
                envs.ensure_env(env)
                rc = envs.run_in_env(env, cmd + (["-v"] if args.verbose else [])).returncode
            except envs.EnvError as exc:
                rc, why = 1, f"environment '{env}' unavailable: {exc}"
            else:
                why = f"exit code {rc}"
            got = json.loads(part.read_text()) if part.is_file() else []
            rows[model] += got
            done = {r["route_method"] for r in got}
            for meth in methods:
                if meth not in done:
                    failed.append(f"{tc}/{model}/{meth}: {why}")
                    rows[model].append({"toolchain": tc, "model": model, "weights": args.weights, "route_method": meth,
                                        "vendor_recipe": RECIPE.get((tc, meth), ""), "status": "failed", "note": why})
    for m, rs in rows.items():
        path = write_csv(out / f"vendor_{m}.csv", rs)
        say(f"{len(rs)} rows -> {path}")
        for r in rs:
            if r.get("status") == "ok":
                say(f"  {r['toolchain']} {r['route_method']} b{r['batch']}: route {r['route_p50_ms']} ms, vendor "
                    f"{r['vendor_p50_ms']} ms, route/vendor {r['route_vs_vendor']} [{r['ci_low']}-{r['ci_high']}], "
                    f"coverage {r['route_coverage_pct']} / {r['vendor_coverage_pct']} %")
    for f in failed:
        say(f"failed: {f}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------ in a toolchain's environment

@dataclass
class Recipe:
    """The vendor recipe's deployed model: `timed(x)` -> zero-argument call, the layers its runtime ran in reduced
    precision (torch module paths, or runtime names of the FP32 ONNX's nodes), what it is, and how to release it."""

    timed: Callable[[Any], Callable[[], object]]
    reduced_layers: list[str] | None = None
    reduced_nodes: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    close: Callable[[], object] | None = None


def _calib(ctx) -> list:
    from quantization.kit import calibration_batches

    return calibration_batches(ctx)


def _kept(ctx, method: str):
    from quantization.kit.macs import nodes_kept

    _, scope = ctx.scope_for(method)
    return scope, (nodes_kept(ctx.macs, scope.keeps) if scope.keep else [])


def recipe_onnxruntime(ctx, method: str, threads: int) -> Recipe:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    from quantization.kit import cache
    from quantization.kit.onnx import provider_record, source_onnx

    src, sha = source_onnx(ctx.manifest)
    _, kept = _kept(ctx, method)
    lm = ctx.task.kind == "language-model"
    name = ctx.task.input_name
    key = {"src": sha, "recipe": RECIPE[("onnxruntime", method)], "kept": kept, "calib_sha": ctx.hashes["calib_sha"],
           "n_calib": ctx.hashes["n_calib"], "ort": ort.__version__}
    out = cache.artifact_path(ctx.source.cache_dir / "vendor", "ort-quantize_static", key)

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b}

    def make(tmp_out: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="vendor-ort-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(pre))
            kw = {"op_types_to_quantize": ["MatMul", "Gemm"]} if lm else {}
            quantize_static(str(pre), str(tmp_out), Reader(_calib(ctx)), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=kept, **kw)
        return {"kept": kept}

    path, _, reused = cache.cached_artifact(out, make)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    probe = ctx.task.latency_input(1, ctx.manifest, ctx.data).x
    rec = provider_record(path, threads, ["CPUExecutionProvider"], {name: probe})

    def timed(x):
        feed = {name: x}
        return lambda: sess.run(None, feed)

    return Recipe(timed, reduced_nodes=rec.reduced_nodes(),
                  notes=[f"{rec.int_kernels} integer kernels" + (", artifact reused" if reused else "")])


def recipe_openvino(ctx, method: str, threads: int) -> Recipe:
    import nncf
    import openvino as ov

    from quantization.kit.macs import node_of

    core = ov.Core()
    model = core.read_model(ctx.manifest["onnx"])
    scope, _ = _kept(ctx, method)
    ignored = []
    if scope.keep:
        table = ctx.macs
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution"):
                node = node_of(table, op.get_friendly_name())
                if node is not None and scope.keeps(table["nodes"][node]["layer"]):
                    ignored.append(op.get_friendly_name())
    kw = {"ignored_scope": nncf.IgnoredScope(names=ignored)} if ignored else {}
    if ctx.task.kind == "language-model":
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    batches = _calib(ctx)
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), **kw)
    compiled = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer(ctx.task.latency_input(1, ctx.manifest, ctx.data).x)
    reduced = _ov_reduced(compiled)

    def timed(x):
        return lambda: request.infer(x)

    return Recipe(timed, reduced_nodes=reduced, notes=[f"{len(ignored)} ops in NNCF's ignored scope"])


def _ov_reduced(compiled) -> list[str]:
    """originalLayersNames of the runtime layers holding MatMuls/convolutions whose kernel runs an integer or half type
    (read the same way as the route's runtime-precision record)."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()

        def get(k):
            return str(rt[k].astype(str)) if k in rt else ""

        if get("layerType") not in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Gemm",
                                    "FullyConnectedCompressed", "Subgraph", "ScaledDotProductAttention"):
            continue
        kernel = get("primitiveType")
        prec = kernel.rsplit("_", 1)[-1].lower() if "_" in kernel else get("runtimePrecision").lower()
        if prec in ("u8", "i8", "u4", "i4", "bf16", "f16"):
            out += [n for n in get("originalLayersNames").split(",") if n]
    return out


def _torch_scope_modules(ctx, method: str) -> tuple[str, ...]:
    scope, _ = _kept(ctx, method)
    return tuple(x for x in ctx.macs["layers"] if ":" not in x and scope.keeps(x)) if scope.keep else ()


def _quantized_module_paths(gm) -> list[str]:
    return [n for n, m in gm.named_modules() if type(m).__module__.startswith(("torch.ao.nn.quantized",
                                                                              "torch.ao.nn.intrinsic.quantized"))
            and "Packed" not in type(m).__name__ and ("Conv" in type(m).__name__ or "Linear" in type(m).__name__)]


def recipe_torch(ctx, method: str, threads: int) -> Recipe:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    calib = ctx.task.calib_array(ctx.data)
    if method == "dynamic":
        return _torchao_dynamic(ctx, method)
    from models.embedded import load_manifest_classifier

    model = load_manifest_classifier(ctx.manifest).eval()
    if method == "fx":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        mapping = get_default_qconfig_mapping("x86")
        for name in _torch_scope_modules(ctx, method):
            mapping = mapping.set_module_name(name, None)
        prepared = prepare_fx(model, mapping, (torch.from_numpy(calib[:1]),))
        with torch.no_grad():
            for i in range(0, len(calib), 32):
                prepared(torch.from_numpy(calib[i:i + 32]))
        q = convert_fx(prepared)
        reduced = _quantized_module_paths(q)
    else:  # pt2e
        import torch._inductor.config as inductor_config
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86_quantizer
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        res = int(ctx.manifest.get("latency_resolution", 224))
        if calib.shape[-1] != res:  # the export's spatial size is static: calibrate at the timed resolution
            calib = torch.nn.functional.interpolate(torch.from_numpy(calib), size=(res, res), mode="bilinear").numpy()
        example = (torch.from_numpy(np.ascontiguousarray(calib[:2])),)
        ep = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                 strict=True)
        quantizer = x86_quantizer.X86InductorQuantizer().set_global(
            x86_quantizer.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(ep.module(), quantizer)
        for i in range(0, len(calib), 32):
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + 32])))
        converted = convert_pt2e(prepared)
        reduced = []
        for n in converted.graph.nodes:
            if n.op == "call_function" and any(k in str(n.target) for k in ("conv", "linear")) and len(n.args) > 1 \
                    and all("dequantize" in str(getattr(a, "target", "")) for a in n.args[:2]):
                stack = n.meta.get("nn_module_stack") or {}
                if stack:
                    reduced.append(str(list(stack.values())[-1][0]))
        inductor_config.freezing = True
        q = torch.compile(converted)

    def timed(x):
        xt = torch.from_numpy(x)

        def once():
            with torch.no_grad():
                return q(xt)

        return once

    return Recipe(timed, reduced_layers=list(dict.fromkeys(reduced)))


def _torchao_dynamic(ctx, method: str) -> Recipe:
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from models.embedded import load_causal_lm
    from utils.torchvision_compat import import_torchvision

    import_torchvision()
    from transformers.pytorch_utils import Conv1D

    model = load_causal_lm(ctx.manifest["hf_dir"]).eval()
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]:
        parent, _, child = name.rpartition(".")
        lin = torch.nn.Linear(m.weight.shape[0], m.weight.shape[1], bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.weight.t())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        setattr(model.get_submodule(parent) if parent else model, child, lin)
    scope, _ = _kept(ctx, method)
    quantize_(model, Int8DynamicActivationInt8WeightConfig(),
              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and not scope.keeps(fqn))
    reduced = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and type(m.weight.data) is not torch.Tensor]

    def timed(x):
        ids = torch.from_numpy(x)

        def once():
            with torch.no_grad():
                return model(ids)

        return once

    return Recipe(timed, reduced_layers=reduced)


RECIPES = {"onnxruntime": recipe_onnxruntime, "openvino": recipe_openvino, "torch": recipe_torch}


def _coverage_pct(ctx, reduced_layers, reduced_nodes) -> float | None:
    from quantization.kit.macs import coverage, layers_of

    if reduced_layers is None and reduced_nodes is None:
        return None
    layers = list(reduced_layers or []) + (layers_of(ctx.macs, reduced_nodes) if reduced_nodes else [])
    return coverage(ctx.macs, layers)["coverage_pct"]


def measure_pair(toolchain: str, model: str, method: str, args) -> list[dict]:
    """Build the route's variant and the vendor's recipe, time both at each batch in the same interleaved trials."""
    import numpy as np

    from quantization.kit import build_variant, coverage_of
    from utils.harness import Timed, interleaved
    from utils.stats import speedup_ci

    argv = ["--weights", args.weights, "--threads", str(args.threads)]
    if args.calib_samples:
        argv += ["--calib-samples", str(args.calib_samples)]
    ctx, built = build_variant(toolchain, model, method, device="cpu", argv=argv)
    cov = coverage_of(ctx, built, method)
    recipe = RECIPES[toolchain](ctx, method, args.threads)
    vcov = _coverage_pct(ctx, recipe.reduced_layers, recipe.reduced_nodes)
    rows = []
    try:
        for b in batches_of(args, model):
            li = ctx.task.latency_input(b, ctx.manifest, ctx.data)
            fn = built.timed(li.x) if built.timed is not None else (lambda x=li.x: built.predict(x))
            units = {"route": Timed(fn, li.items, built.latency_kind, built.sync, built.timer),
                     "vendor": Timed(recipe.timed(li.x), li.items)}
            tr = interleaved(units, min_trials=args.min_iters, budget_s=0.0, warmup=2)
            r, v = tr.paired("route", "vendor")
            p, lo, hi = speedup_ci(r, v, paired=True)  # median(route) / median(vendor): > 1 when the route is slower
            within = "yes" if abs(p - 1.0) <= WITHIN else ("no" if lo > 1 + WITHIN or hi < 1 - WITHIN else "unclear")
            note = DIFFERENCES.get((toolchain, method), "")
            if within != "yes":
                note = (f"route {'slower' if p > 1 else 'faster'} than the recipe by {abs(p - 1) * 100:.0f} % "
                        f"(beyond {WITHIN * 100:.0f} %{'' if within == 'no' else ', though the interval reaches within'}"
                        "); " + note)
            if cov is not None and vcov is not None and abs(cov["coverage_pct"] - vcov) > 1.0:
                note = f"coverage differs (route {cov['coverage_pct']:.1f} %, recipe {vcov:.1f} %); " + note
            rows.append({"toolchain": toolchain, "model": model, "weights": args.weights, "route_method": method,
                         "vendor_recipe": RECIPE[(toolchain, method)], "batch": b,
                         "route_p50_ms": round(float(np.median(r)), 3), "vendor_p50_ms": round(float(np.median(v)), 3),
                         "route_vs_vendor": round(float(p), 3), "ci_low": round(float(lo), 3),
                         "ci_high": round(float(hi), 3), "within_10pct": within,
                         "route_coverage_pct": None if cov is None else round(cov["coverage_pct"], 1),
                         "vendor_coverage_pct": None if vcov is None else round(vcov, 1), "trials": len(r),
                         "status": "ok", "note": note})
    finally:
        for c in (built.close, recipe.close):
            if c is not None:
                c()
    return rows


def measure(args) -> int:
    (tc,) = parse_list("toolchain", args.toolchains, tuple(PAIRS))
    (model,) = parse_list("model", args.models, MODELS)
    methods = [m.strip() for m in (args.methods or ",".join(PAIRS[tc].get(model, ()))).split(",") if m.strip()]
    rows, rc = [], 0
    for method in methods:
        if method not in PAIRS[tc].get(model, ()):
            raise SuiteError(f"{tc}/{model} has no vendor recipe for {method!r} (pairs: {', '.join(PAIRS[tc][model])})")
        try:
            rows += measure_pair(tc, model, method, args)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - one pair failing leaves the others' rows
            from utils.errors import failure_reason

            rc = 1
            rows.append({"toolchain": tc, "model": model, "weights": args.weights, "route_method": method,
                         "vendor_recipe": RECIPE.get((tc, method), ""), "status": "failed", "note": failure_reason(exc)})
        from utils.atomic import atomic_write_json

        atomic_write_json(args.part, rows)
    return rc


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "measure":
        setup_logging(args.verbose)
        return measure(args)
    return launch(args)


if __name__ == "__main__":
    raise SystemExit(main())
