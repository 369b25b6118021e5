"""Bytes one timed call of a model moves through memory: the memory side of the roofline (evaluation/report/aggregate.py).

An estimate from the model's shapes and the row, never a measurement:

- weights: the row's `size_mb` (the artifact as stored: FP32, INT8, INT4 groups with their scales), read once per
  call. Embedding tables count whole although a call gathers only its tokens' rows, so an export that stores the
  token embedding apart from a tied LM head counts it twice: weights are an upper estimate.
- activations: every layer's output written once and read once, in the row's activation element size (4 bytes,
  2 for fp16/bf16 rows, 1 for integer convolutional rows whose activations stay quantized; language models keep
  LayerNorm, softmax and GELU in float between their integer matmuls, so 4 for int8 rows); attention scores and
  probabilities; the logits (4 bytes). A classifier's layer outputs are counted once at preparation from its traced
  graph (models/prepare.py: convolutions, linear layers, pools, residual adds; batch norm and ReLU fused); a
  decoder's from its shape (`outputs_per_token`).
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
CLASSIFIER_KEYS = ("activation_elements", "latency_resolution")
DECODER_KEYS = ("n_layer", "n_head", "head_dim", "vocab_size")


def shapes_from_manifest(manifest: dict | None) -> dict | None:
    """The shapes the estimate needs, from a prepared model's manifest (models/prepare.py records them for image
    classifiers and for decoders; None when it lacks them)."""
    m = manifest or {}
    if all(m.get(k) for k in CLASSIFIER_KEYS):
        return {"kind": "classifier", "activation_elements": int(m["activation_elements"]),
                "resolution": int(m["latency_resolution"])}
    if all(m.get(k) for k in DECODER_KEYS):
        heads, hd = int(m["n_head"]), int(m["head_dim"])
        hidden = int(m.get("hidden_size") or heads * hd)
        return {"kind": "decoder", "n_layer": int(m["n_layer"]), "n_head": heads,
                "n_kv_head": int(m.get("n_kv_head") or heads), "head_dim": hd, "hidden_size": hidden,
                "mlp_inner": int(m.get("mlp_inner") or 4 * hidden), "mlp_gated": bool(m.get("mlp_gated")),
                "vocab_size": int(m["vocab_size"])}
    return None


def outputs_per_token(s: dict) -> int:
    """Elements one decoder layer writes per token, attention scores aside: ln1, the q/k/v projections (k and v at
    the key-value heads), the attention context, the output projection, the residual add, ln2, the feed-forward block
    (one projection + activation + the down projection; gated: gate, up, activation, their product, down) and the
    second residual add. GPT-2 (hidden d, 4d inner): 18 d."""
    d, q, kv = s["hidden_size"], s["n_head"] * s["head_dim"], s["n_kv_head"] * s["head_dim"]
    inner = s["mlp_inner"]
    mlp = (4 * inner if s["mlp_gated"] else 2 * inner) + d
    return d + (q + 2 * kv) + q + d + d + d + mlp + d


def estimate(shapes: dict, *, size_mb: float | None, batch: int, latency_kind: str | None,
             latency_shape: list | tuple | None = None, prompt_tokens: int | None = None,
             new_tokens: int | None = None, compute_precision: str | None = None) -> dict | None:
    """Bytes of one timed call: {bytes_per_call, weights, activations, kv_cache, inputs, items_per_call (what the
    row's throughput counts per call), call, version}; None when the row lacks what the estimate needs."""
    if not shapes or not size_mb or not batch:
        return None
    weights = int(round(float(size_mb) * 1e6))
    b = int(batch)
    if shapes.get("kind") == "classifier":
        if not latency_shape or len(latency_shape) != 4:
            return None
        h, w = int(latency_shape[2]), int(latency_shape[3])
        eb = CONV_ACT_BYTES.get(compute_precision or "fp32", 4)
        per_image = shapes["activation_elements"] * (h * w) / float(shapes["resolution"] ** 2)
        act = int(round(2 * b * per_image * eb))
        inputs = b * 3 * h * w * 4
        return _out(weights, act, 0, inputs, b, f"one forward of {b} images of 3x{h}x{w}")
    if shapes.get("kind") != "decoder":
        return None
    d, layers, heads, vocab = shapes["hidden_size"], shapes["n_layer"], shapes["n_head"], shapes["vocab_size"]
    per_layer = outputs_per_token(shapes)
    kv_width = shapes["n_kv_head"] * shapes["head_dim"]
    eb = FLOAT_BYTES.get(compute_precision or "", 4)
    if latency_kind == "decode":
        if not prompt_tokens or not new_tokens:
            return None
        past = prompt_tokens + max(0, new_tokens - 2) / 2.0  # mean past length of the timed tokens (2nd to last)
        ctx = past + 1
        act = 2 * b * (layers * (per_layer + 2 * heads * ctx) + d) * eb + b * vocab * 4
        kv = int(round(2 * layers * b * kv_width * eb * (past + 1)))  # past keys/values read, the new ones written
        return _out(weights, int(round(act)), kv, b * 8, b,
                    f"one generated token (batch {b}, mean past {past:g} tokens)")
    if not latency_shape or len(latency_shape) != 2:
        return None
    seq = int(latency_shape[1])
    act = 2 * b * seq * (layers * (per_layer + 2 * heads * seq) + d) * eb + b * seq * vocab * 4
    return _out(weights, act, 0, b * seq * 8, b * seq, f"one forward of {b} x {seq} tokens")


def _out(weights: int, act: int, kv: int, inputs: int, items: int, call: str) -> dict:
    return {"bytes_per_call": weights + act + kv + inputs, "weights": weights, "activations": act, "kv_cache": kv,
            "inputs": inputs, "items_per_call": items, "call": call, "version": VERSION}


def for_row(row, shapes: dict | None = None) -> dict | None:
    """The estimate of a result row (a ResultRow): its recorded one (extra.traffic, written by the kit from the
    manifest), else one from `shapes` (None without them)."""
    extra = getattr(row, "extra", None) or {}
    if extra.get("traffic"):
        return extra["traffic"]
    gen = extra.get("generation") or {}
    return estimate(shapes, size_mb=row.size_mb, batch=row.batch, latency_kind=row.latency_kind,
                    latency_shape=extra.get("latency_shape"), prompt_tokens=gen.get("prompt_tokens"),
                    new_tokens=gen.get("new_tokens"), compute_precision=row.compute_precision)
