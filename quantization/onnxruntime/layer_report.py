"""The onnxruntime toolchain's per-layer report (Toolchain.tools["layer_report"], onnxruntime env).

The route's cached QDQ model (`--method minmax|entropy|percentile`, built if missing through the kit, same
calibration subset) vs the FP32 ONNX, matched by Conv/Gemm node name; intermediate tensors are exposed as extra
graph outputs and each FP32 node (+ the Relu the quantizer folded into its output quantizer) is run as a one-node
model on the quantized model's dequantized input for the local error (the same definitions as the torch FX report:
local = this layer's own error, accumulated = the drift up to it).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from utils.errors import SuiteError

log = logging.getLogger(__name__)
DEFAULT_METHOD = "minmax"


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




def ort_artifact(model: str, method: str, calib_samples: int, threads: int):
    """(FP32 ONNX path, the route's cached QDQ artifact for `method` (built if missing), data), through the kit's
    public build API: exactly the artifact the bench measures."""
    from quantization.kit import build_variant
    from quantization.kit.analysis import route_argv

    ctx, built = build_variant("onnxruntime", model, method, device="cpu", argv=route_argv(calib_samples, threads))
    return Path(ctx.manifest["onnx"]), built.artifact, ctx.data


def report(model: str, method: str | None = None, *, plant: str | None = None, calib_samples: int = 128,
           eval_limit: int | None = None, threads: int = 2):
    """The layer_report analysis: the route's QDQ model of `method` against the FP32 ONNX."""
    from quantization.kit.analysis import LayerReport

    if plant:
        raise SuiteError("--plant is not implemented by the onnxruntime layer report (the torch one plants faults)")
    method = method or DEFAULT_METHOD
    src, qpath, data = ort_artifact(model, method, calib_samples, threads)
    x = data.test.x[:eval_limit] if eval_limit else data.test.x
    t0 = time.time()
    rows = ort_layer_errors(src, qpath, x, threads=threads)
    log.info("%d layers of %s compared on %d test samples in %.1f s", len(rows), qpath.name, len(x), time.time() - t0)
    return LayerReport(rows, f"layer_report_onnxruntime-{method}_{model}",
                       f"{model} ONNX Runtime QDQ INT8 ({method}) vs FP32 ONNX, per layer, {len(x)} test samples")
