"""python3 -m evaluation.launch.gpucheck: its plan (the bench's, on cuda, within a budget), the skipped reasons on a machine
without a GPU, failures -> exit 1."""
import os

from evaluation.launch import bench, gpucheck, run
from utils.registry import TOOLCHAINS
from utils.rows import read_attempts, read_rows, status_rows, write_row

NO_DRIVER = "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded): no CUDA GPU to run on"


def _rows(runs):
    return read_rows(runs) + list(read_attempts(runs).values())


def _checked(tmp_path, *argv):
    args = gpucheck.build_parser().parse_args(["--runs-dir", str(tmp_path / "runs"), "--no-accuracy", *argv])
    (what, bargv), = gpucheck.phases(args, tmp_path / "runs")
    bargs = bench.build_parser().parse_args(bargv)
    return bargs, bench.validate(bargs, device_missing=None)


def test_gpu_toolchains_are_those_declaring_cuda():
    assert gpucheck.gpu_toolchains() == [t for t in gpucheck.ORDER if "cuda" in TOOLCHAINS[t].devices]
    assert {"torch", "onnxruntime", "modelopt-onnx", "modelopt-tripy", "tensorrt"} <= set(gpucheck.gpu_toolchains())


def test_the_check_is_a_bench_plan_on_cuda_with_random_weights_and_a_short_budget(tmp_path):
    bargs, checked = _checked(tmp_path, "--toolchains", "torch,tensorrt", "--budget", "100000")
    plan = checked.plan
    assert bargs.weights == "random" and bargs.ceilings and bargs.budget == 100000  # the GPU's ceilings: efficiency
    assert {it.device for it in plan.items} == {"cuda"} and {it.toolchain for it in plan.items} == {"torch", "tensorrt"}
    assert {it.eval_limit for it in plan.items} == {64} and plan.settings.min_time == 0.2
    batches = {(it.model, it.batches) for it in plan.items if not it.skip and it.toolchain == "torch"}
    assert ("resnet50", (1, 32)) in batches and ("gpt2", (1, 8)) in batches
    # declared without a cuda path (fx, pt2e): planned, so the table says why, but never built
    assert {it.method for it in plan.items if it.skip} == {"fx", "pt2e"}


def test_the_budget_keeps_each_toolchains_fp32_baseline_first_and_says_what_it_leaves_out(tmp_path):
    _, checked = _checked(tmp_path, "--budget", "240")
    plan = checked.plan
    kept = {(it.toolchain, it.method) for it in plan.items}
    assert ("torch", "eager") in kept and plan.left_out
    assert all(lo["why"].startswith("budget: needs ~") for lo in plan.left_out)
    # a variant is kept only once its own toolchain's baseline is (value order: baselines first)
    for it in plan.items:
        base = TOOLCHAINS[it.toolchain].baseline
        if base and base[0] == it.toolchain and not it.skip:
            assert (it.toolchain, base[1]) in kept, it.ident
    assert bench.estimated_seconds(checked) <= 240


def test_dry_run_lists_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: NO_DRIVER)
    monkeypatch.setattr(run, "execute", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran the bench")))
    runs = tmp_path / "runs"
    assert gpucheck.main(["--dry-run", "--budget", "240", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "GPU check: budget 240 s" in out and "  torch/resnet50  [" in out and "(FP32 baseline)" in out
    assert "left out:" in out and "budget: needs" in out and "of a 240 s budget" in out
    assert NO_DRIVER in out and "dry run: nothing was run" in out
    assert not runs.exists()


def test_without_a_driver_every_row_is_skipped_with_the_reason_and_exit_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: NO_DRIVER)
    monkeypatch.setattr(run, "execute", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran the bench")))
    runs = tmp_path / "runs"
    _, checked = _checked(tmp_path, "--models", "resnet50", "--budget", "100000")
    assert gpucheck.main(["--runs-dir", str(runs), "--no-report", "--no-accuracy", "--models", "resnet50",
                          "--budget", "100000"]) == 0
    rows = _rows(runs)
    planned = sum(len(it.batches) for it in checked.plan.items)
    assert len(rows) == planned and planned > 0
    assert all(r.status == "skipped" and r.reason == NO_DRIVER and r.device == "cuda" for r in rows)
    out = capsys.readouterr().out
    assert f"0 ran, {len(checked.plan.items)} skipped, 0 failed" in out and NO_DRIVER in out


def test_a_failed_row_makes_the_check_fail_and_skips_are_grouped_by_reason(tmp_path, monkeypatch, capsys):
    """With a driver: the check runs the bench's plan; here a stand-in bench writes one skipped and one failed
    variant."""
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: None)
    runs = tmp_path / "runs"

    def fake_execute(bargs, checked, argv, who="bench"):
        assert bargs.devices == "cuda" and {it.toolchain for it in checked.plan.items} == {"torch"}
        checked.plan.run_id = "run-x"
        common = dict(model="resnet50", weights="random", dataset="d", toolchain="torch", device="cuda",
                      batches=(1,), metric="top1", environment={"run_id": "run-x"})
        for row in status_rows(status="skipped", reason="fx runs the x86 CPU backend", variants=[("fx", "int8")],
                               **common) + status_rows(status="failed", reason="RuntimeError: boom",
                                                       variants=[("eager-fp16", "fp16")], **common):
            write_row(row, runs)
        return 1

    monkeypatch.setattr(run, "execute", fake_execute)
    rc = gpucheck.main(["--runs-dir", str(runs), "--no-report", "--no-accuracy", "--toolchains", "torch",
                        "--models", "resnet50"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "0 ran, 1 skipped, 1 failed" in out
    assert "skipped  1: fx runs the x86 CPU backend" in out
    assert "FAILED   torch/resnet50/eager-fp16 (cuda, random): RuntimeError: boom" in out


def test_only_skips_exit_0_with_a_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "driver_missing", lambda: None)
    runs = tmp_path / "runs"

    def fake_execute(bargs, checked, argv, who="bench"):
        checked.plan.run_id = "run-y"
        for row in status_rows(status="skipped", reason="TensorRT cannot be imported", model="gpt2", weights="random",
                               dataset="d", toolchain="tensorrt", variants=[("fp32", "fp32")], device="cuda",
                               batches=(1,), metric="ppl", environment={"run_id": "run-y"}):
            write_row(row, runs)
        return 0

    monkeypatch.setattr(run, "execute", fake_execute)
    assert gpucheck.main(["--runs-dir", str(runs), "--no-report", "--no-accuracy", "--toolchains", "tensorrt",
                          "--models", "gpt2"]) == 0


def test_prepared_embedded_models_add_an_accuracy_phase(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "prepared_embedded", lambda models: "resnet50")
    args = gpucheck.build_parser().parse_args(["--runs-dir", str(tmp_path / "runs")])
    (w1, a1), (w2, a2) = gpucheck.phases(args, tmp_path / "runs")
    assert "random" in w1 and "embedded" in w2
    b2 = bench.build_parser().parse_args(a2)
    assert b2.weights == "embedded" and b2.models == "resnet50"
    args = gpucheck.build_parser().parse_args(["--runs-dir", str(tmp_path / "runs"), "--no-accuracy"])
    assert len(gpucheck.phases(args, tmp_path / "runs")) == 1


def test_not_a_gpu_toolchain_is_one_line_exit_2(tmp_path, capsys):
    rc = gpucheck.main(["--toolchains", "nosuch", "--runs-dir", str(tmp_path / "runs"), "--dry-run"])
    assert rc == 2 and "not a GPU toolchain" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_the_check_counts_the_gpu_ceilings_only(tmp_path):
    """A cuda-only plan measures the GPU's ceilings alone (the bench passes --devices cuda to utils.ceilings): the
    fixed cost it plans for is that, not the CPU's 45 s."""
    from evaluation.launch import routes as launch

    bargs, checked = _checked(tmp_path, "--toolchains", "torch", "--budget", "100000")
    total, lines = launch.fixed_seconds(checked.plan, [], ceilings=True, report=False)
    assert f"ceilings {launch.CUDA_CEILINGS_S:.0f} s" in lines[0]
    cpu_plan = bench.validate(bench.build_parser().parse_args(["--toolchains", "torch", "--devices", "cpu",
                                                               "--runs-dir", str(tmp_path / "r2")]),
                              device_missing=None).plan
    assert f"ceilings {launch.CEILINGS_S:.0f} s" in launch.fixed_seconds(cpu_plan, [], ceilings=True, report=False)[1][0]
