"""Bytes per call (utils/traffic.py) and the roofline columns the aggregation derives from them: exact arithmetic on
GPT-2 small and ResNet50 shapes, the bound that applies, and the note when a row reads above its memory bound."""
import pytest

from evaluation.report.table import build_table, roofline
from evaluation.report.markdown import render_markdown
from utils import traffic
from utils.rows import ResultRow

# GPT-2 small's shapes as models/prepare.py records them in a manifest
GPT2_MANIFEST = {"n_layer": 12, "n_head": 12, "n_kv_head": 12, "head_dim": 64, "hidden_size": 768, "mlp_inner": 3072,
                 "mlp_gated": False, "vocab_size": 50257}
GPT2 = traffic.shapes_from_manifest(GPT2_MANIFEST)
CEIL = {"fp32_ops_per_s": 200e9, "int8_ops_per_s": 600e9, "mem_bytes_per_s": 20e9, "threads": 2,
        "memory": {"llc_mb": 32.0, "array_mb": 64.0}}


def test_gpt2_prefill_counts_weights_activations_logits_and_ids():
    t = traffic.estimate(GPT2, size_mb=652.0, batch=2, latency_kind="host-wall", latency_shape=[2, 128],
                         compute_precision="fp32")
    per_token = 12 * (18 * 768 + 2 * 12 * 128) + 768  # 12 layers of outputs (+ scores/probs over 128) + final ln
    act = 2 * 2 * 128 * per_token * 4 + 2 * 128 * 50257 * 4  # written + read, fp32; logits written
    assert t == {"bytes_per_call": 652_000_000 + act + 2 * 128 * 8, "weights": 652_000_000, "activations": act,
                 "kv_cache": 0, "inputs": 2 * 128 * 8, "items_per_call": 256,
                 "call": "one forward of 2 x 128 tokens", "version": 1}
    half = traffic.estimate(GPT2, size_mb=652.0, batch=2, latency_kind="host-wall", latency_shape=[2, 128],
                            compute_precision="bf16")
    assert half["activations"] == 2 * 2 * 128 * per_token * 2 + 2 * 128 * 50257 * 4  # bf16 layers, fp32 logits
    int8 = traffic.estimate(GPT2, size_mb=165.0, batch=2, latency_kind="host-wall", latency_shape=[2, 128],
                            compute_precision="int8")
    assert int8["activations"] == act and int8["weights"] == 165_000_000  # an LM's activations stay float


def test_gpt2_decode_reads_the_kv_cache_at_the_mean_past_length():
    t = traffic.estimate(GPT2, size_mb=497.8, batch=1, latency_kind="decode", prompt_tokens=128, new_tokens=32,
                         compute_precision="fp32")
    past = 128 + 15  # timed tokens 2..32 see pasts 128..158: mean 143
    assert t["kv_cache"] == 2 * 12 * 768 * 4 * (past + 1)  # keys and values of every layer read, the new ones written
    assert t["activations"] == 2 * (12 * (18 * 768 + 2 * 12 * (past + 1)) + 768) * 4 + 50257 * 4
    assert t["weights"] == 497_800_000 and t["inputs"] == 8 and t["items_per_call"] == 1
    assert t["bytes_per_call"] == t["weights"] + t["activations"] + t["kv_cache"] + t["inputs"]
    assert traffic.estimate(GPT2, size_mb=497.8, batch=1, latency_kind="decode") is None  # no prompt: no estimate


def test_gpt2_layer_outputs_are_18_widths_per_token_and_a_gated_mlp_adds_its_gate():
    assert traffic.outputs_per_token(GPT2) == 18 * 768  # ln1, qkv 3, context, proj, add, ln2, fc 4, gelu 4, fc2, add
    llama = traffic.shapes_from_manifest(dict(GPT2_MANIFEST, n_kv_head=4, mlp_inner=2048, mlp_gated=True))
    # q 768 + k, v at 4 key-value heads of 64; gate, up, activation, product 4 x 2048, down 768
    assert traffic.outputs_per_token(llama) == 768 + (768 + 2 * 256) + 768 + 3 * 768 + 4 * 2048 + 768 + 768
    t = traffic.estimate(llama, size_mb=100.0, batch=1, latency_kind="decode", prompt_tokens=128, new_tokens=32)
    assert t["kv_cache"] == 2 * 12 * 256 * 4 * (128 + 15 + 1)  # keys/values at the key-value heads' width


def test_classifier_counts_its_recorded_layer_outputs_at_the_row_precision():
    n = 16_837_096  # ResNet50 at 224x224 (tests/torch/test_random_weights.py counts it from the traced graph)
    shapes = traffic.shapes_from_manifest({"activation_elements": n, "latency_resolution": 224, "num_classes": 1000})
    assert shapes == {"kind": "classifier", "activation_elements": n, "resolution": 224}
    fp32 = traffic.estimate(shapes, size_mb=102.5, batch=32, latency_kind="host-wall", latency_shape=[32, 3, 224, 224],
                            compute_precision="fp32")
    int8 = traffic.estimate(shapes, size_mb=26.0, batch=32, latency_kind="host-wall", latency_shape=[32, 3, 224, 224],
                            compute_precision="int8")
    assert fp32["activations"] == 2 * 32 * n * 4 and int8["activations"] == 2 * 32 * n  # uint8 activations
    assert fp32["inputs"] == 32 * 3 * 224 * 224 * 4 and fp32["items_per_call"] == 32
    assert traffic.shapes_from_manifest({"num_classes": 1000}) is None  # a manifest without the count: no estimate


def _row(method, precision, kind, p50_ms, throughput, size_mb, compute="fp32", batch=1, **extra):
    ex = {"latency_shape": [batch, 128]} if kind != "decode" else {"generation": {"prompt_tokens": 128,
                                                                                  "new_tokens": 32}}
    # what the kit records from the manifest's shapes (quantization/kit/variant.py traffic_record)
    ex["traffic"] = traffic.estimate(GPT2, size_mb=size_mb, batch=batch, latency_kind=kind,
                                     latency_shape=ex.get("latency_shape"), prompt_tokens=128, new_tokens=32,
                                     compute_precision=compute)
    ex.update(extra)
    return ResultRow(model="gpt2", weights="random", dataset="random token ids", toolchain="onnxruntime",
                     method=method, precision=precision, device="cpu", batch=batch, metric="ppl", value=None,
                     latency_kind=kind, latency_p10_ms=p50_ms, latency_p50_ms=p50_ms, latency_p90_ms=p50_ms,
                     latency_p99_ms=p50_ms, throughput=throughput, throughput_unit="tokens/s", ops_per_item=251.8e6,
                     compute_precision=compute, size_mb=size_mb, environment={"ceilings": CEIL, "eval_sha": "e"},
                     extra=ex)


def test_roofline_names_the_bound_and_rates_against_the_lower_one():
    decode = _row("fp32", "fp32", "decode", 40.0, 25.0, 497.8)  # 25 tokens/s
    t = traffic.for_row(decode)
    mem_s, compute_s = t["bytes_per_call"] / 20e9, 251.8e6 / 200e9
    r = roofline(decode, 200e9)
    assert r["bound"] == "memory" and mem_s > 10 * compute_s
    assert r["roofline_pct"] == pytest.approx(100 * mem_s / (1 / 25.0))
    assert r["bytes_per_call"] == t["bytes_per_call"] and "note" not in r
    prefill = _row("fp32", "fp32", "host-wall", 200.0, 640.0, 652.0)  # 128 tokens in 0.2 s
    p = roofline(prefill, 200e9)
    assert p["bound"] == "compute"
    assert p["roofline_pct"] == pytest.approx(100 * 251.8e6 * 640.0 / 200e9)  # equals the efficiency
    assert roofline(prefill, None) == {"bytes_per_call": float(traffic.for_row(prefill)["bytes_per_call"])}
    no_bw = prefill.replace(environment={"ceilings": {k: v for k, v in CEIL.items() if k != "mem_bytes_per_s"}})
    assert set(roofline(no_bw, 200e9)) == {"bytes_per_call"}


def test_table_columns_and_the_note_above_the_memory_bound():
    fast = _row("fp32", "fp32", "decode", 10.0, 100.0, 497.8)  # faster than streaming 498 MB at 20 GB/s allows
    slow = _row("minmax", "int8", "decode", 40.0, 25.0, 165.0, compute="int8")
    recorded = _row("entropy", "int8", "decode", 40.0, 25.0, 165.0, compute="int8",
                    traffic={"bytes_per_call": 400e6, "items_per_call": 1})  # the row's own record
    df = build_table([fast, slow, recorded]).set_index("method")
    assert list(df.columns[df.columns.get_loc("efficiency"):][:4]) == ["efficiency", "bytes_per_call", "bound",
                                                                          "roofline_pct"]
    assert df.loc["fp32", "bound"] == "memory" and df.loc["fp32", "roofline_pct"] > 110
    assert "roofline" in df.loc["fp32", "notes"] and "above its memory bound" in df.loc["fp32", "notes"]
    assert "last-level cache holds 32 MB" in df.loc["fp32", "notes"]
    assert df.loc["entropy", "bytes_per_call"] == 400e6
    assert df.loc["entropy", "roofline_pct"] == pytest.approx(100 * (400e6 / 20e9) / (1 / 25.0))
    assert not isinstance(df.loc["minmax", "notes"], str) or "roofline" not in df.loc["minmax", "notes"]
    md = render_markdown(df.reset_index(), [fast, slow, recorded])
    pct = f"{df.loc['minmax', 'roofline_pct']:.1f} (memory)"
    assert f"| {df.loc['minmax', 'efficiency']:.1f} | {pct} |" in md  # the decode table: eff. % then roofline
    assert "memory 20.0 GB/s" in md
