"""Fixtures for this environment's tests: the shared tiny-ONNX ones from tests/onnx_tiny.py."""
from tests.onnx_tiny import convnet_path, h, lm_path, wide_net_path  # noqa: F401  (pytest finds fixtures by name here)
