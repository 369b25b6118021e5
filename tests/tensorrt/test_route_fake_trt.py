"""The whole TensorRT route, driven through the kit (`route.main(argv)`), against the strict fake TensorRT
(tests/tensorrt/fake_trt.py, 10.x and 11.x) and its fake device memory: no TensorRT, no GPU.

What is checked is what the route asks TensorRT for and what it does with the answers: flags and
optimization profiles per variant (the fake's BUILDS record), calibration (fed batches, calibration cache
reuse and invalidation, a calibration that came up short), engine-cache reuse / --rebuild / another
TensorRT version, the ModelOpt Q/DQ index, GPU-event vs end-to-end timing through the harness, and the
rows the kit writes. Real TensorRT behaviour is covered only by test_tensorrt_gpu.py on a GPU machine.
"""
import json
import sys
import types

import numpy as np
import pytest

from quantization.kit.tasks import task_for
from quantization.tensorrt import gpu, route, trt_backend
from quantization.tensorrt.cache import DeviceInfo
from quantization.tensorrt.calib import CalibrationStream
from tests.tensorrt import fake_trt
from tests.tensorrt.fake_trt import BUILDS, FakeTimer, make_fake_trt, write_onnx
from utils import artifacts
from models.catalog import MODEL_DECLS
from utils.specs import ModelSource

V10, V10_OTHER, V11 = "10.16.1.11", "10.16.2.5", "11.1.0"
SEQ, VOCAB = 64, fake_trt.VOCAB
RES = MODEL_DECLS["resnet50"].embedded["resolution"]  # accuracy resolution of the embedded ResNet50 (16)
LAT_RES = 32  # the manifest's latency_resolution below
GPU = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0")
TIMER_CALLS: list[tuple[int, int]] = []  # (repeat, lead) of every GPU-event sample, across engines


class RecordingTimer(FakeTimer):
    """fake_trt.FakeTimer (1.5 ms per sample), recording every sample in TIMER_CALLS."""

    def time(self, enqueue, repeat=1, lead=1):
        TIMER_CALLS.append((repeat, lead))
        return super().time(enqueue, repeat=repeat, lead=lead)


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def env(tmp_path, monkeypatch):
    fake_trt.reset()
    TIMER_CALLS.clear()
    monkeypatch.setattr("utils.specs.CACHE_DIR", tmp_path / "cache")
    # the EngineRunner's buffers/stream/timer and the calibrator's buffer (trt_backend), the calibration
    # stream the route opens itself (gpu.Stream), the device record and the CUDA check
    fake_trt.patch_device(monkeypatch, trt_backend, gpu)
    monkeypatch.setattr(trt_backend, "EventTimer", RecordingTimer)
    monkeypatch.setattr(gpu, "device_info", lambda index=0: GPU)
    monkeypatch.setattr(gpu, "cuda_problem", lambda: None)

    src = ModelSource("resnet50")
    src.cache_dir.mkdir(parents=True)
    write_onnx(src.cache_dir / "model.onnx", "cls")
    # paths relative to the model's cache folder, as models.prepare writes them
    src.manifest_path.write_text(json.dumps({
        "onnx": "model.onnx", "onnx_sha": "resnet-sha", "resolution": RES, "num_classes": 10,
        "latency_resolution": LAT_RES, "ops_per_item": 4.1e9, "dataset": "sklearn-digits",
        "files": {"onnx": artifacts.fingerprint(src.cache_dir / "model.onnx")}}))

    g = ModelSource("gpt2")
    g.cache_dir.mkdir(parents=True)
    write_onnx(g.cache_dir / "model.onnx", "lm")
    rng = np.random.default_rng(0)
    np.save(g.cache_dir / "train.npy", rng.integers(0, VOCAB, SEQ * 40, dtype=np.int64))
    np.save(g.cache_dir / "val.npy", rng.integers(0, VOCAB, 200, dtype=np.int64))
    g.manifest_path.write_text(json.dumps({
        "onnx": "model.onnx", "onnx_sha": "gpt2-sha", "seq_len": SEQ, "vocab_size": VOCAB,
        "train_ids": "train.npy", "val_ids": "val.npy", "ops_per_item": 1e6, "dataset": "pydoc-topics",
        "files": {"onnx": artifacts.fingerprint(g.cache_dir / "model.onnx")}}))
    return types.SimpleNamespace(tmp=tmp_path, resnet=src, gpt2=g, monkeypatch=monkeypatch, n_runs=0, last_runs=None)


def run(env, version, *extra, model="resnet50,gpt2", batches="1,2", min_iters=3, calib_samples=20, tweak=None):
    """One `python -m quantization.tensorrt` run with a fresh fake TensorRT `version`; its rows by
    (model, method, batch). Every run writes into its own runs folder (a failed row never replaces an ok one)."""
    trt = make_fake_trt(version)
    if tweak is not None:
        tweak(trt)
    env.monkeypatch.setitem(sys.modules, "tensorrt", trt)
    env.n_runs += 1
    runs = env.last_runs = env.tmp / f"runs{env.n_runs}"
    args = ["--model", model, "--batches", batches, "--min-time", "1e-6", "--min-iters", str(min_iters),
            "--eval-limit", "20", "--calib-samples", str(calib_samples), "--calib-batch", "8",
            "--runs-dir", str(runs), *extra]
    assert route.main(args) == 0
    files = sorted(runs.glob("*.json"))
    assert all(p.name.endswith("__lim20.json") for p in files), [p.name for p in files]  # --eval-limit rows
    return {(r["model"], r["method"], r["batch"]): r for r in (json.loads(p.read_text()) for p in files)}


def trt_dir(source):
    return source.cache_dir / "tensorrt"


def engines(source, method):
    return sorted(trt_dir(source).glob(f"{method}-*.engine"))


def builds(model=None, flags=None):
    return [b for b in BUILDS if (model is None or b["model"] == model) and (flags is None or b["flags"] == flags)]


def add_qdq_index(source, *, calib_sha="other", src_sha="older-sha", fingerprint=True):
    """What the modelopt-onnx route leaves: index.json with the artifact path relative to the index's folder."""
    d = source.cache_dir / "modelopt-onnx"
    (d / "max-k1").mkdir(parents=True)
    kind = "lm" if source.model == "gpt2" else "cls"
    onnx = write_onnx(d / "max-k1" / "model.qdq.onnx", kind)
    onnx.write_text(json.dumps({**json.loads(onnx.read_text()), "qdq": True}))  # the engine remembers its ONNX
    entry = {"method": "max", "path": "max-k1/model.qdq.onnx", "calib_sha": calib_sha, "calib_samples": 20,
             "src_onnx_sha": src_sha, "high_precision_dtype": "fp32"}
    if fingerprint:
        entry["file"] = artifacts.fingerprint(onnx)
    (d / "index.json").write_text(json.dumps({"entries": {"k1": entry}}))
    return onnx


# ------------------------------------------------------------------ TensorRT 10: the three built variants

def test_trt10_builds_three_variants_and_skips_qdq_without_modelopt(env):
    rows = run(env, V10)
    assert len(rows) == 16
    for model in ("resnet50", "gpt2"):
        for b in (1, 2):
            q = rows[(model, "int8-qdq", b)]
            assert q["status"] == "skipped" and "modelopt-onnx route first" in q["reason"]
            for m in ("fp32", "fp16", "int8-entropy"):
                r = rows[(model, m, b)]
                assert r["status"] == "ok", r["reason"]
                assert r["toolchain"] == "tensorrt" and r["device"] == "cuda" and r["eval_limit"] == 20
                assert r["latency_kind"] == "cuda-events" and r["latency_p50_ms"] == 1.5
                assert r["extra"]["latency"]["n"] >= 3 and set(r["extra"]["latency"]["samples_ms"]) == {1.5}
                assert r["first_call_ms"] == 1.5
                assert r["environment"]["gpu"] == GPU.name and r["environment"]["gpu_compute_capability"] == "9.0"
                assert r["environment"]["tensorrt"] == V10
                assert r["compute_precision"] == {"fp32": "fp32", "fp16": "fp16"}.get(m, "int8")
                assert r["extra"]["profiles"] == 3  # one per timed batch + the accuracy/calibration one
                assert "CUDA events around 8 back-to-back enqueues" in r["notes"]
    # GPT-2: the fake's logits are uniform -> perplexity == vocabulary size; every evaluated token after the
    # first is scored once (--eval-limit 20 caps the ids; the one 20-token window is right-padded to 64)
    g = rows[("gpt2", "fp32", 1)]
    assert g["value"] == pytest.approx(VOCAB, rel=1e-6) and g["extra"]["n_tokens_scored"] == 19
    assert g["throughput_unit"] == "tokens/s" and g["throughput"] == pytest.approx(1 * SEQ / 1.5e-3)
    assert g["extra"]["latency_shape"] == [1, SEQ]
    # ResNet50: the fake always predicts class 3, so top-1 is the share of 3s among the 20 evaluation digits
    src = env.resnet
    data = task_for("resnet50").load_data(src, src.load_manifest(), 20, 20)
    r = rows[("resnet50", "fp32", 2)]
    assert r["extra"]["n_eval"] == 20 and r["throughput_unit"] == "images/s"
    assert r["value"] == pytest.approx(100.0 * np.mean(np.asarray(data.test.y) == 3))
    assert r["throughput"] == pytest.approx(2 / 1.5e-3) and r["extra"]["latency_shape"] == [2, 3, LAT_RES, LAT_RES]
    e = rows[("resnet50", "int8-entropy", 1)]
    assert e["calib_samples"] == 20 and e["calib_method"] == "entropy2" and e["calib_seconds"] is not None
    assert e["extra"]["calib_batch"] == 8 and e["extra"]["calib_padded"] == 4 and e["extra"]["calib_batches"] == 3
    assert e["extra"]["calibration_cache_hit"] is False
    # what TensorRT was asked for: 3 engines per model, TF32 cleared in every one
    assert len(BUILDS) == 6
    assert all(b["cleared"] == ["TF32"] and "TF32" not in b["flags"] and b["network_flags"] == 0 for b in BUILDS)
    for model in ("cls", "lm"):
        assert [b["flags"] for b in builds(model)] == [[], ["FP16"], ["INT8"]]
        assert [b["fed"] for b in builds(model)] == [0, 0, 3]  # ceil(20 / 8) calibration batches, all fed
    assert (trt_dir(env.resnet) / "int8-entropy.calib").read_bytes() == b"FAKE-ENTROPY2-CACHE"
    for method in ("fp32", "fp16", "int8-entropy"):
        assert len(engines(env.resnet, method)) == 1 and len(engines(env.gpt2, method)) == 1
    assert not engines(env.resnet, "int8-qdq")


def test_one_engine_holds_one_profile_per_timed_batch_plus_the_eval_profile(env):
    run(env, V10, batches="1,2")
    (lm32,), (lm8,) = builds("lm", []), builds("lm", ["INT8"])
    assert lm32["profiles"] == [{"input_ids": ((1, SEQ),) * 3}, {"input_ids": ((2, SEQ),) * 3},
                                {"input_ids": ((1, SEQ), (1, SEQ), (2, SEQ))}]
    # the calibration batch (8) must fit the dynamic profile of the calibrated engine
    assert lm8["profiles"][-1] == {"input_ids": ((1, SEQ), (1, SEQ), (8, SEQ))}
    assert lm8["profiles"][:2] == lm32["profiles"][:2]
    for b in builds("cls"):  # latency at the latency resolution, one fixed profile each; accuracy at 16 px
        assert b["profiles"] == [{"input": ((1, 3, LAT_RES, LAT_RES),) * 3}, {"input": ((2, 3, LAT_RES, LAT_RES),) * 3},
                                 {"input": ((1, 3, RES, RES), (32, 3, RES, RES), (32, 3, RES, RES))}]
    meta = json.loads(next(trt_dir(env.gpt2).glob("fp32-*.engine.json")).read_text())
    assert [p["input_ids"] for p in meta["profiles"]] == [[[1, SEQ]] * 3, [[2, SEQ]] * 3,
                                                          [[1, SEQ], [1, SEQ], [2, SEQ]]]


def test_timed_batches_change_the_profiles_and_the_engine_key(env):
    rows = run(env, V10, "--methods", "fp32", model="gpt2", batches="4")
    assert set(rows) == {("gpt2", "fp32", 4)} and rows[("gpt2", "fp32", 4)]["extra"]["profiles"] == 2
    assert BUILDS[-1]["profiles"] == [{"input_ids": ((4, SEQ),) * 3}, {"input_ids": ((1, SEQ), (1, SEQ), (4, SEQ))}]
    run(env, V10, "--methods", "fp32", model="gpt2", batches="1,4")
    assert len(BUILDS) == 2 and len(BUILDS[-1]["profiles"]) == 3  # another profile set: another engine
    assert len(engines(env.gpt2, "fp32")) == 2


def test_harness_drives_the_gpu_event_timer(env):
    rows = run(env, V10, "--methods", "fp32", "--enqueues-per-sample", "5", model="resnet50", batches="1,2",
               min_iters=4)
    ns = [rows[("resnet50", "fp32", b)]["extra"]["latency"]["n"] for b in (1, 2)]
    assert all(n >= 4 for n in ns)
    # per row: the first call, 3 warm-up calls and the samples, each one event pair around 5 enqueues
    assert len(TIMER_CALLS) == sum(n + 4 for n in ns) and set(TIMER_CALLS) == {(5, 1)}
    assert "CUDA events around 5 back-to-back enqueues" in rows[("resnet50", "fp32", 1)]["notes"]


def test_e2e_timing_is_labelled_cuda_e2e(env):
    rows = run(env, V10, "--methods", "fp32,fp16", "--timing", "e2e", model="gpt2")
    for m in ("fp32", "fp16"):
        for b in (1, 2):
            r = rows[("gpt2", m, b)]
            assert r["status"] == "ok", r["reason"]
            assert r["latency_kind"] == "cuda-e2e" and "end-to-end time" in r["notes"]
            assert r["extra"]["latency"]["n"] >= 3 and r["latency_p50_ms"] > 0
            assert r["value"] == pytest.approx(VOCAB, rel=1e-6)
    assert TIMER_CALLS == []  # the CUDA-event timer is not used for end-to-end latency


def test_bad_timing_option_is_a_usage_error(env, capsys):
    env.monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(V10))
    assert route.main(["--model", "gpt2", "--timing", "wall", "--runs-dir", str(env.tmp / "r")]) == 2
    assert "--timing" in capsys.readouterr().err and not BUILDS


# ------------------------------------------------------------------ engine and calibration caches

def test_second_run_reuses_engines_rebuild_rebuilds(env):
    run(env, V10, model="gpt2")
    assert len(BUILDS) == 3
    rows = run(env, V10, model="gpt2")
    assert len(BUILDS) == 3  # all three engines came from the cache
    assert all(rows[("gpt2", m, 1)]["status"] == "ok" for m in ("fp32", "fp16", "int8-entropy"))
    assert rows[("gpt2", "int8-entropy", 1)]["extra"]["calibration_cache_hit"] is False  # from the engine's sidecar
    run(env, V10, "--rebuild", model="gpt2")
    assert len(BUILDS) == 6 and [b["fed"] for b in BUILDS[3:]] == [0, 0, 3]  # recalibrated, not from the cache
    assert len(engines(env.gpt2, "int8-entropy")) == 1  # same key: the engine was overwritten


def test_calibration_cache_reused_then_invalidated_by_a_new_calibration_set(env):
    # (with int8-entropy alone, the kit also builds the FP32 engine in-process: its timing baseline)
    run(env, V10, "--methods", "int8-entropy", model="resnet50")
    assert [b["fed"] for b in builds(flags=["INT8"])] == [3] and len(builds(flags=[])) == 1
    for p in trt_dir(env.resnet).glob("*.engine*"):
        p.unlink()
    rows = run(env, V10, "--methods", "int8-entropy", model="resnet50")
    assert [b["fed"] for b in builds(flags=["INT8"])] == [3, 0]  # engine rebuilt from the calibration cache
    r = rows[("resnet50", "int8-entropy", 1)]
    assert r["status"] == "ok" and r["extra"]["calibration_cache_hit"] is True and r["calib_seconds"] is None
    assert r["speedup_vs"] == "tensorrt/fp32"  # timed against the FP32 engine built in this process
    rows = run(env, V10, "--methods", "int8-entropy", model="resnet50", batches="1", calib_samples=24)
    assert [b["fed"] for b in builds(flags=["INT8"])] == [3, 0, 3]  # other calibration set: new key, calibrated
    assert rows[("resnet50", "int8-entropy", 1)]["calib_samples"] == 24
    header = json.loads((trt_dir(env.resnet) / "int8-entropy.calib.json").read_text())
    assert header["inputs"]["n_samples"] == 24 and header["trt_version"] == V10


def test_engine_from_another_tensorrt_version_fails_that_variant_clearly(env):
    run(env, V10, "--methods", "fp32", model="resnet50")
    rows = run(env, V10_OTHER, "--methods", "fp32,fp16", model="resnet50")
    for b in (1, 2):
        r = rows[("resnet50", "fp32", b)]
        assert r["status"] == "failed" and r["reason"].startswith("SuiteError: cached engine built with TensorRT ")
        assert f"this machine has TensorRT {V10_OTHER}" in r["reason"] and "--rebuild" in r["reason"]
        assert rows[("resnet50", "fp16", b)]["status"] == "ok"  # the other variant is unaffected
    assert [b["flags"] for b in BUILDS] == [[], ["FP16"]]  # the old engine was not rebuilt silently
    rows = run(env, V10_OTHER, "--methods", "fp32", "--rebuild", model="resnet50")
    assert rows[("resnet50", "fp32", 1)]["status"] == "ok" and len(BUILDS) == 3
    meta = json.loads(next(trt_dir(env.resnet).glob("fp32-*.engine.json")).read_text())
    assert meta["trt_version"] == V10_OTHER and meta["gpu_name"] == GPU.name


def test_failed_row_names_the_tensorrt_version_that_built_the_engine(env):
    run(env, V10, "--methods", "fp32", model="resnet50", batches="1")
    r = run(env, V10_OTHER, "--methods", "fp32", model="resnet50", batches="1")[("resnet50", "fp32", 1)]
    assert r["status"] == "failed" and f"built with TensorRT {V10}" in r["reason"]


def test_calibration_cache_from_another_tensorrt_version_fails_that_variant(env):
    run(env, V10, "--methods", "int8-entropy", model="gpt2")  # + its in-process FP32 timing baseline
    for p in trt_dir(env.gpt2).glob("*.engine*"):
        p.unlink()
    rows = run(env, V10_OTHER, "--methods", "fp32,int8-entropy", model="gpt2")
    r = rows[("gpt2", "int8-entropy", 1)]
    assert r["status"] == "failed" and "calibration cache" in r["reason"] and V10 in r["reason"]
    assert "--rebuild" in r["reason"] and rows[("gpt2", "fp32", 1)]["status"] == "ok"
    assert [b["flags"] for b in BUILDS] == [["INT8"], [], []]


# ------------------------------------------------------------------ calibration that came up short

class ShortFeed:
    """What TensorRT does when calibration stops early: it asks for no batch after the first `n`."""

    def __init__(self, cal, n):
        self.cal, self.n, self.asked = cal, n, 0

    def get_batch_size(self):
        return self.cal.get_batch_size()

    def get_batch(self, names):
        self.asked += 1
        return self.cal.get_batch(names) if self.asked <= self.n else None

    def read_calibration_cache(self):
        return self.cal.read_calibration_cache()

    def write_calibration_cache(self, data):
        return self.cal.write_calibration_cache(data)


def stop_calibration_after(n):
    def tweak(trt):
        calibrate = trt.Builder._calibrate
        trt.Builder._calibrate = lambda self, network, config, cal: calibrate(self, network, config, ShortFeed(cal, n))
    return tweak


def test_calibration_stopped_early_fails_the_entropy_variant_only(env):
    rows = run(env, V10, model="gpt2", tweak=stop_calibration_after(1))
    for b in (1, 2):
        r = rows[("gpt2", "int8-entropy", b)]
        assert r["status"] == "failed"
        assert r["reason"].startswith("CalibrationError: ") and "calibrated on 1 of 3 calibration batches" in r["reason"]
        for m in ("fp32", "fp16"):
            assert rows[("gpt2", m, b)]["status"] == "ok", rows[("gpt2", m, b)]["reason"]
    assert builds("lm", ["INT8"])[0]["fed"] == 1  # TensorRT did build an engine from 1 of 3 batches ...
    assert not engines(env.gpt2, "int8-entropy")  # ... which was neither cached nor measured


class FailingStream(CalibrationStream):
    """Its second calibration batch cannot be produced (e.g. a data loading error)."""

    def __iter__(self):
        for i, b in enumerate(super().__iter__()):
            if i == 1:
                raise OSError("calibration batch 2 unreadable")
            yield b


def test_exception_in_get_batch_fails_the_entropy_variant_with_its_cause(env, capsys):
    env.monkeypatch.setattr(route, "CalibrationStream", FailingStream)
    rows = run(env, V10, model="resnet50", batches="1")
    r = rows[("resnet50", "int8-entropy", 1)]
    assert r["status"] == "failed"
    assert r["reason"].startswith("CalibrationError: the INT8 calibrator raised OSError: calibration batch 2 unreadable")
    assert rows[("resnet50", "fp32", 1)]["status"] == "ok" and rows[("resnet50", "fp16", 1)]["status"] == "ok"
    assert "Exception caught in get_batch()" in capsys.readouterr().err  # TensorRT only printed it
    assert builds("cls", ["INT8"])[0]["fed"] == 1 and not engines(env.resnet, "int8-entropy")


def test_short_calibration_leaves_no_calibration_cache_for_the_next_run(env):
    run(env, V10, "--methods", "int8-entropy", model="gpt2", tweak=stop_calibration_after(1))
    rows = run(env, V10, "--methods", "int8-entropy", model="gpt2")
    r = rows[("gpt2", "int8-entropy", 1)]
    assert r["status"] == "ok" and builds(flags=["INT8"])[-1]["fed"] == 3  # calibrated on the whole set this time
    assert r["extra"]["calibration_cache_hit"] is False


def test_rejected_calibration_profile_fails_the_entropy_variant(env):
    def reject(trt):
        trt.reject_calibration_profile = True

    rows = run(env, V10, "--methods", "fp32,int8-entropy", model="gpt2", batches="1", tweak=reject)
    r = rows[("gpt2", "int8-entropy", 1)]
    assert r["status"] == "failed" and "set_calibration_profile returned False" in r["reason"]
    assert rows[("gpt2", "fp32", 1)]["status"] == "ok" and [b["flags"] for b in BUILDS] == [[]]


# ------------------------------------------------------------------ explicit Q/DQ, TensorRT 11

def test_trt11_skips_fp16_and_entropy_builds_fp32_and_qdq(env):
    qdq = add_qdq_index(env.gpt2)
    rows = run(env, V11, model="gpt2")
    for b in (1, 2):
        f16 = rows[("gpt2", "fp16", b)]
        assert f16["status"] == "skipped" and "FP16" in f16["reason"]
        ent = rows[("gpt2", "int8-entropy", b)]
        assert ent["status"] == "skipped" and "removed implicit INT8 calibration" in ent["reason"]
        f32 = rows[("gpt2", "fp32", b)]
        assert f32["status"] == "ok" and f32["environment"]["tensorrt"] == V11
        q = rows[("gpt2", "int8-qdq", b)]
        assert q["status"] == "ok" and q["calib_method"] == "modelopt-max" and q["calib_samples"] == 20
        assert "another calibration set" in q["notes"] and "another FP32 ONNX" in q["notes"]
        assert q["extra"]["qdq_high_precision_dtype"] == "fp32" and q["extra"]["qdq_onnx"] == qdq.name
        assert q["latency_kind"] == "cuda-events" and q["value"] == pytest.approx(VOCAB, rel=1e-6)
    # strongly typed by default in 11: no precision flag, no network flag; TF32 still cleared
    assert len(BUILDS) == 2
    assert all(not b["flags"] and b["cleared"] == ["TF32"] and b["network_flags"] == 0 and b["fed"] == 0
               for b in BUILDS)
    assert all(len(b["profiles"]) == 3 for b in BUILDS)
    (engine,) = engines(env.gpt2, "int8-qdq")
    assert json.loads(engine.read_bytes())["spec"].get("qdq") is True  # built from the index's Q/DQ ONNX
    assert "qdq" not in json.loads(engines(env.gpt2, "fp32")[0].read_bytes())["spec"]


def test_qdq_entry_matching_this_run_has_no_notes(env):
    first = run(env, V11, "--methods", "fp32", model="resnet50", batches="1")[("resnet50", "fp32", 1)]
    calib_sha = first["environment"]["calib_sha"]
    src_sha = json.loads(env.resnet.manifest_path.read_text())["files"]["onnx"]["sha256"]
    add_qdq_index(env.resnet, calib_sha=calib_sha, src_sha=src_sha)
    q = run(env, V11, "--methods", "int8-qdq", model="resnet50", batches="1")[("resnet50", "int8-qdq", 1)]
    assert q["status"] == "ok" and "another" not in q["notes"] and q["extra"]["qdq_calib_sha"] == calib_sha


def test_qdq_file_changed_since_modelopt_wrote_it_is_never_used(env):
    qdq = add_qdq_index(env.resnet)
    qdq.write_text(qdq.read_text() + " ")  # size differs from the recorded fingerprint
    rows = run(env, V11, "--methods", "int8-qdq", model="resnet50", batches="1")
    r = rows[("resnet50", "int8-qdq", 1)]
    assert r["status"] == "skipped" and "changed since it was made" in r["reason"]
    assert "modelopt-onnx route first" in r["reason"] and not BUILDS


def test_qdq_index_in_the_old_format_is_not_read(env):
    d = env.resnet.cache_dir / "modelopt-onnx"
    d.mkdir()
    write_onnx(d / "max.onnx", "cls")
    (d / "index.json").write_text(json.dumps({"max": {"onnx": str(d / "max.onnx"), "calib_sha": "x"}}))
    rows = run(env, V10, "--methods", "int8-qdq", model="resnet50", batches="1")
    r = rows[("resnet50", "int8-qdq", 1)]
    assert r["status"] == "skipped" and "older format" in r["reason"] and not BUILDS


def test_trt10_qdq_is_strongly_typed(env):
    add_qdq_index(env.resnet, fingerprint=False)  # an entry without a fingerprint is used as it is
    rows = run(env, V10, "--methods", "int8-qdq", model="resnet50")
    for b in (1, 2):
        assert rows[("resnet50", "int8-qdq", b)]["status"] == "ok", rows[("resnet50", "int8-qdq", b)]["reason"]
    (b,) = [x for x in BUILDS if x["network_flags"]]  # the other build is the FP32 engine it is timed against
    assert len(BUILDS) == 2
    assert b["network_flags"] == 1 << 1  # 1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert b["flags"] == [] and b["cleared"] == ["TF32"] and b["fed"] == 0 and len(b["profiles"]) == 3


def test_coverage_is_read_from_the_engine_inspector(env):
    """Engines are built with detailed profiling verbosity; the inspector's per-layer input formats, mapped back to
    the FP32 ONNX's nodes (its `[ONNX Layer: ...]` metadata), give each quantized row's coverage: here a 60/40 MAC
    split whose classifier the (fake) engine keeps FP32, which the row reports against the default scope."""
    src = env.resnet
    onnx_file = src.cache_dir / "model.onnx"
    onnx_file.write_text(json.dumps({**json.loads(onnx_file.read_text()), "layers": [
        {"name": "/layer1/layer1.0/conv1/Conv"}, {"name": "/fc/Gemm", "keep": True}]}))
    fp = artifacts.fingerprint(onnx_file)
    nodes = {"/layer1/layer1.0/conv1/Conv": {"layer": "layer1.0.conv1", "op": "Conv", "macs": 60.0, "weighted": True},
             "/fc/Gemm": {"layer": "fc", "op": "Gemm", "macs": 40.0, "weighted": True}}
    table = {"version": 1, "onnx_sha": fp["sha256"][:16], "items": 1, "unit": "image", "nodes": nodes, "outputs": {},
             "layers": {"layer1.0.conv1": 60.0, "fc": 40.0}, "total": 100.0}
    manifest = json.loads(src.manifest_path.read_text())
    manifest.update(files={"onnx": fp}, layer_macs=table)
    src.manifest_path.write_text(json.dumps(manifest))
    rows = run(env, V10, model="resnet50", batches="1")
    for method in ("int8-entropy", "fp16"):
        r = rows[("resnet50", method, 1)]
        assert r["coverage_pct"] == 60.0, (method, r["notes"])
        c = r["extra"]["coverage"]
        assert c["missed"] == ["fc"] and c["extra"] == [] and "engine inspector" in c["source"]
        assert "differs from the 'default' quantization scope (100.0 %)" in r["notes"]
    assert rows[("resnet50", "fp32", 1)]["coverage_pct"] is None
