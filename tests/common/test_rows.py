import json

import pytest

from utils.rows import ResultRow, read_rows, status_rows, write_row


def _row(**kw):
    base = dict(model="resnet50", weights="embedded", dataset="d", toolchain="torch", method="fx", precision="int8",
                device="cpu", batch=32, metric="top1", value=97.5, latency_kind="host-wall", latency_p50_ms=12.5,
                environment={"cpu": "x", "packages": {"torch": "2.13.0"}}, extra={"correct_bits": "ff"})
    base.update(kw)
    return ResultRow(**base)


def test_round_trip_and_atomic_write(runs_dir):
    row = _row()
    path = write_row(row, runs_dir)
    assert path.name == "resnet50__embedded__torch__fx__int8__cpu__b32.json"
    assert [p.name for p in runs_dir.iterdir()] == [path.name]  # no temp file left behind
    back = read_rows(runs_dir)
    assert back == [row]
    assert json.loads(path.read_text())["value"] == 97.5


def test_same_key_replaces_previous_row(runs_dir):
    write_row(_row(value=90.0), runs_dir)
    write_row(_row(value=91.0), runs_dir)
    rows = read_rows(runs_dir)
    assert len(rows) == 1 and rows[0].value == 91.0


@pytest.mark.parametrize("bad", [dict(status="skipped", reason=""), dict(status="weird"), dict(metric="acc"),
                                 dict(batch=0), dict(value=None, latency_p50_ms=None)])
def test_invalid_rows_rejected(bad):
    with pytest.raises(ValueError):
        _row(**bad)


def test_status_rows_cover_every_variant_and_batch():
    rows = status_rows(status="skipped", reason="TensorRT is not installed", model="gpt2", weights="embedded",
                       dataset="d", toolchain="tensorrt", variants=[("fp32", "fp32"), ("int8-qdq", "int8")],
                       device="cuda", batches=(1, 8), metric="ppl")
    assert [(r.method, r.batch) for r in rows] == [("fp32", 1), ("fp32", 8), ("int8-qdq", 1), ("int8-qdq", 8)]
    assert all(r.status == "skipped" and r.reason == "TensorRT is not installed" and r.value is None for r in rows)
    assert len({r.key for r in rows}) == 4


def test_written_files_keep_ordinary_permissions(tmp_path):
    import os

    from utils.atomic import atomic_write_text

    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.csv", "a,b\n")
        assert (p.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(mask)
