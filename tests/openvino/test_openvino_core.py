"""quantization.openvino.ov on tiny offline ONNX models: real OpenVINO/NNCF behaviour on the CPU.

Runs in the openvino environment (requirements/openvino.txt); skipped where openvino or nncf is missing.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from quantization.openvino import ov as O  # noqa: E402
from utils.errors import SuiteError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - out).astype(np.float64) ** 2)))


def run(model, x, threads: int = 1, **kw) -> tuple[np.ndarray, dict]:
    compiled, _ = O.compile_cpu(model, threads, **kw)
    y = O.predict_fn(compiled)(x)
    return y, O.runtime_precisions(compiled)  # after one inference: kernels picked (dynamic shapes)


def block_reference(path: Path, x: np.ndarray) -> np.ndarray:
    """numpy forward of the tiny MatMul block (float64), from the ONNX initializers."""
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in onnx.load(str(path)).graph.initializer}
    u = np.maximum(x @ w["w_up"] + w["b_up"], 0)
    return (u @ w["w_down"] + x) @ w["w_head"]


def bf16_cpu() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# ------------------------------------------------------------------------------ import / files

def test_import_does_not_load_openvino_or_nncf():
    code = ("import sys, quantization.openvino, quantization.openvino.ov; "
            "print(sorted(m for m in ('openvino', 'nncf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("content", [b"not an onnx model at all \x00\xff" * 10, "truncated"])
def test_corrupt_onnx_is_one_line_suite_error_naming_the_file(tmp_path, convnet_path, content):
    bad = tmp_path / "broken model.onnx"
    bad.write_bytes(convnet_path.read_bytes()[:200] if content == "truncated" else content)
    with pytest.raises(SuiteError) as err:
        O.read_onnx(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and len(msg) < 400


def test_missing_files_are_suite_errors(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        O.read_onnx(tmp_path / "nope.onnx")
    with pytest.raises(SuiteError, match="does not exist"):
        O.load_model(tmp_path / "nope.xml")


# ------------------------------------------------------------------------------ compile / predict

def test_compile_cpu_sets_and_reads_back_properties(convnet_path):
    model = O.read_onnx(convnet_path)
    for threads in (1, 2):
        _, props = O.compile_cpu(model, threads)
        read = props["read"]
        assert props["mismatch"] == []
        assert read["NUM_STREAMS"] == "1"
        assert read["INFERENCE_NUM_THREADS"] == str(threads)
        assert read["PERFORMANCE_HINT"] == "LATENCY"
        assert read["ENABLE_CPU_PINNING"] == "False"
        assert read["INFERENCE_PRECISION_HINT"] == "f32"
        assert read["EXECUTION_DEVICES"] == "CPU"
        assert set(props["set"]) <= set(read)
    _, pinned = O.compile_cpu(model, 1, pin=True, latency=False)
    assert pinned["read"]["ENABLE_CPU_PINNING"] == "True" and pinned["read"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    with pytest.raises(SuiteError):
        O.compile_cpu(model, 0)


def test_fp32_rows_compute_in_f32_and_match_numpy(block_path):
    x = np.random.default_rng(5).normal(0, 1, (2, 8, 256)).astype(np.float32)
    y, prec = run(O.read_onnx(block_path), x)
    ref = block_reference(block_path, x.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert prec["executed"] and prec["int_compute"] == 0 and prec["compute_precision"] == "f32"


@pytest.mark.skipif("not bf16_cpu()", reason="the CPU has no bf16: the plugin's default is f32 anyway")
def test_plugin_default_precision_would_be_bf16(block_path):
    """Why compile_cpu pins f32: left alone, an FP32 model computes in bf16 on this CPU."""
    x = np.random.default_rng(5).normal(0, 1, (2, 8, 256)).astype(np.float32)
    y, prec = run(O.read_onnx(block_path), x, inference_precision=None)
    assert prec["compute_precision"] == "bf16"
    assert sqnr_db(block_reference(block_path, x.astype(np.float64)), y) < 60  # visibly not f32


def test_predict_fn_reuses_request_but_returns_independent_arrays(convnet_path):
    compiled, _ = O.compile_cpu(O.read_onnx(convnet_path), 1)
    predict = O.predict_fn(compiled)
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    b = rng.normal(0, 1, (5, 3, 32, 32))  # float64 and another batch size: converted, not rejected
    ya = predict(a)
    ya_copy = ya.copy()
    yb = predict(b)
    assert ya.shape == (2, 10) and yb.shape == (5, 10) and ya.dtype == np.float32
    np.testing.assert_array_equal(ya, ya_copy)  # not overwritten by the second call
    y_nc = predict(np.asfortranarray(a))  # non-contiguous input
    np.testing.assert_allclose(y_nc, ya, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(predict({"input": a}), ya)


# ------------------------------------------------------------------------------ INT8 PTQ

def test_ptq_int8_convnet_close_to_fp32_with_integer_kernels(convnet_path, image_batches):
    model = O.read_onnx(convnet_path)
    x = np.random.default_rng(7).normal(0, 1, (16, 3, 32, 32)).astype(np.float32)
    y32, before = run(model, x)
    assert before["int_compute"] == 0 and before["float_compute"] == 3

    quantized, info = O.ptq_int8(model, image_batches, subset_size=8)
    assert info["items_fed"] == 8 and info["samples_fed"] == 8 * 4
    assert info["transform_calls"] >= 8 and info["seconds"] > 0
    assert info["preset"] == "performance" and info["model_type"] is None
    y8, after = run(quantized, x)
    assert after["executed"]
    assert after["int_compute"] == 3 and after["float_compute"] == 0 and after["compute_precision"] == "int8"
    assert set(after["compute"]) == {"Convolution", "FullyConnected"}
    assert sqnr_db(y32, y8) > 20
    # the input model is not modified in place
    y32_again, again = run(model, x)
    np.testing.assert_array_equal(y32_again, y32)
    assert again["int_compute"] == 0


def test_ptq_subset_larger_than_feed_feeds_everything(convnet_path, image_batches):
    _, info = O.ptq_int8(O.read_onnx(convnet_path), image_batches[:3], subset_size=300)
    assert info["items_fed"] == 3 and info["samples_fed"] == 12


def test_ptq_ignored_scope_uses_openvino_node_names(convnet_path, image_batches):
    """OpenVINO's ONNX frontend renames the Gemm's MatMul to 'fc/WithoutBiases': a plain ONNX name fails."""
    model = O.read_onnx(convnet_path)
    with pytest.raises(SuiteError, match="not found"):
        O.ptq_int8(model, image_batches[:4], ignored_scope={"names": ["fc"]})
    q, info = O.ptq_int8(model, image_batches[:4], preset="mixed", ignored_scope={"patterns": ["fc/.*"]})
    _, prec = run(q, image_batches[0])
    assert info["preset"] == "mixed"
    assert prec["compute"]["Convolution"] == {"i8": 2}
    assert prec["compute"]["FullyConnected"] == {"f32": 1}
    assert prec["compute_precision"] == "mixed"


def test_ptq_transformer_block_with_dict_feed(block_path, block_batches):
    model = O.read_onnx(block_path)
    x = block_batches[0]
    y32, _ = run(model, x)
    q, info = O.ptq_int8(model, block_batches, model_type="transformer")
    assert info["model_type"] == "transformer"
    assert info["items_fed"] == len(block_batches) and info["samples_fed"] == 2 * len(block_batches)
    y8, prec = run(q, x)
    assert prec["int_compute"] >= 2
    assert sqnr_db(y32, y8) > 15


def test_ptq_rejects_bad_arguments(convnet_path, image_batches):
    model = O.read_onnx(convnet_path)
    with pytest.raises(SuiteError):
        O.ptq_int8(model, [])
    with pytest.raises(SuiteError):
        O.ptq_int8(model, image_batches, preset="fast")
    with pytest.raises(SuiteError):
        O.ptq_int8(model, image_batches, model_type="llm")


# ------------------------------------------------------------------------------ weight compression

def test_compress_weights_shrinks_the_ir_and_keeps_outputs(tmp_path, block_path, block_batches):
    x = block_batches[0]
    fp32 = O.read_onnx(block_path)
    y32, _ = run(fp32, x)
    sizes = {"fp32": O.model_size_mb(O.save_model(fp32, tmp_path / "fp32.xml"))}
    n_weights = 2 * 256 * 384 + 384 * 256
    assert sizes["fp32"] * 1e6 > 4 * n_weights  # stored as f32 (save_model does not compress to fp16)
    outs, infos = {}, {}
    for mode, all_layers in [("int8_asym", None), ("int8_sym", None), ("int4_sym", None), ("int4_sym", True),
                             ("int4_asym", True)]:
        key = f"{mode}{'_all' if all_layers else ''}"
        model, infos[key] = O.compress_weights(O.read_onnx(block_path), mode, group_size=128, all_layers=all_layers)
        sizes[key] = O.model_size_mb(O.save_model(model, tmp_path / f"{key}.xml"))
        outs[key], prec = run(model, x)
        assert prec["runtime"]["FullyConnected"]  # weight storage types, checked below
        infos[key]["prec"] = prec
    assert infos["int8_asym"]["weights_before"] == {"f32": n_weights}
    assert infos["int8_asym"]["weights_after"].get("u8", 0) >= n_weights
    assert infos["int8_sym"]["weights_after"].get("i8", 0) == n_weights
    assert infos["int4_sym_all"]["weights_after"].get("i4", 0) == n_weights
    assert infos["int4_sym"]["group_size"] == 128 and infos["int8_asym"]["group_size"] is None
    # int8: ~4x smaller weights (plus scales/zero points and the xml); int4 (all layers): ~8x
    for k in ("int8_asym", "int8_sym"):
        assert 3.3 < sizes["fp32"] / sizes[k] < 4.2, sizes
    assert sizes["fp32"] / sizes["int4_sym_all"] > 6, sizes
    assert sizes["fp32"] / sizes["int4_asym_all"] > 6, sizes
    # default int4 keeps the last MatMul in int8 (NNCF backup mode): between the two
    assert sizes["int4_sym_all"] < sizes["int4_sym"] < sizes["int8_sym"], sizes
    assert 256 * 384 <= infos["int4_sym"]["weights_after"].get("u8", 0) <= 256 * 384 + 384  # + zero points
    assert infos["int4_sym"]["prec"]["runtime"]["FullyConnected"] == {"i4": 2, "u8": 1}
    for k, y in outs.items():
        assert sqnr_db(y32, y) > (30 if k.startswith("int8") else 12), k


def test_compress_weights_rejects_unknown_mode(block_path):
    with pytest.raises(SuiteError, match="int4_sym"):
        O.compress_weights(O.read_onnx(block_path), "int3")


# ------------------------------------------------------------------------------ IR cache

def test_save_load_round_trip_is_identical_and_atomic(tmp_path, convnet_path, image_batches):
    q, _ = O.ptq_int8(O.read_onnx(convnet_path), image_batches[:4])
    x = image_batches[5]
    y_before, _ = run(q, x)
    path = O.save_model(q, tmp_path / "cache" / "resnet-int8.xml")
    assert path.is_file() and path.with_suffix(".bin").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet-int8.bin", "resnet-int8.xml"]  # no temp left
    assert O.model_size_mb(path) == pytest.approx(
        (path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 1e6)
    y_after, prec = run(O.load_model(path), x)
    np.testing.assert_array_equal(y_after, y_before)
    assert prec["compute_precision"] == "int8"
    # overwrite in place with another model
    O.save_model(O.read_onnx(convnet_path), path)
    _, prec32 = run(O.load_model(path), x)
    assert prec32["int_compute"] == 0
    with pytest.raises(SuiteError, match=r"\.xml"):
        O.save_model(q, tmp_path / "model.bin")


def test_load_model_corrupt_xml_is_suite_error(tmp_path, convnet_path):
    path = O.save_model(O.read_onnx(convnet_path), tmp_path / "m.xml")
    path.write_text("<net><layers>")
    with pytest.raises(SuiteError) as err:
        O.load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
