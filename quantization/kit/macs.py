"""What a model's arithmetic is made of, and how much of it a deployed artifact runs in reduced precision.

The common currency of every route is the *layer*: the torch module path of a multiply-accumulate (MAC) op
(`transformer.h.0.attn.c_attn`, `lm_head`, `layer1.0.conv1`, `fc`), and for the activation x activation MatMuls
of attention one bucket per module (`transformer.h.0.attn:scores`, holding both the score and the context
MatMul). The FP32 ONNX that `models.prepare` exports (TorchScript exporter) names every node after its module
scope (`/m/transformer/h.0/attn/c_attn/Gemm`, `/layer1/layer1.0/conv1/Conv`), so one pass over it gives:

- `count_macs`: each MatMul/Gemm/Conv node's MACs per item (image, or token at the prefill length) at the latency
  shape, with its layer; shapes come from one run of ONNX's reference evaluator at batch 1 (ONNX shape inference
  loses GPT-2's dims at its computed Reshapes), so the counts are exact for the graph as exported;
- `layers_of`: names a runtime reports (ONNX Runtime's executed node names, OpenVINO's `originalLayersNames`,
  TensorRT layer names) mapped back to the layers they belong to;
- `coverage`: the share of the model's MACs that ran in reduced precision, from the layers a route reports, and
  how that differs from the declared quantization scope (utils/registry.py `ModelDecl.scopes`).

onnx is imported inside the functions only (the kit imports no toolchain library at import time).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

VERSION = 1
MAC_OPS = ("MatMul", "Gemm", "Conv")
SCORES = ":scores"  # the bucket of a module's activation x activation MatMuls (attention scores and context)
# models.prepare wraps a Hugging Face model as `self.m` for export (its ONNX scopes start with /m/): the torch module
# path of the model itself has no such prefix
EXPORT_ROOT = "m"
# ops a constant weight may pass through before it reaches a MAC op (the exporter's tied LM head, casts)
_WEIGHT_PASS = ("Transpose", "Cast", "Identity", "Reshape", "Unsqueeze", "DequantizeLinear")


# ------------------------------------------------------------------------------ naming

def module_path(node_name: str, root: str = EXPORT_ROOT) -> str:
    """The torch module path of an exported node: '/layer1/layer1.0/downsample/downsample.0/Conv' ->
    'layer1.0.downsample.0', '/m/transformer/h.0/attn/c_attn/Gemm' -> 'transformer.h.0.attn.c_attn'. The
    TorchScript exporter names a container's child after its attribute in the container's parent ('layer1.0',
    'h.0'), so a scope that extends the previous one replaces it. An unscoped node ('proj') has no path ('')."""
    parts = [p for p in node_name.split("/") if p][:-1]
    comps: list[str] = []
    for c in parts:
        if comps and c.startswith(comps[-1] + "."):
            comps[-1] = c
        else:
            comps.append(c)
    if root and comps and comps[0] == root:
        comps = comps[1:]
    return ".".join(comps)


def node_layer(node_name: str, weighted: bool, root: str = EXPORT_ROOT) -> str:
    """The layer a MAC node belongs to: its module path (the node name when unscoped); activation x activation
    MatMuls go to the module's `:scores` bucket."""
    base = module_path(node_name, root) or node_name
    return base if weighted else base + SCORES


def _constants(model) -> set[str]:
    """Tensors that are constant: initializers, Constant outputs, and what the _WEIGHT_PASS ops make of them."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    grew = True
    while grew:
        grew = False
        for n in model.graph.node:
            if n.op_type in _WEIGHT_PASS and n.input and all(i in consts for i in n.input if i) \
                    and n.output[0] not in consts:
                consts.add(n.output[0])
                grew = True
    return consts


# ------------------------------------------------------------------------------ counting

def count_macs(path: Path | str, feed: dict[str, np.ndarray], items: int, *, unit: str = "item",
               root: str = EXPORT_ROOT) -> dict:
    """MACs per item of every MatMul/Gemm/Conv node of an ONNX graph, at the shapes `feed` gives (batch 1).

    Returns {"version", "input_shape", "items", "unit", "nodes": {node: {"layer", "op", "macs", "weighted"}},
    "outputs": {tensor: node} (a runtime that renames a node after the graph output it produces, e.g. OpenVINO's
    'logits', is mapped through it), "layers": {layer: MACs per item}, "total": MACs per item}."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    consts = _constants(model)
    mac_nodes = [n for n in model.graph.node if n.op_type in MAC_OPS]
    want = [t for n in mac_nodes for t in (n.input[0], n.input[1], n.output[0])]
    have = {o.name for o in model.graph.output}
    for t in dict.fromkeys(want):
        if t and t not in have and t not in consts:
            model.graph.output.append(helper.make_empty_tensor_value_info(t))
            have.add(t)
    names = [o.name for o in model.graph.output]
    values = dict(zip(names, ReferenceEvaluator(model).run(None, feed)))
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}

    def shape(t: str) -> tuple[int, ...]:
        if t in values:
            return tuple(np.shape(values[t]))
        if t in inits:
            return inits[t]
        raise ValueError(f"no shape for tensor {t!r}")

    nodes: dict[str, dict] = {}
    outputs: dict[str, str] = {}
    for i, n in enumerate(mac_nodes):
        name = n.name or f"{n.op_type}_{i}"
        out = shape(n.output[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            k = int(np.prod(shape(n.input[1])[1:]))
        elif n.op_type == "Gemm":
            a = shape(n.input[0])
            k = a[0] if attrs.get("transA") else a[-1]
        else:
            k = shape(n.input[0])[-1]
        weighted = n.input[1] in consts
        nodes[name] = {"layer": node_layer(name, weighted, root), "op": n.op_type,
                       "macs": float(np.prod(out)) * int(k) / items, "weighted": weighted}
        outputs[n.output[0]] = name
    layers: dict[str, float] = {}
    for rec in nodes.values():
        layers[rec["layer"]] = layers.get(rec["layer"], 0.0) + rec["macs"]
    return {"version": VERSION, "input_shape": {k: list(np.shape(v)) for k, v in feed.items()}, "items": int(items),
            "unit": unit, "nodes": nodes, "outputs": outputs, "layers": layers, "total": float(sum(layers.values()))}


def latency_feed(manifest: dict, task_kind: str) -> tuple[dict[str, np.ndarray], int, str]:
    """The batch-1 latency input of a prepared model, from its manifest alone: (feed, items, unit)."""
    if task_kind == "language-model":
        n = int(manifest["seq_len"])
        return {"input_ids": np.zeros((1, n), np.int64)}, n, "token"
    r = int(manifest.get("latency_resolution") or manifest.get("resolution") or 224)
    return {"input": np.zeros((1, 3, r, r), np.float32)}, 1, "image"


def table_for(manifest: dict, cache_dir: Path | str, task_kind: str) -> dict:
    """The model's MAC table: the manifest's (`layer_macs`, written by models.prepare), else a copy cached beside it
    (`layer_macs-<onnx sha>.json`, computed once from the FP32 ONNX for manifests made before the table existed)."""
    from utils.atomic import atomic_write_json, sha256_file

    rec = (manifest.get("files") or {}).get("onnx") or {}
    sha = (rec.get("sha256") or sha256_file(manifest["onnx"]))[:16]
    t = manifest.get("layer_macs")
    if isinstance(t, dict) and t.get("version") == VERSION and t.get("onnx_sha") == sha:
        return t
    side = Path(cache_dir) / f"layer_macs-{sha}.json"
    try:
        t = json.loads(side.read_text())
        if t.get("version") == VERSION and t.get("onnx_sha") == sha:
            return t
    except (OSError, ValueError):
        pass
    feed, items, unit = latency_feed(manifest, task_kind)
    log.info("counting MACs per layer of %s (once; cached in %s)", manifest["onnx"], side.name)
    t = {**count_macs(manifest["onnx"], feed, items, unit=unit), "onnx_sha": sha}
    try:
        atomic_write_json(side, t)
    except OSError as exc:  # a read-only cache still gets its coverage, computed each time
        log.warning("cannot cache the MAC table in %s (%s)", side, exc)
    return t


# ------------------------------------------------------------------------------ runtime names -> layers

def node_of(table: dict, name: str) -> str | None:
    """The MAC node a runtime's layer name comes from: the node itself, a name the runtime derived from it (the
    longest node name followed by '/', '_' or ':' — ORT's '.../MatMul/MatMulScaleFusion/', OpenVINO's
    '.../Gemm/WithoutBiases'), or the graph output tensor it produces (OpenVINO renames the last node 'logits')."""
    nodes = table["nodes"]
    if name in nodes:
        return name
    if name in table.get("outputs", {}):
        return table["outputs"][name]
    best = None
    for n in nodes:
        if len(name) > len(n) and name.startswith(n) and name[len(n)] in "/_:" and (best is None or len(n) > len(best)):
            best = n
    if best is None:
        for o, n in table.get("outputs", {}).items():  # 'logits_original', 'logits/DequantizationSubtract'
            if len(name) > len(o) and name.startswith(o) and name[len(o)] in "/_:":
                return n
    return best


def layers_of(table: dict, names: Iterable[str]) -> list[str]:
    """The layers (in table order) whose MAC nodes appear among `names` (runtime layer/node names)."""
    hit = {node_of(table, n) for n in names}
    return list(dict.fromkeys(r["layer"] for n, r in table["nodes"].items() if n in hit))


ALL_LAYERS = "*"  # a route whose every MAC op runs in the reduced type (a module cast to bf16)


def coverage(table: dict, reduced: Iterable[str] | str, keeps=None) -> dict:
    """The share of MACs in the reduced-precision layers (`reduced`: layer names, or ALL_LAYERS), and, with the scope's
    `keeps(layer) -> bool`, the layers that ran otherwise than the scope says (quantized there but not here:
    `missed`; kept there but reduced here: `extra`), each with its share of the MACs."""
    layers, total = table["layers"], table["total"] or 1.0
    red = list(layers) if reduced == ALL_LAYERS else [x for x in dict.fromkeys(reduced)]
    known = [x for x in red if x in layers]
    out = {"coverage_pct": round(100.0 * sum(layers[x] for x in known) / total, 2), "reduced_layers": len(known),
           "layers": len(layers), "macs_per_item": total, "unit": table.get("unit")}
    unknown = [x for x in red if x not in layers]
    if unknown:
        out["unknown_layers"] = unknown[:20]
    if keeps is not None:
        rs = set(known)
        missed = [x for x in layers if not keeps(x) and x not in rs]
        extra = [x for x in layers if keeps(x) and x in rs]
        out["scope_pct"] = round(100.0 * sum(v for x, v in layers.items() if not keeps(x)) / total, 2)
        out["missed"], out["extra"] = missed, extra
        out["missed_pct"] = round(100.0 * sum(layers[x] for x in missed) / total, 2)
        out["extra_pct"] = round(100.0 * sum(layers[x] for x in extra) / total, 2)
    return out


def _short(layers: list[str], n: int = 4) -> str:
    return ", ".join(layers[:n]) + (f" and {len(layers) - n} more" if len(layers) > n else "")


def coverage_note(cov: dict, scope: str, source: str) -> str:
    """One line for a row's notes (no '; ', which separates notes): the coverage, where it was read, and the layers
    that differ from the scope."""
    line = (f"coverage {cov['coverage_pct']:.1f} % of MACs in reduced precision ({cov['reduced_layers']} of "
            f"{cov['layers']} MAC layers, read from {source})")
    if "missed" in cov:
        if not cov["missed"] and not cov["extra"]:
            line += f", as the '{scope}' quantization scope says ({cov['scope_pct']:.1f} %)"
        else:
            parts = []
            if cov["missed"]:
                parts.append(f"{len(cov['missed'])} layer(s) it quantizes ({cov['missed_pct']:.1f} % of MACs) not in "
                             f"reduced precision here ({_short(cov['missed'])})")
            if cov["extra"]:
                parts.append(f"{len(cov['extra'])} layer(s) it keeps in higher precision ({cov['extra_pct']:.1f} % of "
                             f"MACs) run reduced here ({_short(cov['extra'])})")
            line += f", differs from the '{scope}' quantization scope ({cov['scope_pct']:.1f} %): " + ", ".join(parts)
    return line


def nodes_in_scope(table: dict, keeps, *, weighted_only: bool = True) -> list[str]:
    """ONNX node names a route should quantize under a scope (`keeps(layer) -> bool`)."""
    return [n for n, r in table["nodes"].items() if (r["weighted"] or not weighted_only) and not keeps(r["layer"])]


def nodes_kept(table: dict, keeps) -> list[str]:
    """ONNX MAC node names the scope keeps in higher precision."""
    return [n for n, r in table["nodes"].items() if keeps(r["layer"])]
