"""Opt-in methods (the declaration's `opt_in`): the torch CPU half-precision casts run only when --methods names
them, in the bench and in a route; on cuda they run by default."""
import subprocess
import sys

from evaluation.launch.routes import mark_unfinished, status_items
from utils import registry
from utils.plan import build_plan
from utils.paths import REPO_ROOT
from utils.rows import read_rows

HALF = ("eager-fp16", "eager-bf16", "inductor-fp16", "inductor-bf16")
GPU = ("inductor-cl", "inductor-cl-fp16", "inductor-max", "inductor-max-fp16", "fp8")  # the GPU fast paths


def test_the_torch_cpu_half_casts_are_declared_opt_in():
    tc = registry.TOOLCHAINS["torch"]
    assert set(tc.opt_in["cpu"]) == set(HALF) | set(GPU) and not tc.opt_in.get("cuda")
    for model in ("resnet50", "gpt2"):
        assert set(HALF) <= set(tc.methods(model))  # still declared variants (--methods takes them)
        assert not set(HALF) & set(tc.default_methods(model, "cpu"))
        assert set(HALF) <= set(tc.default_methods(model, "cuda"))
    # no other toolchain's defaults change
    for name, other in registry.TOOLCHAINS.items():
        if name != "torch":
            assert not other.opt_in, name


def _methods(plan, device):
    return [it.method for it in plan.items if it.device == device]


def test_the_plan_selects_opt_in_methods_only_when_named(tmp_path):
    default = build_plan(models="resnet50", toolchains="torch", runs_dir=tmp_path)
    assert _methods(default, "cpu") == ["eager", "fx", "inductor", "pt2e"]
    assert set(HALF) <= set(_methods(default, "cuda"))
    cpu_only = build_plan(models="resnet50", toolchains="torch", devices="cpu", runs_dir=tmp_path)
    assert not set(HALF) & {it.method for it in cpu_only.items}  # a cpu-only run: none of them at all
    assert set(HALF) <= {it.method for it in build_plan(models="resnet50", toolchains="torch", devices="cuda",
                                                         runs_dir=tmp_path).items}
    named = build_plan(models="resnet50", toolchains="torch", methods="eager, eager-bf16,inductor-bf16",
                       runs_dir=tmp_path)
    assert _methods(named, "cpu") == ["eager", "eager-bf16", "inductor-bf16"]  # spaces in --methods are fine


def test_status_rows_leave_out_unnamed_opt_in_methods(tmp_path):
    """An environment that could not be created: skipped rows for what the plan would have run, not for the cpu
    half casts nobody asked for; named, they get theirs."""
    runs = tmp_path / "runs"
    plan = build_plan(models="resnet50", toolchains="torch", batches="1", devices="cpu", runs_dir=runs)
    status_items(plan, plan.items, "skipped", "environment could not be created: x", run_id="run-1")
    rows = read_rows(runs)
    assert {r.method for r in rows} == {"eager", "fx", "inductor", "pt2e"} and {r.device for r in rows} == {"cpu"}
    runs2 = tmp_path / "runs2"
    plan = build_plan(models="resnet50", toolchains="torch", batches="1", methods="eager,eager-bf16", devices="cpu",
                      runs_dir=runs2)
    status_items(plan, plan.items, "skipped", "environment could not be created: x", run_id="run-1")
    assert {r.method for r in read_rows(runs2)} == {"eager", "eager-bf16"}
    # a died route's leftovers are written only for what the plan runs on each device
    runs3 = tmp_path / "runs3"
    plan = build_plan(models="resnet50", toolchains="torch", batches="1", devices="cpu,cuda", runs_dir=runs3)
    mark_unfinished(plan, plan.items, "route process killed", run_id="run-1")
    got = {(r.method, r.device) for r in read_rows(runs3)}
    assert ("eager-bf16", "cuda") in got and ("eager-bf16", "cpu") not in got and ("eager", "cpu") in got


def test_help_says_how_to_get_them():
    p = subprocess.run([sys.executable, "-m", "evaluation.bench", "--help"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
    text = "".join(p.stdout.split())  # argparse wraps at spaces and hyphens
    assert p.returncode == 0 and "opt-in" in text and "torchoncpu:eager-fp16,eager-bf16,inductor-fp16,inductor-bf16,inductor-cl" in text
