"""The refactors of the run plan, the route kit, the model catalogue and the route folders changed no accuracy value.

results/reference/embedded_values_7d521ac.csv holds what the routes of commit 7d521ac (before those refactors)
computed on the embedded default's current weights, each route quantizing and calibrating with its own code
(results/reference/README.md: the command). The committed results/summary.csv, made by the current code on the same
weights, has every one of those rows, ok, with the identical value: scoring is deterministic given the weights, the
evaluation samples and the calibration subset. When the published table comes from newly trained weights (training
is not bit-identical across CPUs), the reference is remade by that command.
"""
import pandas as pd

from utils.paths import RESULTS_DIR

KEY = ["model", "weights", "toolchain", "method", "precision", "device", "batch"]
REFERENCE = RESULTS_DIR / "reference" / "embedded_values_7d521ac.csv"


def test_the_reference_covers_every_cpu_toolchain_and_both_models():
    ref = pd.read_csv(REFERENCE)
    assert set(ref["model"]) == {"resnet50", "gpt2"} and (ref["git_commit"] == "7d521ac").all()
    assert {"torch", "onnxruntime", "openvino", "modelopt-onnx"} <= set(ref["toolchain"])
    assert len(ref) >= 17 and ref["value"].notna().all()


def test_same_keys_and_accuracy_values_as_the_code_before_the_refactors():
    ref = pd.read_csv(REFERENCE)
    new = pd.read_csv(RESULTS_DIR / "summary.csv")
    new = new[new["eval_limit"].isna() & (new["latency_kind"] != "decode")]
    missing = set(map(tuple, ref[KEY].astype(str).values)) - set(map(tuple, new[KEY].astype(str).values))
    assert not missing, sorted(missing)
    merged = ref.merge(new, on=KEY, suffixes=("_ref", "_new"))
    assert len(merged) == len(ref)
    assert (merged["status"] == "ok").all(), merged[merged["status"] != "ok"][KEY + ["reason"]]
    diff = merged[merged["value_ref"] != merged["value_new"]]
    assert diff.empty, diff[KEY + ["value_ref", "value_new"]].to_string()
