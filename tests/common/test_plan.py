"""The run plan (utils/plan.py): what a run measures, decided once from the declaration and the flags; the bench's
--dry-run, --budget and where a user's run writes."""
import json
import subprocess
import sys
import time

import pytest

from evaluation.launch import bench
from utils.errors import SuiteError
from utils.paths import LOCAL_DIR, PUBLISHED_RUNS_DIR, REPO_ROOT, RESULTS_DIR, RUNS_DIR
from utils.plan import (Estimates, Item, Plan, Settings, build_plan, describe, fit_budget, parse_batches,
                        parse_methods, read_item_records, value_order, write_item_record)
from utils.registry import TOOLCHAINS
from utils.rows import ResultRow


def test_items_follow_the_declaration(tmp_path):
    plan = build_plan(runs_dir=tmp_path)
    # every (toolchain, model, declared device, default method), in run order
    assert plan.toolchains() == [t for t in TOOLCHAINS if plan.items_of(t)] or plan.toolchains()
    ort = plan.items_of("onnxruntime", "resnet50")
    assert [(it.method, it.device) for it in ort if it.device == "cpu"] == [
        ("fp32", "cpu"), ("minmax", "cpu"), ("entropy", "cpu"), ("percentile", "cpu")]
    by = {(it.toolchain, it.model, it.method, it.device): it for it in plan.items}
    # calibration twins: timed at the smallest batch only, said in their notes; their twin at every batch
    ent = by[("onnxruntime", "resnet50", "entropy", "cpu")]
    assert ent.batches == (1,) and "latency at batch 1 only" in ent.notes[0]
    assert by[("onnxruntime", "resnet50", "minmax", "cpu")].batches == (1, 32)
    # decode rows where the declaration says the variant generates; the FP32 baseline flagged
    assert by[("onnxruntime", "gpt2", "minmax", "cpu")].decode and not by[("openvino", "gpt2", "int8", "cpu")].decode
    assert by[("torch", "gpt2", "eager", "cpu")].decode and not by[("torch", "gpt2", "inductor", "cpu")].decode
    assert by[("openvino", "resnet50", "fp32", "cpu")].baseline and not by[("openvino", "resnet50", "int8", "cpu")].baseline
    # accuracy-only devices: one row at batch 1; declared without a path: skipped without a build
    assert by[("modelopt-tripy", "gpt2", "int8-weight-only", "cpu")].batches == (1,)
    assert by[("torch", "resnet50", "fx", "cuda")].skip.startswith("fx runs the x86 CPU backend")
    assert not by[("torch", "resnet50", "fx", "cpu")].skip
    # opt-in methods only where named
    assert ("torch", "resnet50", "eager-bf16", "cpu") not in by and ("torch", "resnet50", "eager-bf16", "cuda") in by


def test_row_keys_are_the_rows_keys(tmp_path):
    it = build_plan(models="gpt2", toolchains="onnxruntime", methods="minmax", devices="cpu", batches="1,8",
                    settings=Settings(eval_limit=50), runs_dir=tmp_path).items[0]
    row = ResultRow(model=it.model, weights=it.weights, dataset="d", toolchain=it.toolchain, method=it.method,
                    precision=it.precision, device=it.device, batch=8, metric="ppl", eval_limit=50, value=1.0)
    assert it.row_key(8) == row.key and it.ident == row.key.replace("__b8", "")
    dec = row.replace(batch=1, latency_kind="decode")
    assert it.row_keys() == [it.row_key(1), row.key, dec.key]


def test_flags_are_parsed_once_and_bad_ones_are_one_line(tmp_path):
    assert parse_methods(" fx , eager,fx ") == ("fx", "eager") and parse_methods("all") is None
    assert parse_batches("1,8") == (1, 8) and parse_batches("resnet50=1,32;gpt2=1,8") == {"resnet50": (1, 32),
                                                                                          "gpt2": (1, 8)}
    plan = build_plan(batches="resnet50=1,32;gpt2=4", toolchains="openvino", runs_dir=tmp_path)
    assert {(it.model, it.batches) for it in plan.items} == {("resnet50", (1, 32)), ("gpt2", (4,))}
    for kw, msg in ((dict(methods="bogus"), "unknown method 'bogus'"), (dict(models="vgg"), "unknown model"),
                    (dict(devices="tpu"), "unknown device"), (dict(batches="0"), "integers >= 1"),
                    (dict(batches="bert=1"), "unknown model 'bert'"),
                    (dict(toolchains="openvino", devices="cuda"), "declares none of the devices")):
        with pytest.raises(SuiteError, match=msg):
            build_plan(runs_dir=tmp_path, **kw)
    # a toolchain declaring none of the devices is left out of a bench run, an error for a route started alone
    assert "openvino" not in build_plan(devices="cuda", runs_dir=tmp_path).toolchains()
    with pytest.raises(SuiteError, match="openvino declares none"):
        build_plan(toolchains="openvino,torch", devices="cuda", strict_devices=True, runs_dir=tmp_path)


def test_a_plan_is_data_round_trip_and_its_config_key_is_stable(tmp_path):
    plan = build_plan(models="resnet50", toolchains="onnxruntime", runs_dir=tmp_path, route_args={"onnxruntime": ["--x"]})
    plan.run_id, plan.deadline = "r1", 123.0
    back = Plan.load(plan.save(tmp_path / "p.json"))
    assert back == plan
    it = plan.items[1]
    assert plan.config_key(it) == back.config_key(back.items[1])
    import dataclasses

    assert plan.config_key(dataclasses.replace(it, est_build_s=9.0, scores_from="x")) == plan.config_key(it)
    assert plan.config_key(dataclasses.replace(it, calib_samples=17)) != plan.config_key(it)
    other = dataclasses.replace(plan, settings=Settings(threads=4))
    assert other.config_key(it) != plan.config_key(it)
    (tmp_path / "bad.json").write_text("{\"version\": 99}")
    with pytest.raises(SuiteError, match="plan version"):
        Plan.load(tmp_path / "bad.json")


def test_estimates_come_from_records_then_rows_then_defaults(tmp_path):
    plan = build_plan(models="resnet50", toolchains="onnxruntime", methods="fp32,minmax", devices="cpu", batches="1,32",
                      runs_dir=tmp_path)
    fp32, minmax = plan.items
    write_item_record(tmp_path, {"item": fp32.to_dict(), "status": "ok", "run_id": "a",
                                 "seconds": {"open": 3.0, "build": 2.0, "score": 1.0, "timing": {"1": 4.0, "32": 6.0}}})
    row = ResultRow(model="resnet50", weights="embedded", dataset="d", toolchain="onnxruntime", method="minmax",
                    precision="int8", device="cpu", batch=1, metric="top1", value=99.0, calib_seconds=10.0,
                    latency_p50_ms=100.0, latency_samples=20, extra={"eval_seconds": 2.0})
    (tmp_path / f"{row.key}.json").write_text(json.dumps(row.to_dict()))
    est = Estimates.from_dirs([tmp_path])
    assert est.item(fp32)[:2] == (3.0, 10.0) and est.item(fp32)[2].startswith("measured")
    b, t, src = est.item(minmax)
    assert b == 17.0 and t == pytest.approx(4.0 + 4.0) and src.startswith("from its rows")  # b32 unknown: b1's
    assert est.route_open("onnxruntime", "resnet50", "embedded") == 3.0
    gpu = build_plan(models="resnet50", toolchains="torch", methods="eager", devices="cuda", runs_dir=tmp_path).items[0]
    assert est.item(gpu, device_missing="no driver")[2].startswith("no device")
    assert est.item(gpu)[2] == "default"


def test_the_budget_keeps_baselines_first_and_says_what_is_left_out(tmp_path):
    plan = build_plan(models="resnet50", toolchains="torch,onnxruntime,openvino", devices="cpu", runs_dir=tmp_path)
    order = value_order(plan.items)
    assert [it.method for it in order[:3]] == ["eager", "fp32", "fp32"] and all(it.baseline for it in order[:3])
    est = Estimates({})
    kept, out = fit_budget(plan, 300.0, 20.0, est)
    assert {(it.toolchain, it.method) for it in kept.items} >= {("torch", "eager"), ("onnxruntime", "fp32")}
    assert len(kept.items) + len(out) == len(plan.items) and out
    assert all(o["why"].startswith("budget: needs ~") for o in out)
    assert [it.ident for it in kept.items] == [it.ident for it in plan.items if it in kept.items]  # run order kept
    lines = describe(kept, est)
    assert lines[0].startswith(f"plan: {len(kept.items)} item(s)") and any("(FP32 baseline)" in ln for ln in lines)


def test_dry_run_prints_the_plan_in_seconds_and_creates_nothing(tmp_path):
    runs = tmp_path / "runs"
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "evaluation.bench", "--dry-run", "--runs-dir", str(runs), "--budget",
                        "600"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert time.time() - t0 < 20
    out = p.stdout
    assert out.startswith("plan: ") and "  torch/resnet50  [" in out and "total: ~" in out and "of a 600 s budget" in out
    assert "dry run: nothing was created, prepared or written" in out
    assert not runs.exists() and not (tmp_path / "summary.csv").exists()


def test_a_users_run_writes_apart_from_the_published_reference():
    """The default runs folder is results/local/runs, git-ignored; the published one changes only with --publish."""
    args = bench.build_parser().parse_args([])
    checked = bench.validate(args)
    assert checked.plan.runs_dir == str(RUNS_DIR) and RUNS_DIR.is_relative_to(LOCAL_DIR)
    assert checked.out == LOCAL_DIR and PUBLISHED_RUNS_DIR == RESULTS_DIR / "runs"
    ignored = subprocess.run(["git", "check-ignore", str(RUNS_DIR / "x.json"), str(LOCAL_DIR / "summary.csv")],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    assert len(ignored.stdout.splitlines()) == 2  # git-ignored: a user's run leaves the checkout clean
    with pytest.raises(SuiteError, match="drop --runs-dir"):
        bench.validate(bench.build_parser().parse_args(["--publish", "--runs-dir", "x"]))


def test_publish_refuses_uncommitted_code(monkeypatch):
    monkeypatch.setattr(bench, "code_changes", lambda: ["utils/plan.py"])
    with pytest.raises(SuiteError, match="needs committed code.*utils/plan.py"):
        bench.validate(bench.build_parser().parse_args(["--publish"]))
    monkeypatch.setattr(bench, "code_changes", lambda: [])
    checked = bench.validate(bench.build_parser().parse_args(["--publish"]))
    assert checked.plan.runs_dir == str(PUBLISHED_RUNS_DIR) and checked.out == RESULTS_DIR


def test_item_records_are_read_defensively(tmp_path):
    it = build_plan(models="resnet50", toolchains="openvino", devices="cpu", runs_dir=tmp_path).items[0]
    write_item_record(tmp_path, {"item": it.to_dict(), "status": "ok", "run_id": "x"})
    (tmp_path / "items" / "broken.json").write_text("{")
    assert list(read_item_records(tmp_path)) == [it.ident]
    assert Item.from_dict(it.to_dict()) == it


def test_a_gpu_item_of_a_slow_compiling_method_is_planned_longer(tmp_path):
    """max-autotune autotunes at every new shape: with no earlier record its GPU items are planned at the declared
    factor times the default (estimate_factor); every other item keeps the default."""
    from utils.plan import DEFAULT_GPU_ITEM_S, Estimates
    from utils.registry import TOOLCHAINS

    plan = build_plan(models="resnet50", toolchains="torch", devices="cuda", runs_dir=tmp_path)
    est = Estimates({})
    items = {it.method: it for it in plan.items}
    b, t = DEFAULT_GPU_ITEM_S["image-classification"]
    f = TOOLCHAINS["torch"].estimate_factor["inductor-max"]
    assert f > 1 and est.item(items["inductor-max"])[:2] == (b * f, t * f * len(items["inductor-max"].batches) / 2)
    assert est.item(items["inductor-cl"])[:2] == (b, t * len(items["inductor-cl"].batches) / 2)
