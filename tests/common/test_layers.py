"""Every per-toolchain and per-model fact is declared (utils/registry.py, models/catalog.py) or lives in its route
folder (quantization/<toolchain>/): the shared layers name no toolchain and no built-in model.

The guard parses every .py file of the shared layers (evaluation/, utils/, models/, quantization/kit/ and top-level
scripts) and fails on a string constant that is exactly a toolchain's name (utils.registry.ORDER) or a built-in
model's name (models.catalog.MODELS). Docstrings are prose and are not checked; the constant parts of f-strings are
ast.Constant nodes too, so a bare name inside an f-string is caught only when it is the whole part.
"""
from __future__ import annotations

import ast
from pathlib import Path

from models.catalog import MODEL_DECLS
from utils import registry
from utils.paths import REPO_ROOT

# the shared layers: everything but the declarations, the route folders (quantization/<toolchain>/) and the tests
SHARED = ("evaluation", "utils", "models", "quantization/kit")
DECLARATIONS = {"utils/registry.py", "models/catalog.py"}
# file -> literals it may hold, and why; keep this short: a fix is reading the declaration or moving the code to the
# route folder
ALLOWED: dict[str, dict[str, str]] = {}


def shared_files() -> list[Path]:
    files = [p for d in SHARED for p in sorted((REPO_ROOT / d).rglob("*.py"))] + sorted(REPO_ROOT.glob("*.py"))
    return [p for p in files if p.relative_to(REPO_ROOT).as_posix() not in DECLARATIONS
            and not {"cache", ".venvs", "__pycache__"} & set(p.relative_to(REPO_ROOT).parts)]


def names() -> frozenset[str]:
    """The toolchains' and the built-in models' names (a --models-file does not change what is built in)."""
    return frozenset(registry.ORDER) | frozenset(MODEL_DECLS)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def literals(source: str, watched: frozenset[str]) -> list[tuple[int, str]]:
    """(line, text) of each string constant (a docstring is not one) equal to a watched name."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and node.value in watched]


def test_the_guard_sees_literals_and_ignores_docstrings():
    src = ('"""torch and resnet50 in a docstring."""\n'
           'A = "torch"\nB = f"run {x} in the onnxruntime env"\nC = "onnxruntime-gpu"\nD = "torch.mm"\n'
           'E = ("modelopt-onnx", "gpt2")\n'
           'def f():\n    """openvino here is prose."""\n    return {"x": "openvino", "m": f"{m}" == "resnet50"}\n')
    watched = frozenset({"torch", "onnxruntime", "modelopt-onnx", "openvino", "resnet50", "gpt2"})
    assert [(ln, t) for ln, t in literals(src, watched)] == [
        (2, "torch"), (6, "modelopt-onnx"), (6, "gpt2"), (9, "openvino"), (9, "resnet50")]


def test_the_guard_watches_every_toolchain_and_built_in_model():
    watched = names()
    assert set(registry.ORDER) <= watched and {"resnet50", "gpt2"} <= watched
    assert len(shared_files()) > 40
    assert all(p.relative_to(REPO_ROOT).as_posix() in {f.relative_to(REPO_ROOT).as_posix() for f in shared_files()}
               for p in map(REPO_ROOT.joinpath, ALLOWED)), "an allow-list entry names a file the guard does not read"


def test_shared_layers_name_no_toolchain_and_no_model():
    """evaluation/, utils/, models/, quantization/kit/ and top-level scripts read toolchain and model facts from the
    declarations (or reach a route's module through a declared name: Toolchain.tools, Toolchain.ceilings), never by
    naming one."""
    watched = names()
    hits, used = [], set()
    for p in shared_files():
        rel = p.relative_to(REPO_ROOT).as_posix()
        for ln, text in literals(p.read_text(), watched):
            if text in ALLOWED.get(rel, {}):
                used.add((rel, text))
            else:
                hits.append(f"{rel}:{ln}: {text!r}")
    assert not hits, f"{len(hits)} toolchain/model literals in the shared layers:\n" + "\n".join(hits)
    stale = {(f, t) for f, ts in ALLOWED.items() for t in ts} - used
    assert not stale, f"allow-list entries no longer needed: {sorted(stale)}"


def test_declared_tools_live_in_their_route_folder():
    """Toolchain.tools names modules of the toolchain's own folder (quantization/<toolchain>/<analysis>.py); the
    evaluation commands reach them through utils.registry.tool()/with_tool(), never by importing a route module."""
    for tc in registry.TOOLCHAINS.values():
        for name, module in tc.tools.items():
            assert module.startswith(tc.module + "."), (tc.name, name, module)
            assert (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), (tc.name, name, module)
    for p in (REPO_ROOT / "evaluation").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for mod in mods:
                parts = mod.split(".")
                assert parts[0] != "quantization" or parts[1:2] == ["kit"], (p.relative_to(REPO_ROOT), mod)
