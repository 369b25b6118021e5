"""Generation (decode) rows and --weights random rows: the kit's greedy loop and token match, row keys, and how
aggregation pairs, judges and renders them (real ResultRows through the real aggregation; no toolchain involved)."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from evaluation.report.table import build_table
from evaluation.report.markdown import render_compact, render_markdown
from evaluation.report.verdict import verdicts, Criterion
from quantization.kit import greedy, token_match
from utils.rows import ResultRow
from utils.specs import RANDOM_REASON, ModelSource
from utils.errors import SuiteError


class Bigram:
    """A real (tiny) language model with a KV-cache-like state: logits of the next token depend on the last token and
    on how many tokens the state has seen, so a wrong position or a dropped state changes the continuation."""

    def __init__(self, vocab=11, seed=0):
        self.table = np.random.default_rng(seed).normal(size=(vocab, vocab)).astype(np.float32)
        self.calls = []

    def full(self, ids):  # full-sequence reference: next-token logits at the last position
        return self.table[ids[:, -1]] + 0.3 * ids.shape[1]

    def step(self, ids, state):
        seen = (0 if state is None else state) + ids.shape[1]
        self.calls.append(ids.shape)
        return self.table[ids[:, -1]] + 0.3 * seen, seen


def test_greedy_matches_recomputing_the_full_sequence_and_times_every_token():
    m = Bigram()
    prompt = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    toks, ttft, per = greedy(m.step, prompt, 6)
    seq = prompt.copy()
    for _ in range(6):
        nxt = m.full(seq).argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], 1)
    assert toks.shape == (2, 6) and (toks == seq[:, 3:]).all()
    assert m.calls[0] == (2, 3) and all(c == (2, 1) for c in m.calls[1:])  # the prompt once, then one token a step
    assert ttft > 0 and len(per) == 5 and all(p > 0 for p in per)


def test_token_match_rate_and_first_divergence():
    a = np.array([[1, 2, 3, 4]])
    assert token_match(a, a) == (100.0, None)
    assert token_match(a, np.array([[1, 2, 9, 9]])) == (50.0, 2)
    assert token_match(a, np.array([[1, 2, 3]])) == (None, None)  # not the same generation: no rate


def _lm(method, precision, p50, *, kind="host-wall", weights="embedded", value=100.0, agreement=None, **kw):
    return ResultRow(model="gpt2", weights=weights, dataset="d", toolchain="onnxruntime", method=method,
                     precision=precision, device="cpu", batch=1, metric="ppl",
                     value=None if kind == "decode" or weights == "random" else value, agreement=agreement,
                     latency_kind=kind, latency_p10_ms=p50 * 0.9, latency_p50_ms=p50, latency_p90_ms=p50 * 1.1,
                     latency_p99_ms=p50 * 1.2, throughput=1000 / p50, latency_samples=20, peak_mem_mb=100.0,
                     environment={"eval_sha": "e", "run_id": "r"},
                     extra={"latency": {"samples_ms": [p50 * (1 + 0.01 * (i % 3)) for i in range(20)]}}, **kw)


def test_decode_rows_have_their_own_key_baseline_and_table():
    rows = [_lm("fp32", "fp32", 10.0), _lm("minmax", "int8", 5.0, value=100.2, agreement=99.5),
            _lm("fp32", "fp32", 1.0, kind="decode", ttft_ms=9.0),
            _lm("minmax", "int8", 0.8, kind="decode", ttft_ms=6.0, token_match=87.5)]
    assert len({r.key for r in rows}) == 4 and rows[2].key.endswith("__decode")
    df = build_table(rows)
    dec = df[df["latency_kind"] == "decode"].set_index("method")
    full = df[df["latency_kind"] != "decode"].set_index("method")
    # each kind against its own FP32: 1.0/0.8 for decode, 10/5 for the full sequence
    assert dec.loc["minmax", "speedup_vs_best_fp32"] == pytest.approx(1.25, rel=0.02)
    assert full.loc["minmax", "speedup_vs_best_fp32"] == pytest.approx(2.0, rel=0.02)
    assert dec.loc["minmax", "best_fp32"] == "onnxruntime/fp32" and dec.loc["minmax", "token_match"] == 87.5
    assert list(df["latency_kind"]) == ["host-wall", "host-wall", "decode", "decode"]  # generation rows after
    md = render_markdown(df, rows)
    assert "| toolchain | method | prec | dev | batch | ms/token p50" in md
    assert "| onnxruntime | minmax | int8 | cpu | 1 | 0.80 (0.72–0.88) | 20 | 1250.0 | 6.0 | 87.5 |" in md
    # the decode verdict is judged by the variant's full-sequence row (it meets the criterion here)
    vs = [v for v in verdicts(df, Criterion()) if v["kind"] == "decode"]
    assert len(vs) == 1 and vs[0]["method"] == "minmax"
    assert "ms/token decode b1" in render_compact(df)


def test_decode_rows_carry_their_variants_fidelity_from_the_same_run_and_samples():
    rows = [_lm("fp32", "fp32", 10.0), _lm("minmax", "int8", 5.0, value=100.2, agreement=99.5, kl=2e-3,
                                           fidelity_vs="onnxruntime/fp32"),
            _lm("minmax", "int8", 0.8, kind="decode", token_match=87.5),
            # another run's (or another evaluation's) full-sequence row never lends its fidelity
            _lm("entropy", "int8", 5.0, value=100.3, agreement=98.0, kl=3e-3),
            _lm("entropy", "int8", 0.8, kind="decode")]
    rows[3] = dataclasses.replace(rows[3], environment={"eval_sha": "x", "run_id": "r"})
    df = build_table(rows)
    dec = df[df["latency_kind"] == "decode"].set_index("method")
    assert dec.loc["minmax", "agreement"] == 99.5 and dec.loc["minmax", "kl"] == 2e-3
    assert dec.loc["minmax", "fidelity_vs"] == "onnxruntime/fp32" and "full-sequence evaluation" in dec.loc["minmax", "notes"]
    assert pd.isna(dec.loc["minmax", "value"])  # accuracy still lives in the full-sequence row only
    assert pd.isna(dec.loc["entropy", "agreement"]) and "full-sequence" not in (dec.loc["entropy", "notes"] or "")


def test_decode_verdict_follows_the_full_sequence_rows_criterion():
    rows = [_lm("fp32", "fp32", 10.0), _lm("minmax", "int8", 5.0, value=150.0, agreement=80.0),
            _lm("fp32", "fp32", 1.0, kind="decode"), _lm("minmax", "int8", 0.8, kind="decode")]
    vs = [v for v in verdicts(build_table(rows), Criterion()) if v["kind"] == "decode"]
    assert [v["method"] for v in vs] == ["fp32"]  # minmax fails on accuracy, so its faster decode does not win


def test_random_weight_rows_leave_accuracy_empty_and_say_why():
    rows = [_lm("fp32", "fp32", 10.0, weights="random", notes=RANDOM_REASON),
            _lm("minmax", "int8", 5.0, weights="random", agreement=90.0, notes=RANDOM_REASON),
            _lm("fp32", "fp32", 10.0), _lm("minmax", "int8", 5.0, value=100.2, agreement=99.5)]
    df = build_table(rows)
    rnd = df[df["weights"] == "random"]
    assert rnd["value"].isna().all() and rnd["delta"].isna().all()
    md = render_markdown(df, rows)
    assert md.count("## gpt2") == 2  # one table per kind of weights
    assert f"Accuracy cells are empty: {RANDOM_REASON}" in md
    v = [x for x in verdicts(df, Criterion()) if x["weights"] == "random"]
    assert len(v) == 1 and v[0]["method"] == "minmax" and v[0]["random"]  # fastest, flagged as no-criterion
    assert "random weights: no accuracy criterion applies" in md


def test_random_weights_take_no_paths_or_data():
    assert ModelSource("gpt2", "random").key != ModelSource("gpt2", "embedded").key
    with pytest.raises(SuiteError, match="pretrained only"):
        ModelSource("resnet50", "random", data="/tmp")


def test_random_weights_skip_calibration_twins_unless_named(tmp_path):
    from utils.plan import Settings, build_plan
    from utils.registry import TOOLCHAINS

    ort = TOOLCHAINS["onnxruntime"]
    # the scope variant (minmax+head) runs by default with random weights only; calibration twins never there
    assert ort.default_methods("gpt2", "cpu", "random") == ("fp32", "minmax", "minmax+head")
    assert ort.default_methods("gpt2", "cpu") == ("fp32", "minmax", "entropy", "percentile")
    for tc in TOOLCHAINS.values():  # a twin names a declared method of the same precision
        for twin, of in tc.latency_twins.items():
            for m in tc.models():
                if twin in tc.methods(m):
                    assert tc.precision(m, twin) == tc.precision(m, of)
    rnd = Settings(weights="random")
    plan = build_plan(models="gpt2", toolchains="onnxruntime", devices="cpu", settings=rnd, runs_dir=tmp_path)
    assert [it.method for it in plan.items] == ["fp32", "minmax", "minmax+head"]
    named = build_plan(models="gpt2", toolchains="onnxruntime", devices="cpu", methods="entropy", settings=rnd,
                       runs_dir=tmp_path)
    assert [it.method for it in named.items] == ["entropy"]


def test_a_route_killed_after_writing_its_skipped_cuda_rows_left_its_cpu_variants_unfinished(tmp_path):
    """The ModelOpt route writes skipped cuda rows first; killed later on the cpu, its cpu variants have no rows and
    must get failed rows (the cuda rows do not count for them)."""
    from evaluation.launch.routes import status_items, unfinished
    from utils.plan import Settings, build_plan

    plan = build_plan(models="gpt2", toolchains="modelopt-onnx", settings=Settings(weights="random"), runs_dir=tmp_path)
    cuda = [it for it in plan.items if it.device == "cuda"]
    status_items(plan, cuda, "skipped", "no CUDA", run_id="R")  # rows and item records, as the kit writes them
    assert [(it.method, it.device) for it in unfinished(plan, plan.items, "R")] == [
        ("max", "cpu"), ("fp8", "cpu"), ("int4", "cpu")]


def test_efficiency_above_the_fp32_ceiling_from_on_the_fly_activation_quantization_is_named():
    r = _lm("int8-wo", "int8", 10.0, notes="plugin default kept: DYNAMIC_QUANTIZATION_GROUP_SIZE=32",
            compute_precision="fp32", ops_per_item=1e9)
    r = r.replace(environment={**r.environment, "ceilings": {"fp32_ops_per_s": 50e9, "int8_ops_per_s": 400e9}},
                  throughput=100.0)
    row = build_table([r]).iloc[0]
    assert row["efficiency"] == pytest.approx(200.0)
    assert "on the fly" in row["notes"] and "against the INT8 ceiling" in row["notes"] and "25%" in row["notes"]


def test_compact_table_says_why_a_calibration_twin_has_no_larger_batch_cells():
    rows = [_lm("fp32", "fp32", 10.0), _lm("minmax", "int8", 5.0, value=100.2, agreement=99.5, kl=1e-3),
            _lm("entropy", "int8", 5.0, value=100.3, agreement=99.4, kl=1e-3)]
    rows += [dataclasses.replace(r, batch=8) for r in rows[:2]]  # the twin was timed at batch 1 only
    md = render_compact(build_table(rows))
    assert "Empty larger-batch cells of onnxruntime entropy (twin of minmax)" in md
    rows.append(dataclasses.replace(rows[2], batch=8))  # named in --methods: timed at every batch, no such line
    assert "Empty larger-batch cells" not in render_compact(build_table(rows))
