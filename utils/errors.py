"""User-facing errors: one line, non-zero exit, no stack trace."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable


class SuiteError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class RouteUnavailable(SuiteError):
    """A toolchain cannot run here (library or hardware missing): rows become `skipped`."""


EXIT_USAGE = 2
FAILED_REASON_CHARS = 300  # the one failed-row format: class, message on one line, head + tail kept


def failure_reason(exc: BaseException, limit: int = FAILED_REASON_CHARS) -> str:
    """`Class: message` on one line; over `limit`, the head (what failed) and the tail (why) are kept."""
    msg = f"{exc.__class__.__name__}: {' '.join(str(exc).split()) or '(no message)'}"
    if len(msg) > limit:
        msg = msg[:limit // 2 - 2] + " ... " + msg[-(limit - limit // 2 - 3):]
    return msg


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: SuiteError -> 'error: ...' on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except SuiteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("error: interrupted (rows already written are kept)", file=sys.stderr)
            return 130
        return int(rc or 0)

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )

