"""ModelOpt ONNX PTQ route: `modelopt.onnx.quantization.quantize` on the FP32 ONNX, evaluated with ONNX Runtime.

    python -m quantization.modelopt_onnx --model resnet50 --methods max,entropy

Methods: `max` / `entropy` (INT8, calibrated on the shared calibration subset), `fp8`
(FP8 E4M3 Q/DQ), `int4` (block-wise INT4 weights, AWQ-clip by default). On CPU the route
passes calibration_eps=["cpu"] and high_precision_dtype="fp32".

ModelOpt rewrites the .onnx it is given, so it only ever sees a private copy; the cached
source file's sha256 is checked after each run. Its Q/DQ placement targets TensorRT (Q/DQ
on the inputs of each quantized op, none on outputs); ONNX Runtime's CPU EP cannot fuse
that into integer kernels, so on CPU these models run FP32 compute plus (de)quantize work
and are slower than the FP32 ONNX. The rows say so (notes), and `--mo-option` exposes
quantize() options for placements ORT can fuse (see docs/routes/onnx.md).

Quantized files are listed in `<model cache>/modelopt-onnx/index.json` for the TensorRT
route (explicit-quantization engines from these Q/DQ models): one entry per artifact, keyed by
the hash of everything that made it (so different settings never overwrite each other), each
with its path relative to that folder and its file hash.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantization.kit import Calibration, ModelContext, SkipVariant, main_for, unavailable_import
from quantization.kit import onnx as onnx_kit
from utils import artifacts
from utils.atomic import atomic_write_json, sha256_file
from utils.errors import SuiteError

log = logging.getLogger(__name__)

TOOLCHAIN = "modelopt-onnx"
# method -> (quantize_mode, calibration_method)
MODES = {"max": ("int8", "max"), "entropy": ("int8", "entropy"), "fp8": ("fp8", "max"), "int4": ("int4", "awq_clip")}
INT4_METHODS = ("awq_clip", "awq_lite", "rtn_dq")
# quantize() keyword options a user may set with --mo-option (value parsed as JSON, else a comma list / string)
OPTION_NAMES = ("dq_only", "use_zero_point", "calibrate_per_node", "op_types_to_quantize", "op_types_to_exclude",
                "nodes_to_exclude", "op_types_needing_output_quant", "disable_mha_qdq", "simplify", "block_size",
                "high_precision_dtype", "opset", "direct_io_types")


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in OPTION_NAMES:
            raise SuiteError(f"bad --mo-option {item!r}; expected KEY=VALUE with KEY one of: {', '.join(OPTION_NAMES)}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = [v for v in value.split(",") if v] if "," in value or key.startswith(("op_types", "nodes")) \
                else value
    return out


@contextlib.contextmanager
def _in_dir(path: Path):
    """ModelOpt's INT4 path builds a C++ extension with cppimport/setuptools, which reads the current
    directory's layout (and exits the process on this repository's flat layout): run it elsewhere."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def modelopt_quantize(src: Path, out: Path, reader, *, mode: str, calibration_method: str, calibration_eps: list[str],
                      high_precision_dtype: str, options: dict | None = None) -> float:
    """Quantize a private copy of `src` into `out`; returns seconds. `src` is never handed to ModelOpt."""
    before = sha256_file(src)
    with tempfile.TemporaryDirectory(prefix="modelopt-") as tmp:
        work = onnx_kit.copy_for_tool(src, Path(tmp), "model.onnx")
        with _in_dir(Path(tmp)):
            try:
                from modelopt.onnx.quantization import quantize
                if mode == "int4":
                    import modelopt.onnx.quantization.extensions  # noqa: F401 - compile/load it here, not in the repo
            except SystemExit as exc:  # setuptools exits instead of raising
                raise RuntimeError(f"ModelOpt extension build exited ({exc})") from None
            kw = dict(high_precision_dtype=high_precision_dtype)
            kw.update(options or {})
            t0 = time.perf_counter()
            try:
                quantize(onnx_path=str(work), quantize_mode=mode, calibration_method=calibration_method,
                         calibration_data_reader=reader, calibration_eps=list(calibration_eps),
                         output_path=str(out.resolve()), log_level="WARNING", **kw)
            except SystemExit as exc:
                raise RuntimeError(f"ModelOpt exited ({exc})") from None
            secs = time.perf_counter() - t0
    if sha256_file(src) != before:  # would mean a copy was not used: never let this pass silently
        raise RuntimeError(f"ModelOpt modified its input {src}")
    if not out.is_file():
        raise RuntimeError("ModelOpt wrote no output model")
    return secs


def qdq_counts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear"),
            "nodes": len(ops), "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                                             default=None)}


def check_block_scales(path: Path) -> None:
    """Blocked DequantizeLinear (INT4) must have ceil(D/block) scales on its axis; say which weight is wrong."""
    import onnx
    m = onnx.load(str(path))
    shapes = {i.name: tuple(i.dims) for i in m.graph.initializer}
    for n in m.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "DequantizeLinear" or not attrs.get("block_size"):
            continue
        x, sc = shapes.get(n.input[0]), shapes.get(n.input[1])
        if x is None or sc is None:
            continue
        axis, bs = int(attrs.get("axis", 1)) % len(x), int(attrs["block_size"])
        want = tuple(-(-d // bs) if i == axis else d for i, d in enumerate(x))
        if sc != want:
            consumers = [c for c in m.graph.node if any(o in c.input for o in n.output)]
            what = ", ".join(f"{c.op_type}{'(transB=1)' if any(a.name == 'transB' and a.i for a in c.attribute) else ''}"
                             for c in consumers)
            raise RuntimeError(
                f"ModelOpt INT4 output is not valid ONNX for ONNX Runtime: {n.name} has block scales {list(sc)} for "
                f"weight {list(x)} (axis {axis}, block {bs}; needs {list(want)}), consumer {what}: the blocks were "
                f"computed along the other axis of a transposed weight")


def fix_block_axes(path: Path) -> list[str]:
    """Repair blocked DequantizeLinear nodes whose `axis` disagrees with their scale layout.

    ModelOpt 0.47's INT4 path blocks a Gemm(transB=1) weight (out, in) along `in` (correct: scales
    (out, in/128)) but writes axis=0, which ONNX Runtime rejects. When exactly one axis matches
    ceil(D/block) and every other dim matches, set `axis` to it. Returns the repaired node names.
    """
    import onnx

    m = onnx.load(str(path))
    shapes = {i.name: tuple(i.dims) for i in m.graph.initializer}
    fixed = []
    for n in m.graph.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type != "DequantizeLinear" or "block_size" not in attrs:
            continue
        x, sc = shapes.get(n.input[0]), shapes.get(n.input[1])
        if x is None or sc is None or len(x) != len(sc):
            continue
        bs = attrs["block_size"].i
        axis = attrs["axis"].i % len(x) if "axis" in attrs else 1
        fits = [a for a in range(len(x)) if sc == tuple(-(-d // bs) if i == a else d for i, d in enumerate(x))]
        if axis not in fits and len(fits) == 1:
            if "axis" in attrs:
                attrs["axis"].i = fits[0]
            else:
                n.attribute.append(onnx.helper.make_attribute("axis", fits[0]))
            fixed.append(n.name)
    if fixed:
        onnx.save(m, str(path))
    return fixed


def ort_loadable(path: Path) -> str | None:
    """None if ORT's CPU EP can load the model, else ORT's one-line complaint."""
    try:
        onnx_kit.make_session(path, 1, [onnx_kit.CPU_EP])
    except SuiteError as exc:
        return str(exc)
    return None


def qdq_nodes(path: Path) -> list[str]:
    """MAC nodes (MatMul/Gemm/Conv) of a Q/DQ model whose second input comes out of a DequantizeLinear: what ModelOpt
    quantized, whatever the runtime then makes of it."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1
            and n.input[1] in dq]


INDEX = "index.json"


def write_index(cache_root: Path, key: str, entry: dict) -> Path:
    """`<cache>/modelopt-onnx/index.json` for the TensorRT route: {"entries": {config key: entry}}.

    Each entry names its method, calibration, source ONNX and options, its path relative to the index's folder
    and the file's hash; an artifact made with other settings has another key, so no entry is ever repointed.
    """
    path = Path(cache_root) / INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        index = {}
    if not isinstance(index.get("entries"), dict):
        index = {"entries": {}}
    index["entries"][key] = entry
    atomic_write_json(path, index)
    return path


@dataclass(frozen=True)
class Options:
    calibration_eps: str = "cpu"
    high_precision_dtype: str = "fp32"
    int4_method: str = "auto"  # awq_clip; rtn_dq with random weights (see make_artifact)
    mo_option: list = field(default_factory=list)

    def __post_init__(self) -> None:
        parse_options(self.mo_option)  # bad option -> one-line error before any work
        if not self.eps:
            raise SuiteError("--calibration-eps must name at least one execution provider (e.g. cpu)")

    @property
    def eps(self) -> list[str]:
        return [e.strip() for e in self.calibration_eps.split(",") if e.strip()]


def scope_exclusions(ctx: ModelContext, method: str) -> tuple[str, list[str]]:
    """(scope name, ModelOpt `nodes_to_exclude` patterns): the FP32 ONNX's MAC nodes the variant's quantization scope
    keeps in the higher precision (GPT-2's LM head and attention MatMuls by default), as anchored regexes (ModelOpt
    matches them with re.match)."""
    import re

    from quantization.kit.macs import nodes_kept

    name, scope = ctx.scope_for(method)
    if not scope.keep:
        return name, []
    return name, [re.escape(n) + "$" for n in nodes_kept(ctx.macs, scope.keeps)]


def make_artifact(ctx: ModelContext, method: str, precision: str, opts: Options) -> onnx_kit.Artifact:
    src, src_sha = ctx.state["src"]
    calib = onnx_kit.calib_key(ctx)
    eps, options = opts.eps, parse_options(opts.mo_option)
    scope_name, excluded = scope_exclusions(ctx, method)
    if excluded:
        user = options.get("nodes_to_exclude") or []
        options["nodes_to_exclude"] = list(dict.fromkeys([*([user] if isinstance(user, str) else user), *excluded]))
    mode, cal = MODES[method]
    if mode == "int4":
        # random weights measure speed, size and memory: AWQ's clip search (8+ minutes on GPT-2 small on 2 cores)
        # changes the INT4 scales, not the deployed graph, so round-to-nearest (rtn_dq) stands in for it there
        cal = opts.int4_method if opts.int4_method != "auto" else (
            "rtn_dq" if ctx.source.weights == "random" else "awq_clip")
    key = {"src": src_sha, "mode": mode, "calibration_method": cal, **calib, "eps": eps,
           "high_precision_dtype": opts.high_precision_dtype, "options": options, "modelopt": _version()}
    out = onnx_kit.artifact_path(ctx.cache_dir, method, key)

    def build(tmp_out: Path) -> dict:
        reader = onnx_kit.ArrayCalibrationReader(ctx.task.input_name, onnx_kit.calibration_batches(ctx))
        secs = modelopt_quantize(src, tmp_out, reader, mode=mode, calibration_method=cal, calibration_eps=eps,
                                 high_precision_dtype=opts.high_precision_dtype, options=options)
        patched = fix_block_axes(tmp_out) if mode == "int4" else []
        onnx_kit.check_onnx(tmp_out)
        return {"calib_seconds": secs, "calib_samples_fed": reader.passes, "qdq": qdq_counts(tmp_out),
                "patched_block_axis": patched, "qdq_nodes": qdq_nodes(tmp_out), **key}

    path, meta, reused = onnx_kit.cached_artifact(out, build)
    qdq = meta.get("qdq", {})
    if not qdq.get("QuantizeLinear") and not qdq.get("DequantizeLinear"):
        raise SkipVariant(f"ModelOpt {mode} ({cal}) quantized no node of this model on CPU "
                          f"(calibration_eps={eps}); output has no Q/DQ")
    if mode == "int4":
        check_block_scales(path)
    entry = {"method": method, "path": artifacts.relative_to(ctx.cache_dir, path), "file": meta.get("file"),
             "calib_sha": calib["calib_sha"], "calib_samples": calib["n_calib"], "quantize_mode": mode,
             "calibration_method": cal, "src_onnx_sha": src_sha, "high_precision_dtype": opts.high_precision_dtype,
             "options": options, "made": meta.get("file", {}).get("mtime_ns")}
    why = ort_loadable(path)
    write_index(ctx.cache_dir, onnx_kit.config_key(key, 16), entry)
    if why and "float8" in why:
        op = why.split("of operator (", 1)[-1].split(")", 1)[0] if "of operator (" in why else "an op"
        raise SkipVariant(
            f"ModelOpt FP8 Q/DQ feeds float8e4m3fn tensors straight into {op} (a TensorRT FP8 fusion); ONNX "
            f"Runtime's CPU EP has no FP8 kernel for it and refuses the model: needs TensorRT on an FP8 GPU "
            f"(Ada/Hopper or newer). The FP8 ONNX is in index.json for the TensorRT route")
    shown = {k: v for k, v in options.items() if k != "nodes_to_exclude" or not excluded}
    notes = [f"ModelOpt quantize_mode={mode} calibration_method={cal} calibration_eps={eps} "
             f"high_precision_dtype={opts.high_precision_dtype}" + (f" options={shown}" if shown else "")
             + (f"; quantization scope '{scope_name}': nodes_to_exclude the {len(excluded)} MAC nodes it keeps "
                "in the higher precision" if excluded else ""),
             f"Q {qdq.get('QuantizeLinear')} / DQ {qdq.get('DequantizeLinear')} nodes (opset {qdq.get('opset')})"]
    if meta.get("patched_block_axis"):
        notes.append(f"repaired `axis` of {len(meta['patched_block_axis'])} INT4 DequantizeLinear node(s) "
                     f"({', '.join(meta['patched_block_axis'][:3])}): ModelOpt 0.47 writes axis=0 for Gemm(transB=1) "
                     "weights blocked along axis 1, which ORT rejects")
    if mode != "fp8":
        from quantization.kit.macs import coverage, layers_of

        nodes = meta.get("qdq_nodes")
        placed = coverage(ctx.macs, layers_of(ctx.macs, qdq_nodes(path) if nodes is None else nodes))
        notes.append(f"Q/DQ placed on the weights of {placed['reduced_layers']} MAC layers ({placed['coverage_pct']:.1f} % "
                     "of MACs): what the artifact quantizes, whatever the runtime computes them in")
    if reused:
        notes.append("cached artifact reused (calib_seconds from the run that made it)")
    return onnx_kit.Artifact(path, method, precision,
                             calibration=Calibration(calib["n_calib"], round(meta["calib_seconds"], 3), cal),
                             notes=notes,
                             extra={"modelopt": key, "qdq": qdq, "calib_samples_fed": meta.get("calib_samples_fed")},
                             float_precision=opts.high_precision_dtype)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("nvidia-modelopt")
    except metadata.PackageNotFoundError:
        return "?"


class ModelOptOnnxRoute(onnx_kit.OnnxRoute):
    toolchain = TOOLCHAIN
    description = ("NVIDIA ModelOpt ONNX PTQ (INT8 max/entropy, FP8, INT4) evaluated with ONNX Runtime "
                   "(CPU EP; CUDA/TensorRT EPs when this ORT build has them and a GPU is present).")
    Options = Options

    def add_options(self, ap: argparse.ArgumentParser) -> None:
        super().add_options(ap)
        g = ap.add_argument_group("ModelOpt")
        g.add_argument("--calibration-eps", default="cpu",
                       help="ModelOpt calibration_eps (comma list, e.g. cpu or trt,cuda:0,cpu)")
        g.add_argument("--high-precision-dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                       help="ModelOpt high_precision_dtype (fp16 makes models ORT's CPU EP runs slowly)")
        g.add_argument("--int4-method", default="auto", choices=("auto", *INT4_METHODS),
                       help="calibration method of `int4`; auto: awq_clip, and rtn_dq with --weights random (AWQ's "
                            "search changes scales, not the graph, and takes minutes on GPT-2 small)")
        g.add_argument("--mo-option", action="append", default=[], metavar="KEY=VALUE",
                       help=f"extra quantize() option (repeatable), KEY one of: {', '.join(OPTION_NAMES)}; "
                            "e.g. dq_only=true, op_types_needing_output_quant=Conv,Gemm")

    def unavailable(self, opts) -> str | None:
        return unavailable_import("onnxruntime", "modelopt.onnx.quantization",
                                  hint="nvidia-modelopt[onnx] is not installed in this environment")

    def make_artifact(self, ctx: ModelContext, method: str, precision: str) -> onnx_kit.Artifact:
        return make_artifact(ctx, method, precision, ctx.opts)

    def slow_reason(self, rec: onnx_kit.ProviderRecord) -> str | None:
        if rec.main_provider == onnx_kit.CPU_EP and rec.int_kernels == 0 and rec.dq_kernels:
            return ("slower than FP32 on ORT CPU: ModelOpt places Q/DQ for TensorRT (inputs/weights only, no output Q), "
                    "which ORT's CPU EP cannot fuse into QLinearConv/QLinearMatMul; it runs FP32 convs/matmuls plus "
                    f"{rec.dq_kernels} standalone DequantizeLinear kernels")
        if rec.main_provider == onnx_kit.CPU_EP and rec.dq_kernels:
            return (f"partly fused on ORT CPU: {rec.int_kernels} integer kernels, {rec.dq_kernels} standalone "
                    "DequantizeLinear kernels")
        return None


ROUTE = ModelOptOnnxRoute()
main = main_for(ROUTE)

if __name__ == "__main__":
    raise SystemExit(main())
