"""`python -m quantization.kit <toolchain> [route flags]`: run one declared route through the kit."""
from __future__ import annotations

import sys

from utils.errors import SuiteError, cli_main
from utils.registry import TOOLCHAINS


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m quantization.kit TOOLCHAIN [route flags]; toolchains: {', '.join(TOOLCHAINS)}")
        return 0 if argv else 2
    from quantization.kit import route_for, run

    if argv[0] not in TOOLCHAINS:
        raise SuiteError(f"unknown toolchain {argv[0]!r}; valid: {', '.join(TOOLCHAINS)}")
    return run(route_for(argv[0]), argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
