"""--weights random: the real ResNet50 (1,000 classes, torchvision's own initialisation) prepared offline and run
through the torch route: latency, size and memory filled, accuracy cells empty with the reason, fidelity filled."""
import numpy as np
import pytest

from models.catalog import MODEL_DECLS
from utils.specs import RANDOM_REASON, ModelSource


@pytest.fixture(scope="module")
def random_resnet():
    from models.prepare import prepare

    src = ModelSource("resnet50", "random")
    return src, prepare(src)


def test_prepared_real_shape_without_download(random_resnet):
    import torch

    from models.embedded import load_classifier

    src, man = random_resnet
    assert man["num_classes"] == 1000 and man["resolution"] == 224 and man["random_init"] == MODEL_DECLS["resnet50"].random
    model = load_classifier("resnet50", man["checkpoint"], 1000)
    assert model.fc.weight.shape == (1000, 2048)
    assert 25.4e6 < sum(p.numel() for p in model.parameters()) < 25.7e6  # ResNet50's 25.56M parameters
    # torchvision's default init (not zero-initialised residual BN): every block contributes
    assert float(model.layer1[0].bn3.weight.abs().min()) > 0
    assert man["ops_per_item"] == pytest.approx(8.2e9, rel=0.03)  # 4.1 GMAC at 224x224
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_digit_inputs_upscaled_after_picking_equal_the_full_upscale():
    from utils.data import calibration_subset, digits_inputs, digits_splits, subset

    cal, ev = digits_inputs(64, 5, 7)
    sp = digits_splits(resolution=64)
    ref_cal = calibration_subset(sp["train"], 5)
    ref_ev = subset(sp["test"], 7, seed=0, name="test", what="evaluation")
    assert np.allclose(cal.x, ref_cal.x, atol=1e-6) and (cal.indices == ref_cal.indices).all()
    assert np.allclose(ev.x, ref_ev.x, atol=1e-6) and ev.x.shape == (7, 3, 64, 64)


def test_route_rows_have_latency_and_fidelity_but_no_accuracy(random_resnet, tmp_path):
    from quantization.torch.route import main
    from utils.rows import read_rows

    runs = tmp_path / "runs"
    rc = main(["--model", "resnet50", "--weights", "random", "--methods", "eager,fx", "--devices", "cpu",
               "--batches", "1", "--min-iters", "3", "--min-time", "0.01", "--calib-samples", "8",
               "--runs-dir", str(runs)])
    assert rc == 0
    rows = {r.method: r for r in read_rows(runs)}
    assert set(rows) == {"eager", "fx"}
    for r in rows.values():
        assert r.status == "ok" and r.weights == "random" and r.value is None and r.top5 is None
        assert r.notes.startswith(RANDOM_REASON) and r.dataset == "digits-224 inputs"
        assert r.latency_p50_ms > 0 and r.peak_mem_mb > 0
        assert r.environment["n_eval"] == MODEL_DECLS["resnet50"].random["n_eval"] and r.environment["n_calib"] == 8
    assert rows["eager"].size_mb > 90  # 25.6M FP32 parameters
    fx = rows["fx"]
    assert fx.value is None and fx.top5 is None and fx.fidelity_vs == "torch/eager"
    # the fidelity columns are the FX INT8 logits against the eager FP32 logits on the same 64 inputs, recomputed here
    # from the outputs both runs kept (plain NumPy, float64)
    outs = {m: np.load(runs / "outputs" / f"resnet50__random__torch__{m}__cpu.npz") for m in ("eager", "fx")}
    e, q = (outs[m]["logits"].astype(np.float64) for m in ("eager", "fx"))
    y = outs["eager"]["labels"]
    assert e.shape == q.shape == (64, 1000) and (outs["fx"]["labels"] == y).all()
    te, tq = e.argmax(1), q.argmax(1)
    assert fx.agreement == pytest.approx(100.0 * np.mean(te == tq))
    assert (fx.flips_lost, fx.flips_gained) == (int(((te == y) & (tq != y)).sum()), int(((te != y) & (tq == y)).sum()))
    assert fx.sqnr_db == pytest.approx(10 * np.log10((e ** 2).sum() / ((e - q) ** 2).sum()), rel=1e-6)

    def log_softmax(x):
        z = x - x.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = log_softmax(e), log_softmax(q)
    assert fx.kl == pytest.approx(float(np.mean((np.exp(lp) * (lp - lq)).sum(1))), rel=1e-6)
    assert fx.sqnr_db < 300 and fx.kl > 0  # the INT8 logits really differ from the FP32 ones (not one run twice)
    assert fx.size_mb < 30  # INT8 weights
    assert fx.speedup_ci_low <= fx.speedup_paired <= fx.speedup_ci_high


def test_classifier_activation_count_matches_the_hooked_layers():
    """models.prepare counts a classifier's layer outputs from its fx-traced graph (utils/traffic.py's activations);
    torchvision's ResNet50, hooked, agrees: every convolution, the max pool, each bottleneck's residual add (+ ReLU),
    the pooled features and the logits."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.resnet import Bottleneck

    from models.prepare import activation_elements

    net = resnet50(num_classes=1000).eval()
    counted = []
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, Bottleneck, torch.nn.AdaptiveAvgPool2d,
                          torch.nn.Linear)):
            m.register_forward_hook(lambda mod, inp, out: counted.append(out.numel()))
    for h, w in ((224, 224), (64, 96)):
        counted.clear()
        with torch.inference_mode():
            net(torch.zeros(1, 3, h, w))
        hooked = sum(counted)  # taken before tracing: the hooks also fire (on proxies) while fx traces the model
        assert activation_elements(net, torch.zeros(1, 3, h, w)) == hooked, (h, w)
    assert activation_elements(net, torch.zeros(1, 3, 224, 224)) == 16_837_096
