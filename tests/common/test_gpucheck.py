"""python3 -m evaluation.gpucheck: the plan, the skipped reasons on a machine without a GPU, failures -> exit 1."""
import os

from evaluation import bench, gpucheck
from utils.registry import TOOLCHAINS
from utils.rows import read_attempts, read_rows, status_rows, write_row

NO_DRIVER = "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded): no CUDA GPU to run on"


def _rows(runs):
    return read_rows(runs) + list(read_attempts(runs).values())


def test_gpu_toolchains_are_those_declaring_cuda():
    assert gpucheck.gpu_toolchains() == [t for t in gpucheck.ORDER if "cuda" in TOOLCHAINS[t].devices]
    assert {"torch", "onnxruntime", "modelopt-onnx", "modelopt-tripy", "tensorrt"} <= set(gpucheck.gpu_toolchains())


def test_bench_arguments_pass_devices_cuda_and_the_short_budget(tmp_path):
    args = gpucheck.build_parser().parse_args(["--runs-dir", str(tmp_path / "runs"), "--toolchains", "torch,tensorrt"])
    argv = gpucheck.bench_argv(args)
    b = bench.build_parser().parse_args(argv)
    assert b.devices == "cuda" and b.eval_limit == 64 and b.min_time == 0.2 and b.batches == "1" and not b.ceilings
    # torch takes --devices; tensorrt (cuda only) does not
    assert bench.route_args(b, "resnet50", "torch")[-2:] == ["--devices", "cuda"]
    assert "--devices" not in bench.route_args(b, "resnet50", "tensorrt")


def test_dry_run_lists_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: NO_DRIVER)
    monkeypatch.setattr(bench, "main", lambda argv: (_ for _ in ()).throw(AssertionError("ran the bench")))
    runs = tmp_path / "runs"
    assert gpucheck.main(["--dry-run", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    for t in gpucheck.gpu_toolchains():
        assert f"  {t}/" in out
    assert "torch/resnet50: eager, fx, inductor, pt2e, eager-fp16" in out
    assert NO_DRIVER in out and "dry run: nothing was run" in out
    assert not runs.exists()


def test_without_a_driver_every_row_is_skipped_with_the_reason_and_exit_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: NO_DRIVER)
    monkeypatch.setattr(bench, "main", lambda argv: (_ for _ in ()).throw(AssertionError("ran the bench")))
    runs = tmp_path / "runs"
    assert gpucheck.main(["--runs-dir", str(runs), "--no-report", "--models", "resnet50"]) == 0
    rows = _rows(runs)
    planned = sum(len(TOOLCHAINS[t].variants.get("resnet50", ())) for t in gpucheck.gpu_toolchains())
    assert len(rows) == planned and planned > 0
    assert all(r.status == "skipped" and r.reason == NO_DRIVER and r.device == "cuda" and r.batch == 1 for r in rows)
    out = capsys.readouterr().out
    assert f"0 ran, {planned} skipped, 0 failed" in out and NO_DRIVER in out


def test_a_failed_row_makes_the_check_fail_and_skips_are_grouped_by_reason(tmp_path, monkeypatch, capsys):
    """With a driver: the check runs the bench; here a stand-in bench writes one skipped and one failed variant."""
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: None)
    monkeypatch.setenv("SUITE_RUN_ID", "")  # restored after the stand-in bench sets it
    runs = tmp_path / "runs"

    def fake_bench(argv):
        b = bench.build_parser().parse_args(argv)
        assert b.devices == "cuda" and b.toolchains == "torch"
        os.environ["SUITE_RUN_ID"] = "run-x"
        env = {"run_id": "run-x"}
        common = dict(model="resnet50", weights="embedded", dataset="d", toolchain="torch", device="cuda",
                      batches=(1,), metric="top1", environment=env)
        for row in status_rows(status="skipped", reason="fx runs the x86 CPU backend", variants=[("fx", "int8")],
                               **common) + status_rows(status="failed", reason="RuntimeError: boom",
                                                       variants=[("eager-fp16", "fp16")], **common):
            write_row(row, runs)
        return 1

    monkeypatch.setattr(bench, "main", fake_bench)
    rc = gpucheck.main(["--runs-dir", str(runs), "--no-report", "--toolchains", "torch", "--models", "resnet50"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "0 ran, 1 skipped, 1 failed" in out
    assert "skipped  1: fx runs the x86 CPU backend" in out and "FAILED   torch/resnet50/eager-fp16 (cuda): RuntimeError: boom" in out


def test_only_skips_exit_0_with_a_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: None)
    monkeypatch.setenv("SUITE_RUN_ID", "")  # restored after the stand-in bench sets it
    runs = tmp_path / "runs"

    def fake_bench(argv):
        os.environ["SUITE_RUN_ID"] = "run-y"
        for row in status_rows(status="skipped", reason="TensorRT cannot be imported", model="gpt2", weights="embedded",
                               dataset="d", toolchain="tensorrt", variants=[("fp32", "fp32")], device="cuda",
                               batches=(1,), metric="ppl", environment={"run_id": "run-y"}):
            write_row(row, runs)
        return 0

    monkeypatch.setattr(bench, "main", fake_bench)
    assert gpucheck.main(["--runs-dir", str(runs), "--no-report", "--toolchains", "tensorrt", "--models", "gpt2"]) == 0


def test_not_a_gpu_toolchain_is_one_line_exit_2(tmp_path, capsys):
    rc = gpucheck.main(["--toolchains", "nosuch", "--runs-dir", str(tmp_path / "runs"), "--dry-run"])
    assert rc == 2 and "not a GPU toolchain" in capsys.readouterr().err
