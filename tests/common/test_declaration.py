"""One toolchain declaration: everything else (environments, tests, packages, run order, entry point) reads it."""
import dataclasses
import re

import pytest

from utils import registry
from utils.paths import REPO_ROOT
from utils.registry import EnvDecl, Part, Toolchain


def test_layers_name_no_toolchain():
    """envs, test and bench read the declaration: no toolchain name in them, not even in prose (the whole tree's
    string literals: tests/common/test_layers.py)."""
    for f in ("evaluation/launch/envs.py", "evaluation/launch/tests.py", "evaluation/launch/bench.py"):
        text = (REPO_ROOT / f).read_text()
        for lit in ("onnxruntime", "modelopt", "tensorrt", "tripy"):
            assert lit not in text, (f, lit)


def test_run_order_is_derived_from_needs():
    order = registry.ORDER
    for name, tc in registry.TOOLCHAINS.items():
        for dep in tc.needs:
            assert order.index(dep) < order.index(name), (dep, name)
    assert registry.PREPARE_TOOLCHAIN == order[0]


def test_a_new_toolchain_is_one_declaration(monkeypatch):
    """Adding a toolchain = one entry: environment, test order, recorded packages and run order follow."""
    new = Toolchain(name="newtc", route="quantization.newtc.route:ROUTE",
                    env=EnvDecl("newtc", (Part("newtc.txt"),), tests="tests/newtc"),
                    variants={registry.CLASSIFIER: (("fp32", "fp32"), ("int8", "int8"))}, packages=("newtc-lib",),
                    needs=("onnxruntime",), baseline=("newtc", "fp32"))
    decls = (new,) + registry._DECLS  # declared first, must still run after what it needs
    monkeypatch.setattr(registry, "_DECLS", decls)
    monkeypatch.setattr(registry, "TOOLCHAINS", {t.name: t for t in decls})
    order = registry._run_order()
    assert order.index("newtc") > order.index("onnxruntime") > order.index("torch")
    monkeypatch.setattr(registry, "ORDER", order)
    assert registry.all_envs()["newtc"].parts == (Part("newtc.txt"),)
    assert "newtc" in registry.test_order()
    assert "newtc-lib" in registry.recorded_packages()
    assert new.module == "quantization.newtc" and new.precision("resnet50", "int8") == "int8"


def test_cycle_is_refused(monkeypatch):
    a = Toolchain(name="a", route="x:y", env=EnvDecl("a", ()), variants={}, needs=("b",))
    b = dataclasses.replace(a, name="b", needs=("a",))
    monkeypatch.setattr(registry, "_DECLS", (a, b))
    monkeypatch.setattr(registry, "TOOLCHAINS", {"a": a, "b": b})
    with pytest.raises(ValueError, match="cycle"):
        registry._run_order()


def test_every_route_has_one_layout():
    """quantization/<toolchain>/route.py holds ROUTE; `python -m quantization.<toolchain>` runs it."""
    for tc in registry.TOOLCHAINS.values():
        pkg = REPO_ROOT / tc.module.replace(".", "/")
        assert tc.route == f"{tc.module}.route:ROUTE" and pkg.parent == REPO_ROOT / "quantization", tc.route
        assert (pkg / "route.py").is_file() and (pkg / "__init__.py").is_file(), tc.route
        assert f"from {tc.module}.route import main" in (pkg / "__main__.py").read_text(), tc.route
        assert (REPO_ROOT / "requirements" / tc.env.parts[0].file).is_file()
        assert (REPO_ROOT / tc.env.tests).is_dir()


def test_model_name_dispatch_is_rare():
    """Tasks, not model names: at most 3 comparisons against "resnet50"/"gpt2" in quantization/ and evaluation/."""
    pat = re.compile(r'(==|!=)\s*"(resnet50|gpt2)"|"(resnet50|gpt2)"\s*(==|!=)')
    hits = [(p, ln) for folder in ("quantization", "evaluation") for p in (REPO_ROOT / folder).rglob("*.py")
            for ln in p.read_text().splitlines() if pat.search(ln)]
    assert len(hits) <= 3, hits


def test_one_per_variant_loop_and_no_route_internals_in_evaluation():
    loops = [(p, ln) for p in (REPO_ROOT / "quantization").rglob("*.py") for ln in p.read_text().splitlines()
             if re.search(r"for \(?method, precision\)? in", ln)]
    assert len(loops) <= 1, loops
    for p in (REPO_ROOT / "evaluation").rglob("*.py"):
        text = p.read_text()
        assert ".parser()" not in text and "make_artifact_fn" not in text, p
        for mod in re.findall(r"from quantization\.([\w.]+) import", text):
            assert mod.split(".")[0] == "kit", (p, mod)  # evaluation reaches routes through the kit only


def test_quantization_scopes_are_declared_beside_the_models_and_named_by_the_variants():
    from utils.registry import DEFAULT_SCOPE, MODEL_DECLS, TOOLCHAINS, scope_of

    for m, d in MODEL_DECLS.items():
        assert DEFAULT_SCOPE in d.scopes, m
    gpt2 = MODEL_DECLS["gpt2"]
    default, head = gpt2.scope(), gpt2.scope("head")
    # GPT-2's default keeps the LM head and the attention score/context MatMuls; "head" quantizes the LM head too
    assert default.keeps("lm_head") and default.keeps("transformer.h.11.attn:scores")
    assert not default.keeps("transformer.h.0.attn.c_attn") and not default.keeps("transformer.h.0.mlp.c_proj")
    assert not head.keeps("lm_head") and head.keeps("transformer.h.0.attn:scores")
    assert not MODEL_DECLS["resnet50"].scope().keeps("fc")
    for tc in TOOLCHAINS.values():
        for method, scope in tc.method_scopes.items():
            assert any(method in tc.methods(m) and scope in MODEL_DECLS[m].scopes for m in tc.models()), (tc.name, method)
        for method in tc.random_only:
            assert any(method in tc.methods(m) for m in tc.models()), (tc.name, method)
    assert scope_of("onnxruntime", "gpt2", "minmax+head")[0] == "head"
    assert scope_of("openvino", "gpt2", "int8+head")[0] == "head"
    assert scope_of("onnxruntime", "gpt2", "minmax") == ("default", default)
    # the LM-head variants run by default with random weights (the real model's speed), by name on the embedded model
    for tc, method in (("onnxruntime", "minmax+head"), ("openvino", "int8+head")):
        assert method in TOOLCHAINS[tc].default_methods("gpt2", "cpu", "random")
        assert method not in TOOLCHAINS[tc].default_methods("gpt2", "cpu", "embedded")


def test_sweep_defaults_are_declared_with_their_toolchain():
    """The sweeps' per-toolchain defaults (Toolchain.default_sweeps, calib_sweep_exclude, uncalibrated,
    batch_sweep_methods) name the toolchain's own methods and the declared tasks; sweep.py reads them."""
    from evaluation.launch import sweep
    from utils.registry import MODEL_DECLS, TOOLCHAINS

    tasks = {d.task for d in MODEL_DECLS.values()}
    for tc in TOOLCHAINS.values():
        assert set(tc.default_sweeps) <= {"calib", "batch"}, tc.name
        every = {m for model in tc.models() for m in tc.methods(model)}
        assert set(tc.calib_sweep_exclude) | set(tc.uncalibrated) <= every, tc.name
        for task, methods in tc.batch_sweep_methods.items():
            assert task in tasks, (tc.name, task)
            models = [m for m, d in MODEL_DECLS.items() if d.task == task and m in tc.models()]
            assert models and all(set(methods) <= set(tc.methods(m)) for m in models), (tc.name, task)
    assert sweep.default_sweep_toolchains("calib")[:1] == ("onnxruntime",)
    assert sweep.default_sweep_toolchains("batch") == ("torch", "onnxruntime")
    assert sweep.default_calib_methods("torch", "resnet50") == ("fx",)  # pt2e excluded, the casts calibrate nothing
    assert sweep.default_calib_methods("torch", "gpt2") == ()  # weight-only, dynamic: no calibration data
    assert sweep.default_batch_methods("tensorrt", "resnet50") == ("fp32", "fp16", "int8-qdq")
    assert sweep.default_batch_methods("openvino", "gpt2") == TOOLCHAINS["openvino"].methods("gpt2")  # none declared
