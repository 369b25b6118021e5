"""Bytes one timed call of a model moves through memory: the memory side of the roofline (evaluation/report/aggregate.py).

An estimate from the model's shapes and the row, never a measurement:

- weights: the row's `size_mb` (the artifact as stored: FP32, INT8, INT4 groups with their scales), read once per
  call. Embedding tables count whole although a call gathers only its tokens' rows, so an export that stores the
  token embedding apart from a tied LM head counts it twice: weights are an upper estimate.
- activations: every layer's output written once and read once, in the row's activation element size (4 bytes,
  2 for fp16/bf16 rows, 1 for integer convolutional rows whose activations stay quantized; language models keep
  LayerNorm, softmax and GELU in float between their integer matmuls, so 4 for int8 rows); attention scores and
  probabilities; the logits (4 bytes).
- KV cache (generation rows, one call = one generated token): the past keys and values of every layer read once,
  at the mean past length of the timed tokens, and the new token's written.
- inputs: the image batch (4 bytes per value) or the token ids (8 bytes).

Counting intermediate activations as memory traffic assumes none of them stays in a cache, and weights are counted
whole: both make the memory bound stricter than the machine's, so a row can read above 100 % of it (the aggregation
says so). Stdlib only.
"""
from __future__ import annotations

VERSION = 1
FLOAT_BYTES = {"fp16": 2, "bf16": 2}
CONV_ACT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 1, "fp8": 1}
RESNET50_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # (blocks, width, stride); expansion 4
GPT2_OUTPUTS_PER_LAYER = 18  # x n_embd per token: ln1 1, qkv 3, attention context 1, proj 1, add 1, ln2 1, fc 4,
#                              gelu 4, fc2 1, add 1


def shapes_from_manifest(model: str, manifest: dict | None) -> dict | None:
    """The shapes the estimate needs, from a prepared model's manifest (None when it lacks them)."""
    m = manifest or {}
    if model == "gpt2" and all(m.get(k) for k in ("n_layer", "n_head", "head_dim", "vocab_size")):
        return {"arch": "gpt2", "n_layer": int(m["n_layer"]), "n_head": int(m["n_head"]),
                "n_embd": int(m["n_head"]) * int(m["head_dim"]), "vocab_size": int(m["vocab_size"])}
    if model == "resnet50" and m.get("num_classes"):
        return {"arch": "resnet50", "num_classes": int(m["num_classes"])}
    return None


def declared_shapes(model: str, weights: str) -> dict | None:
    """The shapes of the suite's own models (utils.specs: embedded and random weights), for rows written before the
    kit recorded them; None for pretrained weights (the user's model may be another size)."""
    from utils.specs import EMBEDDED, RANDOM

    spec = {"embedded": EMBEDDED, "random": RANDOM}.get(weights, {}).get(model)
    if spec is None:
        return None
    if model == "gpt2":
        return {"arch": "gpt2", "n_layer": spec["n_layer"], "n_head": spec["n_head"], "n_embd": spec["n_embd"],
                "vocab_size": spec["vocab_size"]}
    return {"arch": "resnet50", "num_classes": spec["num_classes"]}


def resnet50_activations(h: int, w: int, num_classes: int) -> int:
    """Elements of every layer output of torchvision's ResNet50 (stride on the 3x3 convolution) for one image of
    h x w: convolutions (batch norm and ReLU fused), the max pool, the residual adds, the pooled features, logits."""
    def down(x, k, s, p):
        return (x + 2 * p - k) // s + 1

    h, w = down(h, 7, 2, 3), down(w, 7, 2, 3)
    total = 64 * h * w
    h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    total += 64 * h * w
    cin = 64
    for blocks, width, stride in RESNET50_STAGES:
        for i in range(blocks):
            s = stride if i == 0 else 1
            ho, wo = down(h, 3, s, 1), down(w, 3, s, 1)
            total += width * h * w + width * ho * wo + 4 * width * ho * wo  # conv1 (1x1), conv2 (3x3), conv3 (1x1)
            if i == 0 and (s != 1 or cin != 4 * width):
                total += 4 * width * ho * wo  # downsample
            total += 4 * width * ho * wo  # residual add (+ ReLU)
            h, w, cin = ho, wo, 4 * width
    return total + cin + num_classes  # pooled features, logits


def estimate(shapes: dict, *, size_mb: float | None, batch: int, latency_kind: str | None,
             latency_shape: list | tuple | None = None, prompt_tokens: int | None = None,
             new_tokens: int | None = None, compute_precision: str | None = None) -> dict | None:
    """Bytes of one timed call: {bytes_per_call, weights, activations, kv_cache, inputs, items_per_call (what the
    row's throughput counts per call), call, version}; None when the row lacks what the estimate needs."""
    if not shapes or not size_mb or not batch:
        return None
    weights = int(round(float(size_mb) * 1e6))
    b = int(batch)
    if shapes.get("arch") == "resnet50":
        if not latency_shape or len(latency_shape) != 4:
            return None
        h, w = int(latency_shape[2]), int(latency_shape[3])
        eb = CONV_ACT_BYTES.get(compute_precision or "fp32", 4)
        act = 2 * b * resnet50_activations(h, w, shapes["num_classes"]) * eb
        inputs = b * 3 * h * w * 4
        return _out(weights, act, 0, inputs, b, f"one forward of {b} images of 3x{h}x{w}")
    if shapes.get("arch") != "gpt2":
        return None
    d, layers, heads, vocab = shapes["n_embd"], shapes["n_layer"], shapes["n_head"], shapes["vocab_size"]
    eb = FLOAT_BYTES.get(compute_precision or "", 4)
    if latency_kind == "decode":
        if not prompt_tokens or not new_tokens:
            return None
        past = prompt_tokens + max(0, new_tokens - 2) / 2.0  # mean past length of the timed tokens (2nd to last)
        ctx = past + 1
        act = 2 * b * (layers * (GPT2_OUTPUTS_PER_LAYER * d + 2 * heads * ctx) + d) * eb + b * vocab * 4
        kv = int(round(2 * layers * b * d * eb * (past + 1)))  # past keys/values read, the new ones written
        return _out(weights, int(round(act)), kv, b * 8, b,
                    f"one generated token (batch {b}, mean past {past:g} tokens)")
    if not latency_shape or len(latency_shape) != 2:
        return None
    seq = int(latency_shape[1])
    act = 2 * b * seq * (layers * (GPT2_OUTPUTS_PER_LAYER * d + 2 * heads * seq) + d) * eb + b * seq * vocab * 4
    return _out(weights, act, 0, b * seq * 8, b * seq, f"one forward of {b} x {seq} tokens")


def _out(weights: int, act: int, kv: int, inputs: int, items: int, call: str) -> dict:
    return {"bytes_per_call": weights + act + kv + inputs, "weights": weights, "activations": act, "kv_cache": kv,
            "inputs": inputs, "items_per_call": items, "call": call, "version": VERSION}


def for_row(row, shapes: dict | None = None) -> dict | None:
    """The estimate of a result row (a ResultRow): its recorded one (extra.traffic, written by the kit from the
    manifest), else one from `shapes` or the suite's declared shapes of its model and weights."""
    extra = getattr(row, "extra", None) or {}
    if extra.get("traffic"):
        return extra["traffic"]
    shapes = shapes or declared_shapes(row.model, row.weights)
    gen = extra.get("generation") or {}
    return estimate(shapes, size_mb=row.size_mb, batch=row.batch, latency_kind=row.latency_kind,
                    latency_shape=extra.get("latency_shape"), prompt_tokens=gen.get("prompt_tokens"),
                    new_tokens=gen.get("new_tokens"), compute_precision=row.compute_precision)
