"""evaluation.launch.sweep: argument checks, the route commands it runs, and the tables/plots from rows (report env)."""
import numpy as np
import pytest

from utils.errors import SuiteError

from evaluation.launch import sweep
from evaluation.report import sweeps
from utils.metrics import pack_bits
from utils.stats import mcnemar_exact
from utils.rows import ResultRow, write_row


def test_lists_and_defaults():
    assert sweep.int_list("sizes", "64,16,16,32") == (16, 32, 64)
    for bad in ("", "a,b", "0,4", "-1"):
        with pytest.raises(sweep.SuiteError):
            sweep.int_list("sizes", bad)
    assert sweep.default_calib_methods("onnxruntime", "resnet50") == ("minmax", "entropy", "percentile")
    assert sweep.default_calib_methods("torch", "resnet50") == ("fx",)


def test_train_size_of_the_digits_split():
    args = sweep.build_parser().parse_args(["train-size", "--model", "resnet50"])
    assert sweep.train_size(args) == 1438  # 1,797 digits minus the 359-sample test split


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(sweep, "_ensure", lambda names: None)
    monkeypatch.setattr(sweep, "probe_train_size", lambda args, env: 1438)
    from evaluation.launch import routes as launch

    monkeypatch.setattr(launch, "run_plan", lambda plan, who, prepared=None: seen.append(plan) or launch.Outcome())
    return seen


def test_calib_size_above_the_train_split_runs_nothing(calls, capsys, tmp_path):
    rc = sweep.main(["calib", "--toolchain", "onnxruntime", "--sizes", "16,2048", "--sweeps-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and calls == []
    assert err.count("\n") == 0 and "2048 is larger than the train split" in err and "1438" in err


def test_calib_runs_the_route_once_per_size_plus_the_baseline(calls, tmp_path):
    rc = sweep.main(["calib", "--toolchain", "onnxruntime", "--sizes", "32,16", "--methods", "minmax,entropy",
                     "--sweeps-dir", str(tmp_path), "--no-plot"])
    assert rc == 0
    assert [p.toolchains() for p in calls] == [["onnxruntime"]] * 3  # each point is a plan (the bench's builder)
    base, n16, n32 = calls
    assert [it.method for it in base.items] == ["fp32"] and base.runs_dir.endswith("calib-onnxruntime-resnet50/baseline")
    for n, p in ((16, n16), (32, n32)):
        assert [it.method for it in p.items] == ["minmax", "entropy"]
        assert {it.calib_samples for it in p.items} == {n} and {it.batches for it in p.items} == {(1,)}
        assert {it.device for it in p.items} == {"cpu"} and p.runs_dir.endswith(f"calib-onnxruntime-resnet50/n{n}")
        assert p.settings.min_time == 0.2 and p.settings.min_iters == 2
    with pytest.raises(SuiteError, match="unrecognized arguments: --bogus"):  # one line, exit 2 through cli_main
        sweep.build_parser().parse_args(["calib", "--bogus"])
    calls.clear()
    assert sweep.main(["calib", "--toolchain", "onnxruntime", "--methods", "fp32", "--sweeps-dir", str(tmp_path)]) == 2
    assert sweep.main(["calib", "--toolchain", "torch", "--model", "gpt2", "--sweeps-dir", str(tmp_path)]) == 2
    assert calls == []  # FP32 and calibration-free methods (torchao weight-only/dynamic) have nothing to sweep


def test_batch_runs_each_toolchain_once_with_all_batches(calls, tmp_path):
    rc = sweep.main(["batch", "--toolchains", "torch,onnxruntime", "--batches", "1,4,2", "--sweeps-dir", str(tmp_path),
                     "--no-plot"])
    assert rc == 0
    got = {p.toolchains()[0]: p for p in calls}
    assert [it.method for it in got["torch"].items] == ["eager", "fx"]
    assert [it.method for it in got["onnxruntime"].items] == ["fp32", "minmax"]
    assert all({it.batches for it in p.items} == {(1, 2, 4)} and p.runs_dir.endswith("batch-resnet50")
               for p in got.values())
    calls.clear()
    assert sweep.main(["batch", "--methods", "fx,fp32", "--sweeps-dir", str(tmp_path), "--no-plot"]) == 0
    assert {p.toolchains()[0]: [it.method for it in p.items] for p in calls} == {"torch": ["fx"], "onnxruntime": ["fp32"]}
    assert sweep.main(["batch", "--methods", "nope", "--sweeps-dir", str(tmp_path)]) == 2


def _row(method, precision, batch, correct, **kw):
    return ResultRow(model="resnet50", weights="embedded", dataset="d", toolchain="onnxruntime", method=method,
                     precision=precision, device="cpu", batch=batch, metric="top1", value=100.0 * np.mean(correct),
                     environment={"eval_sha": "e", "threads": 2}, extra={"n_eval": len(correct),
                                                                          "correct_bits": pack_bits(correct)}, **kw)


def test_calib_table_and_plot_from_rows(tmp_path):
    rng = np.random.default_rng(0)
    base = np.ones(359, bool)
    base[:3] = False
    root = tmp_path / "calib-onnxruntime-resnet50"
    write_row(_row("fp32", "fp32", 1, base, latency_p50_ms=10.0), root / "baseline")
    lost = {16: 12, 64: 2}
    for n, k in lost.items():
        c = base.copy()
        c[rng.choice(np.arange(3, 359), k, replace=False)] = False
        write_row(_row("minmax", "int8", 1, c, latency_p50_ms=5.0, calib_samples=n), root / f"n{n}")
        write_row(ResultRow(model="resnet50", weights="embedded", dataset="d", toolchain="onnxruntime", method="entropy",
                            precision="int8", device="cpu", batch=1, metric="top1", status="failed", reason="boom"),
                  root / f"n{n}")
    df, b = sweeps.calib_table("onnxruntime", "resnet50", root)
    assert b.method == "fp32"
    mm = df[df["method"] == "minmax"].set_index("calib_size")
    assert list(mm.index) == [16, 64]
    assert mm.loc[16, "delta"] == pytest.approx(-100 * 12 / 359)
    assert mm.loc[16, "delta_p_value"] == pytest.approx(2 * 0.5 ** 12)  # 12 lost, 0 gained
    assert bool(mm.loc[16, "delta_significant"]) and not bool(mm.loc[64, "delta_significant"])
    assert set(df.loc[df["method"] == "entropy", "status"]) == {"failed"}
    png, csv = tmp_path / "c.png", tmp_path / "c.csv"
    assert sweeps.plot_calib("onnxruntime", "resnet50", root, png, csv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "calib_size" in csv.read_text()


def test_batch_table_and_plot_from_rows(tmp_path):
    c = np.ones(10, bool)
    for b, p50 in ((1, 10.0), (2, 16.0), (4, 28.0)):
        write_row(_row("fp32", "fp32", b, c, latency_kind="host-wall", latency_p10_ms=p50 * 0.9, latency_p50_ms=p50,
                       latency_p90_ms=p50 * 1.2, throughput=b / (p50 / 1000), throughput_unit="images/s"), tmp_path / "r")
    df = sweeps.batch_table("resnet50", tmp_path / "r")
    assert list(df["batch"]) == [1, 2, 4]
    assert list(df["throughput"].round(3)) == [100.0, 125.0, 142.857]
    assert list(df["ms_per_item"]) == [10.0, 8.0, 7.0]
    assert sweeps.plot_batch("resnet50", tmp_path / "r", tmp_path / "b.png", tmp_path / "b.csv") == 0
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_mcnemar_is_the_tables_test():
    a = np.ones(20, bool)
    b = a.copy()
    b[:6] = False
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(2 * 0.5 ** 6)
