"""Finding the ModelOpt-ONNX route's Q/DQ model (index.json written by that route, one entry per artifact)."""
import json
import os

from quantization.tensorrt.qdq import find_qdq, index_path
from utils import artifacts


def write_index(modelopt_dir, entries):
    p = index_path(modelopt_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"entries": entries}))
    return p


def make(modelopt_dir, name, data=b"onnx"):
    f = modelopt_dir / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    return f, artifacts.fingerprint(f)


def test_missing_index_says_run_modelopt_first(tmp_path):
    entry, why = find_qdq(tmp_path, "resnet50", "max")
    assert entry is None and "run the modelopt-onnx route first" in why and "--methods max" in why


def test_entry_relative_to_index_folder_survives_a_move(tmp_path):
    d = tmp_path / "a" / "modelopt-onnx"
    _, fp = make(d, "max-1.onnx")
    write_index(d, {"k1": {"method": "max", "path": "max-1.onnx", "file": fp, "calib_sha": "abc", "calib_samples": 128}})
    moved = tmp_path / "b" / "modelopt-onnx"
    moved.parent.mkdir()
    os.rename(d, moved)
    entry, why = find_qdq(moved, "resnet50", "max", calib_sha="abc")
    assert why == "" and entry.path == moved / "max-1.onnx"
    assert entry.calib_sha == "abc" and entry.calib_samples == 128 and entry.method == "max" and not entry.notes


def test_matching_calibration_preferred_over_newer_entry(tmp_path):
    _, f1 = make(tmp_path, "max-a.onnx", b"a")
    _, f2 = make(tmp_path, "max-b.onnx", b"bb")
    write_index(tmp_path, {
        "a": {"method": "max", "path": "max-a.onnx", "file": f1, "calib_sha": "run", "made": 1},
        "b": {"method": "max", "path": "max-b.onnx", "file": f2, "calib_sha": "other", "made": 2},
    })
    entry, _ = find_qdq(tmp_path, "gpt2", "max", calib_sha="run")
    assert entry.path.name == "max-a.onnx" and not entry.notes
    entry, _ = find_qdq(tmp_path, "gpt2", "max", calib_sha="third")
    assert entry.path.name == "max-b.onnx"  # newest when none matches, with a note saying so
    assert any("another calibration set" in n for n in entry.notes)


def test_changed_file_is_never_used(tmp_path):
    f, fp = make(tmp_path, "max-a.onnx", b"original")
    write_index(tmp_path, {"a": {"method": "max", "path": "max-a.onnx", "file": fp}})
    f.write_bytes(b"tampered!")  # same path, other bytes
    entry, why = find_qdq(tmp_path, "gpt2", "max")
    assert entry is None and "changed since it was made" in why and "modelopt-onnx route first" in why


def test_method_absent_missing_file_or_index_corrupt(tmp_path):
    write_index(tmp_path, {"x": {"method": "entropy", "path": "x.onnx"}})
    assert find_qdq(tmp_path, "gpt2", "max")[0] is None
    entry, why = find_qdq(tmp_path, "gpt2", "entropy")
    assert entry is None and "is missing" in why
    index_path(tmp_path).write_text("{not json")
    entry, why = find_qdq(tmp_path, "gpt2", "max")
    assert entry is None and "unreadable" in why
