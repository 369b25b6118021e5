"""The route's CLI on the embedded GPT-2 (tests/prepared.py: missing, a failure after the test command's torch folder,
a skip run alone): rows, keys and the cuda skip reason."""
import pytest

from utils.rows import read_rows


def test_route_writes_cpu_rows_and_skipped_cuda_rows(runs_dir):
    from tests.prepared import embedded_manifest

    embedded_manifest("gpt2")  # fails after the test command's torch folder; skips (saying why) run alone
    from quantization.modelopt_tripy.route import main, tripy_status

    rc = main(["--methods", "fp32,int8-weight-only", "--eval-limit", "300", "--calib-samples", "4",
               "--runs-dir", str(runs_dir)])
    assert rc == 0
    rows = {(r.method, r.device, r.batch): r for r in read_rows(runs_dir)}
    cpu = [rows[("fp32", "cpu", 1)], rows[("int8-weight-only", "cpu", 1)]]
    for r in cpu:
        assert r.status == "ok" and r.toolchain == "modelopt-tripy" and r.metric == "ppl" and r.value > 1
        assert r.extra["reference_max_rel_err"] <= 1e-3
        assert r.extra["reference_ppl"] == pytest.approx(r.value, rel=1e-4)
        assert r.latency_p50_ms is None  # no CPU latency for fake quant
    assert cpu[1].calib_samples == 4 and cpu[1].value == pytest.approx(cpu[0].value, rel=0.02)
    reason = tripy_status()
    cuda = [r for k, r in rows.items() if k[1] == "cuda"]
    assert len(cuda) == 4  # 2 methods x batches 1, 8
    if reason:
        assert all(r.status == "skipped" and ("nvtripy" in r.reason or "CUDA" in r.reason) for r in cuda)


def test_help_and_bad_flags(capsys):
    from quantization.modelopt_tripy.route import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--calib-batch" in capsys.readouterr().out
    assert main(["--methods", "int2"]) == 2
    assert "unknown method 'int2'" in capsys.readouterr().err
