"""Scoring, timing, orchestration and tables. Modules here import no toolchain at import time."""
