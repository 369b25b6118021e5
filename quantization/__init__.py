"""One entry module per toolchain, each run inside that toolchain's own virtualenv."""
