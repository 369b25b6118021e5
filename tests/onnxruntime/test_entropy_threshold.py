"""The route's KL threshold search is ORT's own, result for result: compared with ORT 1.24's
`HistogramCollector.get_entropy_threshold` on histograms collected by ORT's collector (grown between
batches, heavy-tailed, sparse, one-sided, degenerate)."""
from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization import calibrate

from quantization.onnxruntime import route


def _collector(num_bins: int):
    return calibrate.HistogramCollector("entropy", symmetric=False, num_bins=num_bins, num_quantized_bins=128,
                                        percentile=99.99, scenario="same")


def _histograms(num_bins: int) -> dict:
    rng = np.random.default_rng(7)
    col = _collector(num_bins)
    batches = {
        "t3_grown": [rng.standard_t(3, 4000) * s for s in (1.0, 2.5, 4.0)],  # the range grows: bins are added
        "relu": [np.maximum(rng.normal(0.5, 1.0, 4000), 0) for _ in range(2)],  # one-sided, a spike at zero
        "sparse": [np.where(rng.random(4000) < 0.02, rng.normal(0, 5, 4000), 0.0)],  # mostly exact zeros
        "two_values": [np.array([-1.0, 3.0] * 500)],  # nearly every bin empty
        "constant": [np.zeros(1000)],  # zero range: ORT's smoothing gives up on every candidate
    }
    for name, arrays in batches.items():
        for a in arrays:
            col.collect_value({name: np.asarray(a, dtype=np.float32)})
    return col.histogram_dict


@pytest.mark.parametrize("num_bins", [256, 2048])
def test_same_threshold_as_orts_own_search(num_bins):
    col = _collector(num_bins)
    hists = _histograms(num_bins)
    assert hists["t3_grown"][0].size > num_bins  # the merge really grew this one
    for name, h in hists.items():
        theirs = calibrate.HistogramCollector.get_entropy_threshold(col, h, 128)
        ours = route.entropy_threshold(col, h, 128)
        assert [np.asarray(x).tobytes() for x in ours] == [np.asarray(x).tobytes() for x in theirs], name
        assert [np.asarray(x).dtype for x in ours] == [np.asarray(x).dtype for x in theirs], name


def test_patched_only_inside_the_calibration_and_restored():
    orig = calibrate.HistogramCollector.get_entropy_threshold
    with route._entropy_bins(2048):
        assert calibrate.HistogramCollector.get_entropy_threshold is route.entropy_threshold
    assert calibrate.HistogramCollector.get_entropy_threshold is orig
    with route._entropy_bins(0):  # ORT's defaults: nothing patched
        assert calibrate.HistogramCollector.get_entropy_threshold is orig


def test_entropy_artifact_matches_orts_unpatched_calibration(convnet_path, tmp_path):
    """End to end on the tiny convnet: the same scales as ORT's untouched search at the same bin count."""
    import onnx
    from onnx import numpy_helper

    from quantization.kit import onnx as oc

    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    name = route._input_name(convnet_path, "input")

    def scales(path):
        m = onnx.load(str(path))
        return {i.name: numpy_helper.to_array(i).tobytes() for i in m.graph.initializer if "scale" in i.name}

    ours = tmp_path / "ours.onnx"
    route.quantize_static_onnx(convnet_path, ours, oc.ArrayCalibrationReader(name, batches), method="entropy",
                               task_kind="image-classification", entropy_bins=512)
    slow = tmp_path / "orts.onnx"
    fast = route.entropy_threshold
    try:
        route.entropy_threshold = calibrate.HistogramCollector.get_entropy_threshold  # ORT's own, patched in
        route.quantize_static_onnx(convnet_path, slow, oc.ArrayCalibrationReader(name, batches), method="entropy",
                                   task_kind="image-classification", entropy_bins=512)
    finally:
        route.entropy_threshold = fast
    a, b = scales(ours), scales(slow)
    assert a and a == b
