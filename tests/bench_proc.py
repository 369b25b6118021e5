"""Launch `python -m evaluation.bench` as a user's shell would, for the fault tests (Ctrl-C, killed routes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from utils.paths import REPO_ROOT


def default_sigint() -> None:
    # a test runner started in the background (`cmd &` in a non-interactive shell) ignores SIGINT, and an
    # ignored signal is inherited: give the bench the terminal's default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bench(args: list[str], env: dict, **kw) -> subprocess.Popen:
    """The bench with `env` added to ours and the repository on PYTHONPATH; stdout/stderr piped as text."""
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "evaluation.bench", *args], cwd=REPO_ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
                            **kw)
