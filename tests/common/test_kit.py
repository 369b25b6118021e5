"""The route kit's one loop, driven by a NumPy route (this tests the kit, not a toolchain): rows, failure
isolation with one failed-row format, skipped variants, timer plug-ins, and no ok row lost to a later failure."""
import json

import numpy as np
import pytest

from quantization import kit
from quantization.kit import Built, Calibration, Route, SkipVariant
from utils.errors import SuiteError
from utils.rows import read_attempts, read_rows
from utils.specs import ModelSource


class NumpyRoute(Route):
    """Pretends to be the onnxruntime toolchain (its declared variants) with NumPy 'models'."""

    toolchain = "onnxruntime"
    description = "test route"

    def __init__(self, fail=(), skip=(), unavailable=None):
        self.fail, self.skip, self._unavailable, self.opened = set(fail), set(skip), unavailable, 0

    def unavailable(self, opts):
        return self._unavailable

    def open(self, ctx):
        self.opened += 1
        rng = np.random.default_rng(0)
        ctx.state["w"] = rng.standard_normal((3 * ctx.data.resolution ** 2, 10)).astype(np.float32)

    def build(self, ctx, method, precision, device):
        if method in self.fail:
            raise RuntimeError("boom " + "x" * 1000 + " the real cause at the end")
        if method in self.skip:
            raise SkipVariant(f"{method} needs hardware this machine lacks")
        w = ctx.state["w"] if method == "fp32" else np.round(ctx.state["w"] * 8) / 8

        def predict(x):
            return x.reshape(len(x), -1)[:, : w.shape[0]] @ w if x.shape[-1] == ctx.data.resolution else \
                np.zeros((len(x), 10), np.float32)

        calls = []
        built = Built(predict, size_mb=1.0, compute_precision=precision,
                      calibration=None if method == "fp32" else Calibration(16, 0.5, method), notes=[f"n-{method}"])
        if method == "percentile":  # a device clock plugged into the harness: 5 ms per call, exactly
            built.timer = lambda fn: (fn(), calls.append(1), 5.0)[2]
            built.latency_kind = "cuda-events"
        return built


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr("utils.specs.CACHE_DIR", tmp_path / "cache")
    src = ModelSource("resnet50")
    src.cache_dir.mkdir(parents=True)
    src.manifest_path.write_text(json.dumps({"resolution": 8, "num_classes": 10, "latency_resolution": 8,
                                             "dataset": "digits-8px", "ops_per_item": 1e3}))
    return tmp_path


ARGS = ["--model", "resnet50", "--batches", "1,4", "--min-time", "0.01", "--min-iters", "3", "--calib-samples", "16",
        "--devices", "cpu"]


def test_rows_failure_isolation_and_skips(cache):
    runs = cache / "runs"
    # minmax fails, entropy is skipped: the others are measured; the plan times the calibration twins (entropy,
    # percentile) at the smallest batch only
    assert kit.run(NumpyRoute(fail={"minmax"}, skip={"entropy"}), ARGS + ["--runs-dir", str(runs)]) == 0
    rows = {(r.method, r.batch): r for r in read_rows(runs)}
    assert set(rows) == {("fp32", 1), ("fp32", 4), ("minmax", 1), ("minmax", 4), ("entropy", 1), ("percentile", 1)}
    ok = rows[("fp32", 4)]
    assert ok.status == "ok" and ok.metric == "top1" and 0 <= ok.value <= 100 and ok.extra["n_eval"] == 359
    assert ok.latency_kind == "host-wall" and ok.extra["latency"]["n"] >= 3 and ok.throughput_unit == "images/s"
    assert ok.extra["latency_shape"] == [4, 3, 8, 8] and ok.notes == "n-fp32"
    f = rows[("minmax", 1)]
    assert f.status == "failed" and f.reason.startswith("RuntimeError: boom") and f.reason.endswith("cause at the end")
    assert len(f.reason) <= kit.FAILED_REASON_CHARS and "\n" not in f.reason and " ... " in f.reason
    assert rows[("entropy", 1)].status == "skipped" and "hardware" in rows[("entropy", 1)].reason
    p = rows[("percentile", 1)]
    assert p.status == "ok" and p.latency_kind == "cuda-events" and p.latency_p50_ms == 5.0 and not p.pending
    assert p.calib_samples == 16 and p.calib_method == "percentile" and p.compute_precision == "int8"
    # accuracy is scored once per variant and shared by its batches
    assert rows[("fp32", 1)].value == ok.value and rows[("fp32", 1)].extra["correct_bits"] == ok.extra["correct_bits"]


def test_unavailable_route_writes_skipped_rows_for_every_variant(cache):
    runs = cache / "runs"
    assert kit.run(NumpyRoute(unavailable="libfoo cannot be imported"), ARGS + ["--runs-dir", str(runs)]) == 0
    rows = read_rows(runs)
    assert len(rows) == 6 and {r.status for r in rows} == {"skipped"} and {r.reason for r in rows} == {
        "libfoo cannot be imported"}


def test_a_later_failure_never_replaces_an_ok_row(cache):
    runs = cache / "runs"
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs), "--methods", "fp32"]) == 0
    before = {r.key: r for r in read_rows(runs)}
    assert {r.status for r in before.values()} == {"ok"}
    assert kit.run(NumpyRoute(fail={"fp32"}), ARGS + ["--runs-dir", str(runs), "--methods", "fp32"]) == 0
    after = {r.key: r for r in read_rows(runs)}
    assert after == before  # the ok rows are still there, unchanged
    att = read_attempts(runs)
    assert set(att) == set(before) and {a.status for a in att.values()} == {"failed"}
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs), "--methods", "fp32"]) == 0
    assert not read_attempts(runs)  # a new ok row clears the recorded failed attempt


def test_subset_rows_never_replace_full_rows(cache):
    runs = cache / "runs"
    kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs), "--methods", "fp32"])
    kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs), "--methods", "fp32", "--eval-limit", "50"])
    rows = read_rows(runs)
    full = [r for r in rows if r.eval_limit is None]
    sub = [r for r in rows if r.eval_limit == 50]
    assert len(full) == 2 and len(sub) == 2
    assert all(r.extra["n_eval"] == 359 for r in full) and all(r.extra["n_eval"] == 50 for r in sub)
    assert all(r.key.endswith("__lim50") for r in sub)


def test_bad_timing_flags_exit_2_before_any_row(cache, capsys):
    runs = cache / "runs"
    main = kit.main_for(NumpyRoute())
    assert main(ARGS + ["--runs-dir", str(runs), "--min-time", "-1"]) == 2
    assert main(ARGS + ["--runs-dir", str(runs), "--min-iters", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error: argument --min-") for e in err)
    assert not runs.exists()


def test_build_variant_is_the_public_build_api(cache, monkeypatch):
    route = NumpyRoute()
    monkeypatch.setattr("quantization.kit.cli.route_for", lambda name: route)
    ctx, built = kit.build_variant("onnxruntime", "resnet50", "minmax", argv=["--calib-samples", "16"])
    assert ctx.task.kind == "image-classification" and ctx.hashes["n_calib"] == 16
    s = kit.score_built(ctx, built)
    assert s.n == 359 and built.calibration.samples == 16


def test_cached_artifact_with_companions_is_verified_and_made_again(tmp_path, caplog):
    """kit.cache: a main file plus companions (an IR .xml + .bin); a changed companion makes it again."""
    from quantization.kit import cache

    made = []

    def make(tmp_out):
        made.append(tmp_out)
        tmp_out.write_text("<xml/>")
        tmp_out.with_suffix(".bin").write_bytes(b"\x01" * 64)
        return {"how": "test"}

    out = cache.artifact_path(tmp_path, "int8", {"src": "a"}, suffix=".xml")
    p, meta, reused = cache.cached_artifact(out, make, companions=(".bin",))
    assert p == out and not reused and ".bin" in meta["companions"] and out.with_suffix(".bin").is_file()
    assert cache.cached_artifact(out, make, companions=(".bin",))[2] is True and len(made) == 1
    out.with_suffix(".bin").write_bytes(b"\x01" * 10)  # truncated weights
    _, _, reused = cache.cached_artifact(out, make, companions=(".bin",))
    assert not reused and len(made) == 2 and out.with_suffix(".bin").read_bytes() == b"\x01" * 64
    assert "cached artifact not reused" in caplog.text

    def forgets_bin(tmp_out):
        tmp_out.write_text("<xml/>")
        return {}

    other = cache.artifact_path(tmp_path, "int8", {"src": "b"}, suffix=".xml")
    with pytest.raises(SuiteError, match="wrote no"):
        cache.cached_artifact(other, forgets_bin, companions=(".bin",))
    assert not other.exists()


def test_a_route_runs_an_opt_in_method_only_when_named(cache, monkeypatch):
    """A method the declaration makes opt-in on a device (`opt_in`) runs there only when --methods names it."""
    import dataclasses

    from utils import registry

    tc = registry.TOOLCHAINS["onnxruntime"]
    monkeypatch.setitem(registry.TOOLCHAINS, "onnxruntime", dataclasses.replace(tc, opt_in={"cpu": ("percentile",)}))
    runs = cache / "runs"
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs)]) == 0
    assert {r.method for r in read_rows(runs)} == {"fp32", "minmax", "entropy"}
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs), "--methods", "fp32,percentile"]) == 0
    assert {(r.method, r.status) for r in read_rows(runs)} >= {("percentile", "ok")}
    # opt-in on another device only: the cpu run has it by default
    monkeypatch.setitem(registry.TOOLCHAINS, "onnxruntime", dataclasses.replace(tc, opt_in={"cuda": ("percentile",)}))
    runs2 = cache / "runs2"
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs2)]) == 0
    assert "percentile" in {r.method for r in read_rows(runs2)}
    # the route's --help names them
    help_text = kit.parser_for(NumpyRoute()).format_help()
    monkeypatch.setitem(registry.TOOLCHAINS, "onnxruntime", tc)
    assert "opt-in" in " ".join(help_text.split())


def test_calibration_twins_are_timed_at_the_smallest_batch_unless_named(cache):
    """ORT entropy/percentile deploy minmax's graph (only scales differ): by default they are scored as every variant
    but timed at the smallest batch only, with a note saying so; named in --methods, at every batch."""
    runs = cache / "runs"
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs)]) == 0
    rows = [r for r in read_rows(runs) if r.status == "ok"]
    by = {}
    for r in rows:
        by.setdefault(r.method, set()).add(r.batch)
    assert by == {"fp32": {1, 4}, "minmax": {1, 4}, "entropy": {1}, "percentile": {1}}
    ent = next(r for r in rows if r.method == "entropy")
    assert ent.value is not None and ent.agreement is not None  # scored like any variant
    assert ent.latency_samples >= 3 and ent.speedup_ci_low <= ent.speedup_paired <= ent.speedup_ci_high
    assert "latency at batch 1 only" in ent.notes and "minmax" in ent.notes
    assert all("latency at batch" not in r.notes for r in rows if r.method in ("fp32", "minmax"))
    runs2 = cache / "runs2"
    assert kit.run(NumpyRoute(), ARGS + ["--runs-dir", str(runs2), "--methods", "fp32,minmax,entropy"]) == 0
    named = {(r.method, r.batch) for r in read_rows(runs2) if r.status == "ok"}
    assert {("entropy", 1), ("entropy", 4)} <= named
    assert all("latency at batch" not in r.notes for r in read_rows(runs2))


class StoppingRoute(NumpyRoute):
    """Stops (as Ctrl-C or a lease ending would) when it starts building `stop_at`; counts builds and scoring calls."""

    def __init__(self, stop_at=None, **kw):
        super().__init__(**kw)
        self.stop_at, self.built, self.scored = stop_at, [], []

    def build(self, ctx, method, precision, device):
        if method == self.stop_at:
            raise KeyboardInterrupt
        self.built.append(method)
        b = super().build(ctx, method, precision, device)
        inner = b.predict

        def predict(x, m=method):
            if len(x) > 4:  # scoring feeds batches of 64; timing feeds the latency batches (1, 4)
                self.scored.append(m)
            return inner(x)

        b.predict = predict
        return b


def _stopped_run(cache, runs, methods="fp32,minmax,entropy,percentile"):
    """A route stopped while building its third variant (percentile): two variants scored, none timed yet."""
    from evaluation.launch.routes import mark_unfinished
    from utils.plan import Plan

    args = ARGS + ["--runs-dir", str(runs), "--methods", methods]
    with pytest.raises(KeyboardInterrupt):
        kit.run(StoppingRoute(stop_at="entropy"), args)
    return args


def test_a_stopped_route_keeps_the_rows_of_every_variant_it_scored(cache):
    """Each variant's accuracy and fidelity are written as soon as it is scored (latency pending): a route stopped
    while building its third variant has the rows of the two it scored, marked not timed, and no item records."""
    from utils.plan import read_item_records

    runs = cache / "runs"
    _stopped_run(cache, runs)
    rows = {(r.method, r.batch): r for r in read_rows(runs)}
    assert set(rows) == {("fp32", 1), ("fp32", 4), ("minmax", 1), ("minmax", 4)}
    for r in rows.values():
        assert r.status == "ok" and r.pending == "timing" and not r.complete
        assert r.value is not None and r.latency_p50_ms is None
    assert rows[("minmax", 1)].agreement is not None and rows[("minmax", 1)].fidelity_vs == "onnxruntime/fp32"
    assert not read_item_records(runs)  # nothing finished: the launcher marks all four items unfinished


def test_resume_times_what_was_scored_and_runs_only_the_rest(cache):
    """--resume after the stop: the two scored variants are built and timed but not scored again (their scores come
    from the stopped run's rows), the other two run fully; a second --resume has nothing left to run."""
    import dataclasses

    from evaluation.launch.routes import Estimates, mark_unfinished, narrow
    from quantization.kit.config import plan_from_args
    from utils.plan import read_item_records

    runs = cache / "runs"
    args = _stopped_run(cache, runs)
    first = {r.key: r for r in read_rows(runs)}
    route = StoppingRoute()
    plan = plan_from_args("onnxruntime", kit.parser_for(route).parse_args(args))
    plan.run_id = "stop-run"
    mark_unfinished(plan, plan.items, "route process killed by SIGINT", run_id="stop-run")
    assert {a.status for a in read_attempts(runs).values()} == {"failed"}  # beside the scored rows, not over them
    assert {r.key for r in read_rows(runs) if r.status == "ok"} == set(first)

    resumed = narrow(plan, resume=True, budget=None, fixed_s=0.0, device_missing=None, est=Estimates({}))
    assert [(it.method, bool(it.scores_from)) for it in resumed.items] == [
        ("fp32", True), ("minmax", True), ("entropy", False), ("percentile", False)]
    resumed.run_id = "resume-run"
    kit.execute(route, resumed, resumed.items, None)
    assert route.built == ["fp32", "minmax", "entropy", "percentile"]
    assert "fp32" not in route.scored and "minmax" not in route.scored and {"entropy", "percentile"} <= set(route.scored)
    rows = {(r.method, r.batch): r for r in read_rows(runs)}
    assert all(r.complete and r.latency_p50_ms is not None for r in rows.values())
    for k, r in first.items():  # the reused scores are the stopped run's, said in the row
        now = next(x for x in rows.values() if x.key == k)
        assert (now.value, now.agreement, now.extra["correct_bits"]) == (r.value, r.agreement, r.extra["correct_bits"])
        assert "scores_from_run" in now.extra
    assert "scores_from_run" not in rows[("entropy", 1)].extra
    assert not read_attempts(runs)  # the finished rows cleared the failed attempts
    assert {rec["status"] for rec in read_item_records(runs).values()} == {"ok"}

    again = narrow(plan, resume=True, budget=None, fixed_s=0.0, device_missing=None, est=Estimates({}))
    assert again.items == [] and len(again.left_out) == 4 and all("resume: done" in x["why"] for x in again.left_out)


def test_the_deadline_leaves_out_what_does_not_fit_without_failed_rows(cache):
    """A plan with a deadline: an item whose estimate does not fit is left out (a record saying why, no rows)."""
    import dataclasses
    import time as _time

    from quantization.kit.config import plan_from_args
    from utils.plan import read_item_records

    runs = cache / "runs"
    route = NumpyRoute()
    plan = plan_from_args("onnxruntime", kit.parser_for(route).parse_args(ARGS + ["--runs-dir", str(runs),
                                                                                 "--methods", "fp32,minmax"]))
    plan.items = [dataclasses.replace(plan.items[0], est_build_s=1.0, est_time_s=1.0),
                  dataclasses.replace(plan.items[1], est_build_s=3600.0, est_time_s=1.0)]
    plan.deadline = _time.time() + 600
    kit.execute(route, plan, plan.items, None)
    assert {r.method for r in read_rows(runs)} == {"fp32"}
    recs = read_item_records(runs)
    left = next(r for r in recs.values() if r["item"]["method"] == "minmax")
    assert left["status"] == "left-out" and left["reason"].startswith("budget:") and left["rows"] == []
