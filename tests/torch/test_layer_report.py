"""Per-layer report on a tiny FX INT8 model: real quantization, numbers asserted (torch env). The FX comparison and
the plants are the torch toolchain's layer_report tool (quantization/torch/layer_report.py); the CSV is the command's."""
import math

import numpy as np
import pytest
import torch

from evaluation.analysis.layer_report import read_csv, write_csv
from quantization.torch.layer_report import (apply_plant, layer_errors, parse_plant, plant_weight_bits,
                                             quantized_layers)
from utils.metrics import sqnr_db
from utils.errors import SuiteError


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(16)
        self.c2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.c4 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        x = torch.relu(self.c4(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    from quantization.torch.route import resnet_fx

    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        m.b1.running_mean.uniform_(-0.2, 0.2)
        m.b1.running_var.uniform_(0.5, 2.0)
    g = np.random.default_rng(0)
    calib = g.standard_normal((64, 3, 12, 12)).astype(np.float32)
    x = g.standard_normal((48, 3, 12, 12)).astype(np.float32)
    return m, resnet_fx(m, calib), x


def test_names_match_and_clean_int8_layers_are_accurate(tiny):
    m, q, x = tiny
    names = set(quantized_layers(q))
    assert {"c1", "c2", "c3", "c4", "fc"} <= names
    rows = layer_errors(m, q, x)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["local_sqnr_db"] for r in rows] == sorted(r["local_sqnr_db"] for r in rows)
    for r in rows:  # INT8 per-channel weights, per-tensor activations: every layer well above 20 dB
        assert r["local_sqnr_db"] > 20, r
        assert math.isclose(r["local_rel_err"], 10 ** (-r["local_sqnr_db"] / 20), rel_tol=1e-6)
        assert r["weight_qscheme"] == "per_channel_affine"
    # accumulated error of the first layer adds the input's own quantization to the layer's error
    first = next(r for r in rows if r["layer"] == "c1")
    assert first["accum_sqnr_db"] < first["local_sqnr_db"]


def test_outputs_are_the_models_outputs(tiny):
    m, q, x = tiny
    outs = {}
    layer_errors(m, q, x, outputs=outs)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
        out = q(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outs["fp32"], ref, rtol=1e-4, atol=1e-5)  # fused (BN folded) == eager FP32
    np.testing.assert_array_equal(outs["quantized"], out)
    assert sqnr_db(ref, out) > 20


def test_planted_int2_layer_ranks_first_and_local_isolates_it(tiny):
    import copy

    m, q, x = tiny
    clean = {r["layer"]: r for r in layer_errors(m, q, x)}
    bad = copy.deepcopy(q)
    info = apply_plant(bad, parse_plant("int2:c2"))
    w = quantized_layers(bad)["c2"].weight()
    assert w.qscheme() == torch.per_tensor_affine and int(w.int_repr().abs().max()) <= 2
    assert info["weights"]["levels_used"] <= 4
    rows = layer_errors(m, bad, x, planted="c2")
    by = {r["layer"]: r for r in rows}
    assert rows[0]["layer"] == "c2" and rows[0]["planted"]
    assert rows[0]["local_sqnr_db"] < 10 and rows[1]["local_sqnr_db"] > rows[0]["local_sqnr_db"] + 10
    # layers after it keep their own (local) quality but inherit the damage (accumulated)
    for name in ("c3", "c4"):
        assert abs(by[name]["local_sqnr_db"] - clean[name]["local_sqnr_db"]) < 6
        assert by[name]["accum_sqnr_db"] < clean[name]["accum_sqnr_db"] - 10
    # layers before it are untouched
    assert by["c1"]["local_sqnr_db"] == pytest.approx(clean["c1"]["local_sqnr_db"], abs=1e-9)


def test_activation_range_plant_scales_every_output_scale(tiny):
    import copy

    m, q, x = tiny
    bad = copy.deepcopy(q)
    before = {n: float(l.scale) for n, l in quantized_layers(bad).items()}
    assert apply_plant(bad, parse_plant("act-x4"))["act_scales_changed"] >= len(before) + 1  # + the input quantizer
    after = {n: float(l.scale) for n, l in quantized_layers(bad).items()}
    assert all(after[n] == pytest.approx(4 * before[n]) for n in before)
    clean = {r["layer"]: r["local_sqnr_db"] for r in layer_errors(m, q, x)}
    worse = {r["layer"]: r["local_sqnr_db"] for r in layer_errors(m, bad, x)}
    # 4x coarser output rounding costs about 20*log10(4) = 12 dB where rounding dominates
    assert np.mean([clean[n] - worse[n] for n in clean]) > 6


def test_csv_round_trip_and_bad_plants(tiny, tmp_path):
    m, q, x = tiny
    rows = layer_errors(m, q, x[:8])
    p = write_csv(rows, tmp_path / "r.csv")
    back = read_csv(p)
    assert [r["layer"] for r in back] == [r["layer"] for r in rows]
    assert back[0]["local_sqnr_db"] == pytest.approx(rows[0]["local_sqnr_db"], abs=1e-4)
    for bad in ("int9:c1", "foo", "act-x0", "act-xa"):
        with pytest.raises(SuiteError):
            parse_plant(bad)
    with pytest.raises(SuiteError, match="not a quantized layer"):
        plant_weight_bits(q, "nope", 4)
