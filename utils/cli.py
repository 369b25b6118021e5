"""Shared flag checks for every command (stdlib only: the bench and sweeps run under the bare system Python).

A bad flag is one line and exit code 2 (`ArgParser.error` raises SuiteError, which `cli_main` prints).
"""
from __future__ import annotations

import argparse

from utils.errors import SuiteError


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag raises SuiteError (cli_main prints it and exits 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise SuiteError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def int_list(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32), every entry >= 1."""
    try:
        b = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a comma list of integers, got {text!r}") from None
    if not b or min(b) < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return b


def int_list_text(text: str) -> str:
    """int_list, kept as its canonical text (for passing on to a child command)."""
    return ",".join(map(str, int_list(text)))


def add_output_flags(ap: argparse.ArgumentParser, what: str, local: str = "results/local/",
                     published: str = "results/") -> None:
    """--out and --publish of a command that writes files: a user's run goes to `local` (git-ignored), the
    committed reference (--publish) to `published`."""
    from pathlib import Path

    ap.add_argument("--out", type=Path, default=None, help=f"where {what} go(es) (default {local})")
    ap.add_argument("--publish", action="store_true", help=f"write the committed {what} in {published}")


def output_folder(args, local, published):
    """The folder --out/--publish name (add_output_flags); both at once is a one-line error."""
    if args.publish and args.out is not None:
        from utils.paths import REPO_ROOT

        raise SuiteError(f"--publish writes {published.relative_to(REPO_ROOT)}/; drop --out")
    return published if args.publish else (args.out or local)
