"""Import torchvision 0.28.0 next to CPU torch 2.13.0.

PyPI only has torchvision's CUDA build; with CPU torch its `_C` extension fails to load
silently and `import torchvision` then raises "operator torchvision::nms does not exist".
Defining the two missing op schemas and importing again makes it work; the C ops such as nms
stay unavailable, which classification does not need. Where the extension loads (a CUDA
machine) the first import succeeds and nothing is defined.
"""
from __future__ import annotations

import sys

_lib = None


def import_torchvision():
    global _lib
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _lib = torch.library.Library("torchvision", "DEF")
        _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision
    return torchvision
