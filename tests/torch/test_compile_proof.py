"""A compiled row proves it ran compiled (quantization.torch.route.Compiled), with the real TorchDynamo on the CPU.

Seen on an H200: after several variants were compiled in one process, an inductor-bf16 row ran eager (TorchDynamo's
recompile limit is counted per code object, and every torch.compile'd nn.Module enters through one shared frame) and
the table printed it as a compiled row. Here: that failure mode itself, then more compiled variants in one process
than the recompile limit, every one compiled (its own graphs, no fallback, recorded per row), and each way a compiled
call can fall back (graph break, recompile-limit hit, dynamo running nothing) failing with its reason."""
import json

import numpy as np
import pytest
import torch

from quantization.torch import route as tr


def tiny(seed: int, classes: int = 10):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, classes)).eval()


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _limit_hits() -> int:
    return tr.dynamo_counts()["limit_hits"]


def test_plain_torch_compile_of_modules_runs_eager_silently_past_the_recompile_limit(one_thread):
    """The failure mode, with the real torch: plain torch.compile of several modules (freezing, static shapes, as the
    route did before), each called at a few shapes, share one cache; past config.recompile_limit a call runs eager,
    returns the right numbers and raises nothing, and later modules compile nothing at all."""
    import torch._inductor.config as ind

    torch._dynamo.reset()
    ind.freezing = True
    limit = torch._dynamo.config.recompile_limit
    shapes = (1, 2, 3)
    mods = [tiny(i) for i in range(limit // len(shapes) + 2)]
    plain = [torch.compile(m, dynamic=False) for m in mods]
    hits0 = _limit_hits()
    graphs = []
    with torch.inference_mode():
        for m, c in zip(mods, plain):
            for n in shapes:
                x = torch.randn(n, 3, 8, 8)
                before = tr.dynamo_counts()["unique_graphs"]
                torch.testing.assert_close(c(x), m(x))  # right numbers either way
                graphs.append(tr.dynamo_counts()["unique_graphs"] - before)
    assert _limit_hits() > hits0  # the limit was hit: a warning in the log, nothing raised
    assert sum(graphs) == limit  # only the first `limit` calls compiled a graph ...
    assert graphs[-len(shapes):] == [0] * len(shapes)  # ... the last module ran eager at every shape


def test_more_compiled_variants_than_the_recompile_limit_all_compile(one_thread):
    """Compiled variants in one process, more graphs in all than the recompile limit: each variant has its own code
    object (its own cache and limit), so every scoring call and every timed first call ran a compiled graph of its
    own; the counts each row records say so."""
    limit = torch._dynamo.config.recompile_limit
    n_variants = limit // 2 + 1  # two shapes each: more graphs than the limit
    built = []
    with torch.inference_mode():
        for i in range(n_variants):
            m = tiny(i)
            c = tr.Compiled(m, f"variant-{i}")
            x = torch.randn(5, 3, 8, 8)
            torch.testing.assert_close(c(x), m(x))  # checked scoring call at one shape
            built.append((m, c))
        for m, c in built:  # the timed callables, after every variant was built (as the kit times them)
            x = torch.randn(2, 3, 8, 8)
            once = c.proven(lambda c=c, x=x: c.call(x))
            torch.testing.assert_close(once(), m(x))  # first call checked: compiles the new shape
            torch.testing.assert_close(once(), m(x))  # later calls straight
    stats = [c.stats for _, c in built]
    assert sum(s["frames"] for s in stats) > limit
    for s in stats:
        assert s["frames"] == 2 and s["recompiles"] == 1, s
        assert s["graph_breaks"] == 0 and s["fallbacks"] == 0 and s["checked_calls"] == 2, s
        assert s["fullgraph"] is True and s["mode"] == "default"
    assert len({s["code"] for s in stats}) == n_variants  # one code object each
    assert tr.compile_extra(built[0][1]) == {"compile": stats[0]}


class Breaks(torch.nn.Module):
    def forward(self, x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2


def test_a_graph_break_fails_with_the_reason():
    c = tr.Compiled(Breaks(), "breaks")
    with pytest.raises(tr.CompileFallback, match=r"breaks: TorchDynamo could not capture it as one graph \(a graph "
                                                 r"break\) \(fullgraph=True\): .*graph_break"):
        c(torch.randn(4))
    assert c.stats["graph_breaks"] == 1 and c.stats["fallbacks"] == 1 and c.stats["frames"] == 0


def test_a_recompile_limit_hit_fails_with_the_reason(one_thread):
    c = tr.Compiled(tiny(0), "limited")
    with torch._dynamo.config.patch(recompile_limit=1), torch.inference_mode():
        c(torch.randn(1, 3, 8, 8))
        with pytest.raises(tr.CompileFallback, match="limited: TorchDynamo hit its recompile limit"):
            c(torch.randn(2, 3, 8, 8))
    assert c.stats["frames"] == 1 and c.stats["fallbacks"] == 1


def test_dynamo_disabled_fails_with_the_reason():
    with torch._dynamo.config.patch(disable=True):
        c = tr.Compiled(tiny(0), "disabled")
        with pytest.raises(tr.CompileFallback, match="disabled: torch.compile ran it eager"):
            c(torch.randn(1, 3, 8, 8))
    assert c.stats["fallbacks"] == 1 and c.stats["frames"] == 0


def test_an_eager_call_that_raises_nothing_still_fails(monkeypatch):
    """The counters' own check: a call that returned without TorchDynamo holding any graph for the variant (here
    torch.compile stubbed to return the function itself: the layer below the proof) is a fallback."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    c = tr.Compiled(tiny(0), "stubbed")
    with pytest.raises(tr.CompileFallback, match="stubbed: torch.compile ran it eager .TorchDynamo holds no "
                                                 "compiled graph"):
        c(torch.randn(1, 3, 8, 8))
    once = c.proven(lambda: c.call(torch.randn(1, 3, 8, 8)))
    with pytest.raises(tr.CompileFallback):
        once()  # a timed callable's first call is checked the same way


def test_cudnn_benchmark_is_on_only_around_the_variants_calls(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fn = tr.with_cudnn_benchmark(lambda: seen.append(torch.backends.cudnn.benchmark))
    fn()
    assert seen == [True] and torch.backends.cudnn.benchmark is False


def test_the_route_writes_compiled_rows_that_prove_it(tmp_path, monkeypatch, embedded_models):
    """The torch route in one process on the embedded ResNet50's data (a tiny network in its place: the compiles take
    seconds): four compiled variants, each scored (16x16, batch 120) and timed at batch 1 and 32 (224x224), 12 graphs
    in one process, more than the recompile limit. Every compiled row is ok and records its own graphs, none fell
    back; the eager baseline records none."""
    from quantization import kit

    monkeypatch.setattr(tr, "_classifier", lambda ctx: tiny(0, int(ctx.manifest["num_classes"])))
    # the CPU half casts run where oneDNN has the dtype natively; here they run whatever the CPU (tiny model)
    monkeypatch.setattr(tr, "capabilities", lambda: {"cpu_fp16": True, "cpu_bf16": True, "cuda_bf16": False})
    methods = ["eager", "inductor", "inductor-bf16", "inductor-fp16", "inductor-max"]
    rc = kit.run(tr.ROUTE, ["--model", "resnet50", "--methods", ",".join(methods), "--devices", "cpu",
                            "--batches", "1,32", "--min-time", "0.05", "--min-iters", "3", "--threads", "1",
                            "--runs-dir", str(tmp_path)])
    assert rc == 0
    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    by = {(r["method"], r["batch"]): r for r in rows}
    assert set(by) == {(m, b) for m in methods for b in (1, 32)}
    total = 0
    for (method, batch), r in by.items():
        assert r["status"] == "ok", (method, r["reason"])
        assert r["latency_p50_ms"] > 0 and r["first_call_ms"] > 0
        if method == "eager":
            assert "compile" not in r["extra"]
            continue
        c = r["extra"]["compile"]  # as it stood when the row was written (its batch timed)
        # scored at 16x16 (3 calls at batch 120), then timed at 224x224 batch 1, then 32: a graph of its own for each
        # shape, each first call checked, none fell back
        assert (c["frames"], c["checked_calls"]) == ({1: (2, 4), 32: (3, 5)}[batch]), (method, batch, c)
        assert c["fallbacks"] == 0 and c["graph_breaks"] == 0, (method, c)
        assert c["mode"] == ("max-autotune" if method == "inductor-max" else "default") and c["fullgraph"] is True
        assert r["extra"]["torch_settings"]["compile_mode"] == c["mode"]
        assert "fullgraph" in r["notes"] and "extra.compile" in r["notes"]
        total += c["frames"] if batch == 32 else 0
    assert total > torch._dynamo.config.recompile_limit
    # compiled and eager agree on the scores (the compiled graphs are the model, not something else)
    assert np.isclose(by[("inductor", 1)]["value"], by[("eager", 1)]["value"])
