"""Per-layer error of a quantized model against FP32 (torch env): which layer loses the most?

    python -m evaluation.analysis.layer_report --model resnet50 --toolchain torch
    python -m evaluation.analysis.layer_report --model resnet50 --toolchain torch --plant int4:layer3.0.conv2
    python -m evaluation.analysis.layer_report --model resnet50 --toolchain onnxruntime --method minmax   # onnxruntime env

For the Torch.FX INT8 ResNet50 (the route's own `resnet_fx`, same calibration subset), every quantized
module of the converted GraphModule (quantized Conv2d / ConvReLU2d / Linear: conv+BN(+ReLU) fused) is
compared with the module of the same qualified name in the FP32 model fused the same way
(`fuse_fx`, eval mode: BN folded into the conv), on the evaluation samples (the test split; nothing
here sees calibration data). Two numbers per layer, both over all samples (energy-weighted):

- `local`: the quantized module's own error. Its (dequantized) INT8 input is fed to the FP32 fused
  module, and that output is compared with the module's dequantized INT8 output. Upstream error is the
  same on both sides, so this isolates what *this* layer's weight and output quantization cost. The
  report is sorted by local SQNR, worst first: a single bad layer ranks first even though every layer
  after it also sees its damage.
- `accumulated`: the module's dequantized output vs the FP32 model's output at that layer on the same
  image (end-to-end drift up to that point; grows with depth and is not used for the ranking).

SQNR = 10 log10(sum ref^2 / sum (ref - q)^2) (utils.metrics.sqnr_db on the concatenated
outputs); relative error = ||ref - q|| / ||ref||. Writes `results/layer_report_<toolchain>_<model>[_<plant>].csv`
and a bar plot (.png). `--plant` corrupts the model on purpose (see evaluation/analysis/planted.py): `int4:<layer>`
(or `int2:<layer>`) makes one layer's weights per-tensor INT4 (INT2) values, `act-x4` scales every
activation quantizer's range by 4.

ONNX Runtime (`--toolchain onnxruntime --method minmax|entropy|percentile`, onnxruntime env): the
route's cached QDQ model (built if missing, same calibration subset) vs the FP32 ONNX, matched by
Conv/Gemm node name; intermediate tensors are exposed as extra graph outputs and each FP32 node (+ the
Relu the quantizer folded into its output quantizer) is run as a one-node model on the quantized
model's dequantized input for the local error.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR

log = logging.getLogger("evaluation.analysis.layer_report")

CSV_COLUMNS = ["rank", "layer", "kind", "local_sqnr_db", "local_rel_err", "accum_sqnr_db", "accum_rel_err",
               "weight_qscheme", "weight_levels", "out_scale", "out_shape", "planted"]


# ------------------------------------------------------------------------------ planting faults

@dataclass(frozen=True)
class Plant:
    """What to corrupt: one layer's weights to `bits`-bit per-tensor values, and/or every activation range."""

    layer: str | None = None
    bits: int | None = None
    act_scale: float | None = None

    @property
    def slug(self) -> str:
        parts = []
        if self.layer:
            parts.append(f"int{self.bits}-{self.layer}")
        if self.act_scale:
            parts.append(f"act-x{self.act_scale:g}")
        return "_".join(parts) or "none"

    def describe(self) -> str:
        parts = []
        if self.layer:
            parts.append(f"{self.layer}: weights forced to per-tensor symmetric INT{self.bits} values "
                         f"({2 ** self.bits - 1} levels) instead of per-channel INT8")
        if self.act_scale:
            parts.append(f"every activation quantizer's range x{self.act_scale:g} (scales x{self.act_scale:g}, "
                         f"same zero points)")
        return "; ".join(parts) or "no fault"


def parse_plant(text: str | None) -> Plant | None:
    """'int4:layer3.0.conv2', 'int2:fc', 'act-x4', or both comma-separated."""
    if not text:
        return None
    layer = bits = scale = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"int([2-7]):(.+)", part)
        a = re.fullmatch(r"act-x([0-9.]+)", part)
        if m:
            bits, layer = int(m.group(1)), m.group(2)
        elif a:
            scale = float(a.group(1))
            if scale <= 0:
                raise SuiteError(f"--plant act-x<factor> needs a positive factor, got {part!r}")
        else:
            raise SuiteError(f"--plant: cannot read {part!r}; use int4:<layer>, int2:<layer> and/or act-x4")
    return Plant(layer, bits, scale)


def quantized_layers(qmodel) -> dict:
    """Qualified name -> quantized Conv/Linear module of a converted FX model."""
    import torch.ao.nn.quantized as nnq

    return {n: m for n, m in qmodel.named_modules() if isinstance(m, (nnq.Conv2d, nnq.Linear))}


def plant_weight_bits(qmodel, layer: str, bits: int) -> dict:
    """Replace `layer`'s INT8 per-channel weight by symmetric per-tensor `bits`-bit values (held in qint8)."""
    import torch

    layers = quantized_layers(qmodel)
    if layer not in layers:
        raise SuiteError(f"--plant: {layer!r} is not a quantized layer of the model; e.g. "
                         f"{', '.join(list(layers)[:4])}, ..., {list(layers)[-1]}")
    mod = layers[layer]
    w = mod.weight().dequantize()
    bias = mod.bias() if callable(getattr(mod, "bias", None)) else None
    qmax = 2 ** (bits - 1) - 1
    scale = float(w.abs().max()) / max(qmax, 1)
    q = torch.quantize_per_tensor(torch.clamp(torch.round(w / scale), -qmax - 1, qmax) * scale, scale, 0, torch.qint8)
    mod.set_weight_bias(q, bias)
    levels = int(torch.unique(q.int_repr()).numel())
    return {"layer": layer, "bits": bits, "scale": scale, "levels_used": levels,
            "weight_rel_err": float((q.dequantize() - w).norm() / w.norm())}


def plant_activation_range(qmodel, factor: float) -> int:
    """Multiply every activation quantization scale of a converted FX model by `factor`. Returns how many."""
    import torch

    n = 0
    for mod in qmodel.modules():  # quantized modules' output scales
        if hasattr(mod, "scale") and hasattr(mod, "zero_point") and not isinstance(getattr(mod, "scale"), torch.Tensor):
            mod.scale = float(mod.scale) * factor
            n += 1
    for name, buf in qmodel.named_buffers():
        if re.search(r"_scale_\d+$", name):
            buf.mul_(factor)  # quantize_per_tensor inputs and quantized add/add_relu outputs
            n += 1
    return n


def apply_plant(qmodel, plant: Plant | None) -> dict:
    info: dict = {}
    if plant is None:
        return info
    if plant.layer:
        info["weights"] = plant_weight_bits(qmodel, plant.layer, plant.bits)
    if plant.act_scale:
        info["act_scales_changed"] = plant_activation_range(qmodel, plant.act_scale)
    info["plant"] = plant.describe()
    return info


# ------------------------------------------------------------------------------ the report

def fused_reference(fp32_model):
    """The FP32 model fused like FX prepare does (conv+bn(+relu), eval mode): same qualified names."""
    from torch.ao.quantization.quantize_fx import fuse_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fuse_fx(copy.deepcopy(fp32_model).eval())


def layer_errors(fp32_model, qmodel, x: np.ndarray, *, batch: int = 64, planted: str | None = None,
                 outputs: dict | None = None) -> list[dict]:
    """Per quantized layer: local and accumulated SQNR / relative error over x, sorted worst local SQNR first.

    `outputs`, when given, receives the final outputs of both models on x ('fp32': the fused FP32
    reference, 'quantized'), so a caller can score accuracy from the same pass.
    """
    import torch

    ref_model = fused_reference(fp32_model)
    ref_mods = dict(ref_model.named_modules())
    layers = {n: m for n, m in quantized_layers(qmodel).items() if n in ref_mods}
    if not layers:
        raise SuiteError("no quantized Conv/Linear layer of the model matches a module of the FP32 model")
    acc = {n: np.zeros(4) for n in layers}  # local: sum ref^2, sum noise^2; accumulated: same
    shapes: dict[str, tuple] = {}
    ref_out: dict[str, torch.Tensor] = {}
    handles = []
    capture = [True]  # off while a reference module is re-run on the quantized model's input

    def ref_hook(name):
        def hook(_m, _inp, out):
            if capture[0]:
                ref_out[name] = out.detach().float()
        return hook

    def q_hook(name):
        def hook(_m, inp, out):
            xin = inp[0].dequantize() if inp[0].is_quantized else inp[0]
            yq = (out.dequantize() if out.is_quantized else out).float()
            capture[0] = False
            try:
                local_ref = ref_mods[name](xin).float()
            finally:
                capture[0] = True
            a = acc[name]
            a[0] += float((local_ref.double() ** 2).sum())
            a[1] += float(((local_ref.double() - yq.double()) ** 2).sum())
            r = ref_out[name].double()
            a[2] += float((r ** 2).sum())
            a[3] += float(((r - yq.double()) ** 2).sum())
            shapes[name] = tuple(yq.shape[1:])
        return hook

    for n in layers:
        handles.append(ref_mods[n].register_forward_hook(ref_hook(n)))
        handles.append(layers[n].register_forward_hook(q_hook(n)))
    outs: dict[str, list] = {"fp32": [], "quantized": []}
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
                ref_out.clear()
                outs["fp32"].append(ref_model(xb).float().numpy())
                yq = qmodel(xb)
                outs["quantized"].append((yq.dequantize() if yq.is_quantized else yq).float().numpy())
    finally:
        for h in handles:
            h.remove()
    if outputs is not None:
        outputs.update({k: np.concatenate(v) for k, v in outs.items()})

    def db(sig, noise):
        return math.inf if noise == 0 else 10 * math.log10(sig / noise) if sig > 0 else -math.inf

    rows = []
    for n, m in layers.items():
        s_l, n_l, s_a, n_a = acc[n]
        w = m.weight()
        scheme = str(w.qscheme()).replace("torch.", "")
        rows.append(dict(layer=n, kind=type(m).__name__, local_sqnr_db=db(s_l, n_l),
                         local_rel_err=math.sqrt(n_l / s_l) if s_l else math.nan,
                         accum_sqnr_db=db(s_a, n_a), accum_rel_err=math.sqrt(n_a / s_a) if s_a else math.nan,
                         weight_qscheme=scheme, weight_levels=int(torch.unique(w.int_repr()).numel()),
                         out_scale=float(m.scale), out_shape="x".join(map(str, shapes.get(n, ()))),
                         planted=bool(planted and n == planted)))
    rows.sort(key=lambda r: (r["local_sqnr_db"], r["layer"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    import csv
    import io

    from utils.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("local_sqnr_db", "local_rel_err", "accum_sqnr_db", "accum_rel_err"):
            r[k] = float(r[k])
        r["planted"] = r["planted"] == "True"
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """Bar plot of local SQNR per layer (worst first). Without matplotlib here (the torch env has none),
    the report env draws it from the CSV (`--plot-csv`)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.atomic import atomic_write_figure

    order = rows  # worst first
    fig, ax = plt.subplots(figsize=(7.5, max(4.0, 0.17 * len(order) + 1.2)))
    ys = np.arange(len(order))
    local = [min(r["local_sqnr_db"], 80) for r in order]
    accum = [min(r["accum_sqnr_db"], 80) for r in order]
    colors = ["tab:red" if r["planted"] else "tab:blue" for r in order]
    from matplotlib.patches import Patch

    ax.barh(ys, local, color=colors, height=0.7)
    dots = ax.scatter(accum, ys, color="k", s=8, zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["layer"] for r in order], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR, dB (higher is better)")
    import textwrap

    ax.set_title("\n".join(textwrap.fill(t, 75) for t in title.split("\n")), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color="tab:blue", label="local SQNR (this layer's own error; the ranking)"), dots]
    labels = [handles[0].get_label(), "accumulated SQNR (vs the FP32 model at this layer)"]
    if any(r["planted"] for r in order):
        handles.append(Patch(color="tab:red"))
        labels.append("planted layer (local SQNR)")
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    fig.tight_layout()
    return atomic_write_figure(fig, path)


def plot_anywhere(rows: list[dict], csv_path: Path, title: str) -> Path | None:
    """Plot here if matplotlib is importable, else in the report environment from the CSV."""
    png = plot(rows, csv_path.with_suffix(".png"), title)
    if png is not None:
        return png
    from evaluation.launch import envs

    if not envs.is_ready("report"):
        log.warning("no matplotlib here and no report env: run `python3 -m evaluation.launch.envs report`, then "
                    "`.venvs/report/bin/python -m evaluation.analysis.layer_report --plot-csv %s`", csv_path)
        return None
    rc = envs.run_in_env("report", ["-m", "evaluation.analysis.layer_report", "--plot-csv", str(csv_path), "--title", title]).returncode
    return csv_path.with_suffix(".png") if rc == 0 else None



# ------------------------------------------------------------------------------ ResNet50 (ONNX Runtime QDQ)

def _ort_layers(qmodel, fmodel) -> list[dict]:
    """Per Conv/Gemm of the QDQ model: its (dequantized) input, its output after Q/DQ, and the FP32 node
    of the same name with the tensor to compare (after a Relu the quantizer folded into the output Q)."""
    consumers: dict[str, list] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    fnodes = {n.name: n for n in fmodel.graph.node}
    fcons: dict[str, list] = {}
    for n in fmodel.graph.node:
        for i in n.input:
            fcons.setdefault(i, []).append(n)
    out = []
    for n in qmodel.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.name not in fnodes:
            continue
        f = fnodes[n.name]
        y = n.output[0]
        q = [c for c in consumers.get(y, []) if c.op_type == "QuantizeLinear"]
        y_dq = y
        if q:
            dq = [c for c in consumers.get(q[0].output[0], []) if c.op_type == "DequantizeLinear"]
            y_dq = dq[0].output[0] if dq else y
        relu = [c for c in fcons.get(f.output[0], []) if c.op_type == "Relu"]
        folded = bool(relu) and not any(c.op_type == "Relu" for c in consumers.get(y, []))
        out.append({"layer": n.name, "kind": n.op_type + ("+Relu" if folded else ""), "x": n.input[0], "y": y_dq,
                    "node": f, "ref": relu[0].output[0] if folded else f.output[0], "relu": folded,
                    "w": n.input[1]})
    return out


def _with_outputs(model, names):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in dict.fromkeys(names):
        if name not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def _single_node(fmodel, node, relu: bool):
    """The FP32 node (+ Relu) as its own model, with its FP32 initializers."""
    import onnx

    inits = {i.name: i for i in fmodel.graph.initializer}
    x = node.input[0]
    nodes = [node]
    out = node.output[0]
    if relu:
        out = out + "_relu"
        nodes = [node, onnx.helper.make_node("Relu", [node.output[0]], [out])]
    g = onnx.helper.make_graph(nodes, "layer", [onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
                               [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
                               [inits[i] for i in node.input[1:] if i in inits])
    return onnx.helper.make_model(g, opset_imports=fmodel.opset_import, ir_version=fmodel.ir_version)


def ort_layer_errors(fp32_path, q_path, x: np.ndarray, *, threads: int = 2, batch: int = 64,
                     outputs: dict | None = None) -> list[dict]:
    """Local and accumulated SQNR per Conv/Gemm of an ONNX Runtime QDQ model (same definitions as the FX report).

    Exposing intermediate tensors as graph outputs may keep ORT from fusing those Q/DQ pairs into its
    integer kernels; on the embedded ResNet50 the instrumented session's logits equal the plain
    session's (SQNR 653 dB), so the numbers describe the deployed model. The FP32 reference of a layer
    whose Relu the quantizer folded into the output quantizer is Conv+Relu.
    """
    import onnx
    import onnxruntime as ort

    qmodel = onnx.load(str(q_path))
    fmodel = onnx.load(str(fp32_path))
    layers = _ort_layers(qmodel, fmodel)
    if not layers:
        raise SuiteError("no Conv/Gemm of the quantized ONNX model matches a node name of the FP32 model")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    prov = ["CPUExecutionProvider"]
    qm = _with_outputs(qmodel, [v for l in layers for v in (l["x"], l["y"])])
    fm = _with_outputs(fmodel, [l["ref"] for l in layers])
    qs = ort.InferenceSession(qm.SerializeToString(), so, providers=prov)
    fs = ort.InferenceSession(fm.SerializeToString(), so, providers=prov)
    singles = {l["layer"]: ort.InferenceSession(_single_node(fmodel, l["node"], l["relu"]).SerializeToString(), so,
                                                providers=prov) for l in layers}
    qnames = [o.name for o in qs.get_outputs()]
    fnames = [o.name for o in fs.get_outputs()]
    inp_q, inp_f = qs.get_inputs()[0].name, fs.get_inputs()[0].name
    acc = {l["layer"]: np.zeros(4) for l in layers}
    shapes: dict = {}
    outs: dict[str, list] = {"fp32": [], "quantized": []}
    for i in range(0, len(x), batch):
        xb = np.ascontiguousarray(x[i:i + batch])
        qv = dict(zip(qnames, qs.run(None, {inp_q: xb})))
        fv = dict(zip(fnames, fs.run(None, {inp_f: xb})))
        outs["quantized"].append(qv[qnames[0]])
        outs["fp32"].append(fv[fnames[0]])
        for l in layers:
            y = qv[l["y"]].astype(np.float64)
            loc = singles[l["layer"]].run(None, {singles[l["layer"]].get_inputs()[0].name: qv[l["x"]]})[0].astype(np.float64)
            ref = fv[l["ref"]].astype(np.float64)
            a = acc[l["layer"]]
            a += [(loc ** 2).sum(), ((loc - y) ** 2).sum(), (ref ** 2).sum(), ((ref - y) ** 2).sum()]
            shapes[l["layer"]] = y.shape[1:]
    if outputs is not None:
        outputs.update({k: np.concatenate(v) for k, v in outs.items()})
    inits = {i.name: i for i in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    rows = []
    for l in layers:
        s_l, n_l, s_a, n_a = acc[l["layer"]]
        wdq = producer.get(l["w"])
        scale = inits.get(wdq.input[1]) if wdq is not None and len(wdq.input) > 1 else None
        nscale = int(np.prod(scale.dims)) if scale is not None and len(scale.dims) else 1
        rows.append(dict(layer=l["layer"], kind=l["kind"],
                         local_sqnr_db=10 * math.log10(s_l / n_l) if n_l else math.inf,
                         local_rel_err=math.sqrt(n_l / s_l) if s_l else math.nan,
                         accum_sqnr_db=10 * math.log10(s_a / n_a) if n_a else math.inf,
                         accum_rel_err=math.sqrt(n_a / s_a) if s_a else math.nan,
                         weight_qscheme="per_channel" if nscale > 1 else "per_tensor", weight_levels="",
                         out_scale="", out_shape="x".join(map(str, shapes.get(l["layer"], ()))), planted=False))
    rows.sort(key=lambda r: (r["local_sqnr_db"], r["layer"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _route_argv(calib_samples: int, threads: int, eval_limit: int | None = None) -> list[str]:
    return ["--calib-samples", str(calib_samples), "--threads", str(threads)] + \
        (["--eval-limit", str(eval_limit)] if eval_limit else [])


def ort_resnet50_artifact(method: str, calib_samples: int, threads: int):
    """(FP32 ONNX path, the route's cached QDQ artifact for `method` (built if missing), data), through the kit's
    public build API: exactly the artifact the bench measures."""
    from quantization.kit import build_variant

    ctx, built = build_variant("onnxruntime", "resnet50", method, device="cpu",
                               argv=_route_argv(calib_samples, threads))
    return Path(ctx.manifest["onnx"]), built.artifact, ctx.data

# ------------------------------------------------------------------------------ ResNet50 (torch FX)

def resnet50_setup(calib_samples: int = 128, eval_limit: int | None = None, threads: int = 2):
    """(manifest, data, FP32 model, clean FX INT8 model) for the prepared ResNet50, built by the torch route
    through the kit's public build API (the same models the bench scores)."""
    from quantization.kit import build_variant

    argv = _route_argv(calib_samples, threads, eval_limit)
    t0 = time.time()
    ctx, fp32 = build_variant("torch", "resnet50", "eager", argv=argv)
    _, q = build_variant("torch", "resnet50", "fx", argv=argv)
    log.info("FX INT8 ResNet50 calibrated on %d train samples in %.1f s", len(ctx.data.calib), time.time() - t0)
    return ctx.manifest, ctx.data, fp32.handle, q.handle


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.analysis.layer_report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="resnet50", choices=("resnet50",))
    ap.add_argument("--toolchain", default="torch", choices=("torch", "onnxruntime"),
                    help="torch: the FX INT8 model (torch env); onnxruntime: the route's QDQ model (onnxruntime env)")
    ap.add_argument("--method", default="minmax", help="onnxruntime: minmax, entropy or percentile")
    ap.add_argument("--plant", default=None, help="corrupt on purpose: int4:<layer>, int2:<layer>, act-x4 (comma list)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--eval-limit", type=int, default=None, help="cap on test samples (default: all 359)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="where the CSV and PNG go (default results/local/)")
    ap.add_argument("--publish", action="store_true", help="the committed report: --out results/")
    ap.add_argument("--top", type=int, default=10, help="layers printed")
    ap.add_argument("--plot-csv", type=Path, default=None, help="only draw the PNG next to an existing report CSV")
    ap.add_argument("--title", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup_logging()
    if args.publish and args.out is not None:
        raise SuiteError("--publish writes results/; drop --out")
    args.out = RESULTS_DIR if args.publish else (args.out or LOCAL_DIR)
    if args.plot_csv:
        if plot(read_csv(args.plot_csv), args.plot_csv.with_suffix(".png"), args.title or args.plot_csv.stem) is None:
            raise SuiteError("matplotlib is not installed in this environment (use the report env)")
        print(f"-> {args.plot_csv.with_suffix('.png')}")
        return 0
    plant = parse_plant(args.plant)
    if args.toolchain == "onnxruntime":
        if plant:
            raise SuiteError("--plant is implemented for --toolchain torch only")
        src, qpath, data = ort_resnet50_artifact(args.method, args.calib_samples, args.threads)
        x = data.test.x[:args.eval_limit] if args.eval_limit else data.test.x
        t0 = time.time()
        rows = ort_layer_errors(src, qpath, x, threads=args.threads)
        log.info("%d layers of %s compared on %d test samples in %.1f s", len(rows), qpath.name, len(x), time.time() - t0)
        stem = f"layer_report_{args.toolchain}-{args.method}_{args.model}"
        title = f"{args.model} ONNX Runtime QDQ INT8 ({args.method}) vs FP32 ONNX, per layer, {len(x)} test samples"
    else:
        _, data, fp32, q = resnet50_setup(args.calib_samples, args.eval_limit, args.threads)
        info = apply_plant(q, plant)
        if info:
            log.info("planted: %s", info)
        t0 = time.time()
        rows = layer_errors(fp32, q, data.test.x, planted=plant.layer if plant else None)
        log.info("%d layers compared on %d test samples in %.1f s", len(rows), len(data.test), time.time() - t0)
        stem = f"layer_report_{args.toolchain}_{args.model}" + (f"_{plant.slug}" if plant else "")
        title = (f"{args.model} Torch FX INT8 vs FP32, per layer, {len(data.test)} test samples"
                 + (f"\nplanted: {plant.describe()}" if plant else ""))
    csv_path = write_csv(rows, args.out / f"{stem}.csv")
    png = plot_anywhere(rows, csv_path, title)
    print(f"{'rank':>4} {'layer':<24} {'local dB':>9} {'local rel':>9} {'accum dB':>9}")
    for r in rows[:args.top]:
        print(f"{r['rank']:>4} {r['layer']:<24} {r['local_sqnr_db']:>9.2f} {r['local_rel_err']:>9.4f} "
              f"{r['accum_sqnr_db']:>9.2f}" + ("  <- planted" if r["planted"] else ""))
    print(f"-> {csv_path}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
