"""Bad input to the top-level commands: one line on stderr, exit code 2, before any environment is built."""
import subprocess
import sys

import pytest

from utils.paths import REPO_ROOT
from utils.registry import TOOLCHAINS


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,expect", [
    (["--models", "vgg16"], "unknown model 'vgg16'; valid: resnet50, gpt2"),
    (["--toolchains", "tflite"], f"unknown toolchain 'tflite'; valid: {', '.join(TOOLCHAINS)}"),  # the declaration's
    (["--calib-samples", "0"], "argument --calib-samples: must be >= 1, got 0"),
    (["--threads", "-2"], "argument --threads: must be >= 1, got -2"),
    (["--eval-limit", "0"], "argument --eval-limit: must be >= 1, got 0"),
    (["--min-time", "-1"], "argument --min-time: must be > 0"),
    (["--methods", "bogus"], "unknown method 'bogus'"),
])
def test_bench_bad_input(args, expect):
    p = run("-m", "evaluation.bench", *args)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]


def test_bench_help_lists_flags():
    p = run("-m", "evaluation.bench", "--help")
    assert p.returncode == 0 and "--toolchains" in p.stdout and "--weights" in p.stdout


def test_test_command_rejects_unknown_env():
    p = run("-m", "evaluation.test", "nope")
    assert p.returncode == 2 and "unknown environment 'nope'" in p.stderr
