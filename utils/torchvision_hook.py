"""`import torchvision` as users expect in an environment with CPU torch and the CUDA-only torchvision wheel.

PyPI has only torchvision's CUDA build (FACTS.md); next to CPU torch its `_C` extension fails to load silently and
`import torchvision` then raises "operator torchvision::nms does not exist". evaluation/launch/envs.py installs this file
into the site-packages of every environment that declares it (utils/registry.py `EnvDecl.site_hooks`: the torch
environment) as `_ptq_suite_torchvision.py`, with a `.pth` line that imports it when any interpreter of that
environment starts: a user's script, a notebook kernel, `python -c "import torchvision"`, without importing the
suite first.

Cheap at start-up: importing it puts one finder on `sys.meta_path` and imports nothing else (no torch). The finder
acts when torchvision's package is first executed: torch is imported (torchvision imports it anyway); when torch is a
CPU build and torchvision's `_C` extension cannot be loaded, the two op schemas its Python part needs (`nms`,
`qnms`) are defined, and torchvision then imports as usual (its C ops such as nms stay unavailable, which
classification does not need). Where the extension loads (a matching build, a CUDA machine) nothing is defined.

Self-contained (standard library only at import): it is copied out of the repository. utils/torchvision_compat.py
uses the same definitions for interpreters without the hook (an existing interpreter passed with --python).
"""
from __future__ import annotations

import sys

TARGET = "torchvision"
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_lib = None  # the torch.library.Library holding the definitions (kept alive: dropping it removes them)
acted: str | None = None  # what the hook did when torchvision was imported (for tests and questions)


def has_op(torch, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def define_missing_ops(torch) -> bool:
    """Define torchvision's `nms`/`qnms` schemas unless they exist (its extension loaded). True when defined here."""
    global _lib
    if _lib is not None or has_op(torch, "nms"):
        return False
    lib = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS:
        lib.define(schema)
    _lib = lib
    return True


def _extension_loads(torch, locations) -> bool:
    """Whether torchvision's `_C` extension loads next to this torch (as torchvision.extension tries it)."""
    import importlib.machinery
    import os

    for loc in locations or ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(loc, "_C" + suffix)
            if os.path.isfile(path):
                try:
                    torch.ops.load_library(path)
                    return True
                except (OSError, ImportError, RuntimeError):
                    return False
    return False


def prepare(spec) -> str:
    """Called right before torchvision's package runs: what was done, in words."""
    import torch

    if getattr(torch.version, "cuda", None) or getattr(torch.version, "hip", None):
        return "not a CPU torch build: nothing to do"
    if _extension_loads(torch, spec.submodule_search_locations):
        return "torchvision's extension loads: nothing to do"
    return "op schemas defined" if define_missing_ops(torch) else "op schemas already defined"


class _Loader:
    """torchvision's own loader, with `prepare` run once before the package executes."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        global acted
        if acted is None:
            try:
                acted = prepare(module.__spec__)
            except Exception as exc:  # noqa: BLE001 - never worse than without the hook: torchvision says what fails
                acted = f"hook failed: {exc.__class__.__name__}: {exc}"
        return self._loader.exec_module(module)

    def __getattr__(self, name):  # get_source, get_filename, is_package, get_resource_reader, ...
        return getattr(self._loader, name)


class Finder:
    """On sys.meta_path: wraps the loader of the `torchvision` package found by the finders after it."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET or acted is not None:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, Finder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    if TARGET not in sys.modules and not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder())
