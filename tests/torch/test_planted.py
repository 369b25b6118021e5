"""Planted degradation on the embedded ResNet50 (torch env): the suite must flag a fault we put in on purpose.

(a) the top-1 drop vs FP32 is significant by the McNemar exact test the results table uses
    (utils.stats.mcnemar_exact on per-sample correctness, 359 test samples), while the clean
    FX INT8 model's difference is not;
(b) the per-layer report (evaluation.analysis.layer_report, local SQNR) ranks the planted layer first.
The embedded ResNet50 comes from the folder's `embedded_models` fixture (models.prepare): a missing model is
prepared, and a failure to prepare it fails these tests instead of skipping them.
"""
import pytest


@pytest.fixture(scope="module")
def setup(embedded_models):
    from evaluation.analysis.planted import evaluate_plant
    from quantization.kit import build_variant, score_built

    ctx, fp32_built = build_variant("torch", "resnet50", "eager", argv=["--calib-samples", "128"])
    _, fx_built = build_variant("torch", "resnet50", "fx", argv=["--calib-samples", "128"])
    data, fp32, q = ctx.data, fp32_built.handle, fx_built.handle
    base = score_built(ctx, fp32_built)  # the eager FP32 row's correctness, scored as the bench scores it
    clean = evaluate_plant(fp32, q, data, base.correct, "")
    return data, fp32, q, base, clean


def test_clean_fx_int8_is_not_flagged(setup):
    data, fp32, q, base, clean = setup
    assert len(data.test) == 359 and base.top1 > 98
    assert abs(clean["score"].top1 - base.top1) < 1.0
    assert clean["mcnemar"]["p_value"] >= 0.05
    assert clean["layers"][0]["local_sqnr_db"] > 15, clean["layers"][:3]  # no clean INT8 layer below 15 dB


# int2:fc: per-tensor 2-bit classifier weights (3 levels): top-1 loses a few samples, how many depends on the weights
# this machine trained (1.1 points, p=0.22, here; 1.7 points on the machine of the committed table), so its top-1 test
# is only "more lost than gained", and the logit SQNR must flag it; int3:conv1: 3-bit stem weights, a large drop that
# the table's McNemar test must call significant on any machine
@pytest.mark.parametrize("spec,layer,min_drop", [("int2:fc", "fc", None), ("int3:conv1", "conv1", 5.0)])
def test_planted_layer_is_flagged(setup, spec, layer, min_drop):
    from evaluation.analysis.planted import evaluate_plant

    data, fp32, q, base, clean = setup
    r = evaluate_plant(fp32, q, data, base.correct, spec)
    drop = base.top1 - r["score"].top1
    t = r["mcnemar"]
    print(f"{spec}: top-1 {r['score'].top1:.2f} (FP32 {base.top1:.2f}, drop {drop:.2f}), McNemar p={t['p_value']:.3g} "
          f"({t['n_base_only']} lost / {t['n_other_only']} gained), worst layers "
          + ", ".join(f"{l['layer']} {l['local_sqnr_db']:.1f} dB" for l in r["layers"][:3]))
    # (a) an accuracy loss (significant by the table's test where it is large), and logits far from FP32's
    assert drop > 0 and t["n_base_only"] > t["n_other_only"]
    if min_drop is not None:
        assert drop >= min_drop and t["p_value"] < 0.05
    assert r["fidelity"]["sqnr_db"] < clean["fidelity"]["sqnr_db"] - 6
    # (b) the report ranks the planted layer first, far below every other layer
    first, second = r["layers"][0], r["layers"][1]
    assert first["layer"] == layer and first["planted"] and first["rank"] == 1
    assert first["local_sqnr_db"] < second["local_sqnr_db"] - 8
    assert first["local_sqnr_db"] < clean["layers"][0]["local_sqnr_db"] - 8
    # the other layers keep their clean local quality (within 3 dB): the report points at one layer
    before = {l["layer"]: l["local_sqnr_db"] for l in clean["layers"]}
    others = [l for l in r["layers"] if l["layer"] != layer]
    assert max(abs(l["local_sqnr_db"] - before[l["layer"]]) for l in others) < 3


@pytest.mark.parametrize("spec", ["act-x4", "int4:fc", "int4:layer2.0.downsample.0"])
def test_fidelity_columns_see_faults_top1_does_not(setup, spec):
    """Faults that leave top-1 (almost) unchanged still show in the logit SQNR / KL against FP32."""
    from evaluation.analysis.planted import evaluate_plant

    data, fp32, q, base, clean = setup
    r = evaluate_plant(fp32, q, data, base.correct, spec)
    c, f = clean["fidelity"], r["fidelity"]
    assert f["sqnr_db"] < c["sqnr_db"] - 1.0, (spec, f["sqnr_db"], c["sqnr_db"])
    assert f["kl"] > c["kl"], (spec, f["kl"], c["kl"])
    assert c["agreement"] >= 99.0 and c["flips_lost"] + c["flips_gained"] <= 3
