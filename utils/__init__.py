"""Thin shared layer. Imports no toolchain library at import time, so every environment can use it."""
