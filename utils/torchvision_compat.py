"""Import torchvision 0.28.0 next to CPU torch 2.13.0, in any interpreter.

PyPI only has torchvision's CUDA build; with CPU torch its `_C` extension fails to load
silently and `import torchvision` then raises "operator torchvision::nms does not exist".
The suite's torch environment gets a start-up hook for that (utils/torchvision_hook.py,
installed by evaluation/launch/envs.py), so a plain `import torchvision` works there; this function
does the same for an interpreter without the hook (an existing one passed with --python):
define the two missing op schemas and import again. The C ops such as nms stay unavailable,
which classification does not need. Where the extension loads (a CUDA machine) the first
import succeeds and nothing is defined.
"""
from __future__ import annotations

import sys


def import_torchvision():
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        import torch

        from utils.torchvision_hook import define_missing_ops

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        define_missing_ops(torch)
        import torchvision
    return torchvision
