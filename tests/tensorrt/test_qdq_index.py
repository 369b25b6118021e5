"""Finding the ModelOpt-ONNX route's Q/DQ model (index.json written by that route)."""
import json

from quantization.tensorrt_route.qdq import find_qdq, index_path


def write_index(cache_dir, entries):
    p = index_path(cache_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(entries))
    return p


def test_missing_index_says_run_modelopt_first(tmp_path):
    entry, why = find_qdq(tmp_path, "resnet50", "max")
    assert entry is None and "run the modelopt-onnx route first" in why and "--methods max" in why


def test_entry_relative_to_index_folder(tmp_path):
    idx = write_index(tmp_path, {"max": {"path": "resnet50-max.onnx", "calib_sha": "abc", "calib_samples": 128}})
    (idx.parent / "resnet50-max.onnx").write_bytes(b"onnx")
    entry, why = find_qdq(tmp_path, "resnet50", "max")
    assert why == "" and entry.path == idx.parent / "resnet50-max.onnx"
    assert entry.calib_sha == "abc" and entry.calib_samples == 128 and entry.method == "max"


def test_absolute_path_and_method_choice(tmp_path):
    onnx = tmp_path / "elsewhere.onnx"
    onnx.write_bytes(b"onnx")
    write_index(tmp_path, {"max": {"path": "nope.onnx"}, "entropy": {"path": str(onnx), "calib_sha": None}})
    entry, _ = find_qdq(tmp_path, "gpt2", "entropy")
    assert entry.path == onnx and entry.calib_samples is None
    entry, why = find_qdq(tmp_path, "gpt2", "max")
    assert entry is None and "does not exist" in why and "modelopt-onnx route first" in why


def test_method_absent_or_index_corrupt(tmp_path):
    write_index(tmp_path, {"entropy": {"path": "x.onnx"}})
    assert find_qdq(tmp_path, "gpt2", "max")[0] is None
    index_path(tmp_path).write_text("{not json")
    entry, why = find_qdq(tmp_path, "gpt2", "max")
    assert entry is None and "unreadable" in why
