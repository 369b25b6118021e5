"""Opt-in methods (the declaration's `opt_in`): the torch CPU half-precision casts run only when --methods names
them, in the bench and in a route; on cuda they run by default."""
import subprocess
import sys

from evaluation import bench
from utils import registry
from utils.paths import REPO_ROOT
from utils.rows import read_rows

HALF = ("eager-fp16", "eager-bf16", "inductor-fp16", "inductor-bf16")


def test_the_torch_cpu_half_casts_are_declared_opt_in():
    tc = registry.TOOLCHAINS["torch"]
    assert set(tc.opt_in["cpu"]) == set(HALF) and not tc.opt_in.get("cuda")
    for model in ("resnet50", "gpt2"):
        assert set(HALF) <= set(tc.methods(model))  # still declared variants (--methods takes them)
        assert not set(HALF) & set(tc.default_methods(model, "cpu"))
        assert set(HALF) <= set(tc.default_methods(model, "cuda"))
    # no other toolchain's defaults change
    for name, other in registry.TOOLCHAINS.items():
        if name != "torch":
            assert not other.opt_in, name


def _bargs(*argv):
    return bench.build_parser().parse_args(list(argv))


def test_bench_selects_opt_in_methods_only_when_named(tmp_path):
    methods = lambda args, device=None: [m for m, _ in bench._variants(args, "torch", "resnet50", device)]  # noqa: E731
    default = _bargs("--runs-dir", str(tmp_path))
    assert methods(default, "cpu") == ["eager", "fx", "inductor", "pt2e"]
    assert set(HALF) <= set(methods(default, "cuda"))
    assert not set(HALF) & set(methods(_bargs("--devices", "cpu")))  # a cpu-only run: none of them at all
    assert set(HALF) <= set(methods(_bargs("--devices", "cuda")))
    named = _bargs("--methods", "eager,eager-bf16,inductor-bf16")
    assert methods(named, "cpu") == ["eager", "eager-bf16", "inductor-bf16"]
    assert bench.route_args(named, "resnet50", "torch")[-2:] == ["--methods", "eager,eager-bf16,inductor-bf16"]


def test_bench_status_rows_leave_out_unnamed_opt_in_methods(tmp_path):
    """An environment that could not be created: skipped rows for what the run would have run, not for the cpu
    half casts nobody asked for; named, they get theirs."""
    runs = tmp_path / "runs"
    args = _bargs("--runs-dir", str(runs), "--batches", "1")
    bench.status_all(args, "torch", "resnet50", "skipped", "environment could not be created: x", "run-1")
    rows = read_rows(runs)
    assert {r.method for r in rows} == {"eager", "fx", "inductor", "pt2e"} and {r.device for r in rows} == {"cpu"}
    runs2 = tmp_path / "runs2"
    args = _bargs("--runs-dir", str(runs2), "--batches", "1", "--methods", "eager,eager-bf16")
    bench.status_all(args, "torch", "resnet50", "skipped", "environment could not be created: x", "run-1")
    assert {r.method for r in read_rows(runs2)} == {"eager", "eager-bf16"}
    # a died route's leftovers (all variants, any device) are written only where the device runs them
    runs3 = tmp_path / "runs3"
    args = _bargs("--runs-dir", str(runs3), "--batches", "1", "--devices", "cpu,cuda")
    bench.status_all(args, "torch", "resnet50", "failed", "route process killed", "run-1",
                     variants=list(bench._variants(args, "torch", "resnet50")))
    got = {(r.method, r.device) for r in read_rows(runs3)}
    assert ("eager-bf16", "cuda") in got and ("eager-bf16", "cpu") not in got and ("eager", "cpu") in got


def test_help_says_how_to_get_them():
    p = subprocess.run([sys.executable, "-m", "evaluation.bench", "--help"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
    text = "".join(p.stdout.split())  # argparse wraps at spaces and hyphens
    assert p.returncode == 0 and "opt-in" in text and "torchoncpu:eager-fp16,eager-bf16,inductor-fp16,inductor-bf16" in text
