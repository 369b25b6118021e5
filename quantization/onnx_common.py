"""What the two ONNX routes (onnxruntime, modelopt-onnx) share: sessions, calibration feed, scoring, rows.

Imports only numpy/onnx/onnxruntime (both environments have them) plus the shared layer.
Every ONNX file a route reads goes through `check_onnx`, which turns a corrupt or truncated
file into a one-line SuiteError. Artifacts are cached under `<model cache>/<toolchain>/`
with names keyed by everything that made them (`artifact_path`), next to a small JSON of
how they were made (calibration time, options), so a rerun reuses them.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from evaluation.harness import Latency, measure
from evaluation.metrics import classification_score, strided_perplexity
from quantization.common import ImageData, RouteConfig, RowWriter, data_hashes, file_size_mb
from utils.atomic import atomic_write_json, config_key, sha256_file
from utils.data import latency_input
from utils.errors import SuiteError
from utils.text import lm_latency_input

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
# ORT kernels that really compute in integer arithmetic (what a fused Q/DQ pattern becomes on CPU)
INT_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "QAttention", "MatMulNBits", "QLinearAdd", "QLinearGlobalAveragePool")
EVAL_BATCH = 64  # accuracy batch size (does not change any number, only speed)
CALIB_BATCH = 16  # calibration feed batch size (ResNet50)


# ------------------------------------------------------------------------------ files

def check_onnx(path: Path | str, *, full_check: bool = True):
    """Load and check an ONNX file; any failure -> one-line SuiteError. Returns the ModelProto."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path} does not exist (prepare the model first: python -m models.prepare)")
    try:
        model = onnx.load(str(path))
        if full_check:
            onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError, ...
        msg = " ".join(str(exc).split())[:160] or exc.__class__.__name__
        raise SuiteError(f"{path} is not a valid ONNX model ({exc.__class__.__name__}: {msg})") from None
    if not model.graph.node:
        raise SuiteError(f"{path} is not a valid ONNX model (empty graph)")
    return model


def artifact_path(cache_root: Path, stem: str, key_obj, suffix: str = ".onnx") -> Path:
    """`<cache_root>/<stem>-<hash of key_obj><suffix>`: the name changes whenever an input changes."""
    return Path(cache_root) / f"{stem}-{config_key(key_obj, 12)}{suffix}"


def read_meta(onnx_path: Path) -> dict | None:
    meta = onnx_path.with_suffix(".json")
    if not (onnx_path.is_file() and meta.is_file()):
        return None
    try:
        return json.loads(meta.read_text())
    except ValueError:
        return None


def write_meta(onnx_path: Path, meta: dict) -> None:
    atomic_write_json(onnx_path.with_suffix(".json"), meta)


def cached_artifact(out: Path, make: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
    """Reuse `out` when it and its meta JSON exist and load; else make it in a temp dir and move it in.

    `make(tmp_out)` writes the ONNX at tmp_out and returns its meta dict. Returns (path, meta, reused).
    """
    meta = read_meta(out)
    if meta is not None:
        try:
            check_onnx(out, full_check=False)
            return out, meta, True
        except SuiteError:
            log.warning("cached %s is unreadable; making it again", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".make-") as tmp:
        tmp_out = Path(tmp) / out.name
        meta = make(tmp_out)
        # a model over 2 GB would carry external data; ours are single files
        os.replace(tmp_out, out)
    write_meta(out, meta)
    return out, meta, False


def copy_for_tool(src: Path, workdir: Path, name: str = "input.onnx") -> Path:
    """A private copy of `src` (tools such as ModelOpt rewrite their input in place)."""
    dst = Path(workdir) / name
    shutil.copyfile(src, dst)
    return dst


# ------------------------------------------------------------------------------ sessions

def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def device_providers(device: str) -> list[str]:
    """Provider list asked for on `device` ("cpu" or "cuda"); CPU is always the last fallback."""
    if device == "cpu":
        return [CPU_EP]
    avail = available_providers()
    return [p for p in (TRT_EP, CUDA_EP) if p in avail] + [CPU_EP]


def session_options(threads: int, *, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only (a missing CUDA EP is reported through the provider record)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def make_session(path: Path | str, threads: int, providers: list[str] | None = None, *, profile_prefix: str | None = None):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads, profile_prefix=profile_prefix),
                                    providers=providers or [CPU_EP])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... types
        msg = " ".join(str(exc).split())[:200]
        raise SuiteError(f"ONNX Runtime cannot load {path} ({exc.__class__.__name__}: {msg})") from None


@dataclass(frozen=True)
class ProviderRecord:
    requested: tuple[str, ...]
    session: tuple[str, ...]  # session.get_providers(): what ORT registered (it falls back silently)
    nodes_by_provider: dict[str, int]  # kernels that really ran, from the profile
    ops: dict[str, int]  # op types of the kernels that ran (after ORT's graph fusions)

    @property
    def main_provider(self) -> str:
        return max(self.nodes_by_provider, key=self.nodes_by_provider.get) if self.nodes_by_provider else self.session[0]

    @property
    def int_kernels(self) -> int:
        return sum(n for op, n in self.ops.items() if op in INT_KERNELS)

    @property
    def dq_kernels(self) -> int:
        return self.ops.get("DequantizeLinear", 0)

    def compute_precision(self, fallback: str = "fp32") -> str:
        """int8 when 8-bit integer kernels ran, int4 when only MatMulNBits (4-bit weights) did, else the float
        type (simulated quantization: Q/DQ around float kernels)."""
        nbits = self.ops.get("MatMulNBits", 0)
        if self.int_kernels - nbits > 0:
            return "int8"
        return "int4" if nbits else fallback

    def to_dict(self) -> dict:
        return {"requested": list(self.requested), "session": list(self.session),
                "nodes_by_provider": self.nodes_by_provider, "ops": self.ops}

    def note(self) -> str:
        prov = ", ".join(f"{p.replace('ExecutionProvider', '')} {n}" for p, n in self.nodes_by_provider.items())
        return (f"kernels run per provider: {prov or '?'}; integer kernels {self.int_kernels}, "
                f"standalone DequantizeLinear {self.dq_kernels}")


def provider_record(path: Path | str, threads: int, providers: list[str], feed: dict) -> ProviderRecord:
    """Which provider ran which kernels: one profiled run, parsed from ORT's profile JSON."""
    with tempfile.TemporaryDirectory(prefix="ort-prof-") as tmp:
        sess = make_session(path, threads, providers, profile_prefix=str(Path(tmp) / "p"))
        sess.run(None, feed)
        prof = sess.end_profiling()
        session_providers = tuple(sess.get_providers())
        del sess
        try:
            events = json.loads(Path(prof).read_text())
        except (OSError, ValueError):
            events = []
    by_prov: dict[str, set] = {}
    ops: dict[str, str] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "provider" not in args:
            continue
        name = ev.get("name", "").rsplit("_kernel_time", 1)[0]
        by_prov.setdefault(args["provider"], set()).add(name)
        ops[name] = args.get("op_name", "?")
    return ProviderRecord(tuple(providers), session_providers, {p: len(s) for p, s in by_prov.items()},
                          dict(Counter(ops.values()).most_common()))


# ------------------------------------------------------------------------------ calibration

def calibration_batches(data, batch_size: int | None = None) -> list[np.ndarray]:
    """The configured calibration samples, in order, cut into batches (every sample exactly once)."""
    arr = data.calib.x if isinstance(data, ImageData) else data.calib
    bs = batch_size or (CALIB_BATCH if isinstance(data, ImageData) else 8)
    return [arr[i:i + bs] for i in range(0, arr.shape[0], bs)]


def _reader_base():
    try:
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:  # pragma: no cover - every ORT wheel has it
        return object
    return CalibrationDataReader


class ArrayCalibrationReader(_reader_base()):
    """ORT CalibrationDataReader over a list of arrays; counts what it actually handed out.

    `passes` holds the samples handed out in each pass over the data (a rewind starts a new
    pass), so a test can check that every pass feeds exactly the configured samples.
    """

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name = input_name
        self.batches = list(batches)
        self.passes: list[int] = [0]
        self.batches_fed = 0
        self._it: Iterator[np.ndarray] = iter(self.batches)

    @property
    def samples_fed(self) -> int:
        return sum(self.passes)

    @property
    def n_samples(self) -> int:
        return sum(int(b.shape[0]) for b in self.batches)

    def get_next(self) -> dict | None:
        b = next(self._it, None)
        if b is None:
            return None
        self.passes[-1] += int(b.shape[0])
        self.batches_fed += 1
        return {self.input_name: b}

    def get_first(self) -> dict:
        """The first batch without advancing or counting (ModelOpt probes the model with it)."""
        return {self.input_name: self.batches[0]}

    def rewind(self) -> None:
        self._it = iter(self.batches)
        if self.passes[-1]:
            self.passes.append(0)

    def __len__(self) -> int:
        return len(self.batches)


# ------------------------------------------------------------------------------ scoring / timing

def input_name(sess, preferred: str) -> str:
    names = [i.name for i in sess.get_inputs()]
    if preferred in names:
        return preferred
    if len(names) == 1:
        return names[0]
    raise SuiteError(f"ONNX model inputs {names}: expected {preferred!r}")


def output_name(sess, preferred: str = "logits") -> str:
    names = [o.name for o in sess.get_outputs()]
    return preferred if preferred in names else names[0]


def score(sess, model: str, data):
    """Accuracy of the session on the shared evaluation samples: ClassificationScore or PerplexityScore."""
    out = output_name(sess)
    if model == "resnet50":
        name = input_name(sess, "input")
        batches = ((sess.run([out], {name: x})[0], y) for x, y in data.test.batches(EVAL_BATCH))
        return classification_score(batches)
    name = input_name(sess, "input_ids")
    return strided_perplexity(lambda ids: sess.run([out], {name: ids})[0], data.val_ids,
                              max_length=data.seq_len, stride=data.stride, progress=True)


def latency_feed(sess, model: str, batch: int, manifest: dict, data) -> tuple[dict, int, str]:
    """(feed, items per call, unit): ResNet50 at 3x224x224 images; GPT-2 `batch` x seq_len tokens."""
    if model == "resnet50":
        res = int(manifest.get("latency_resolution", 224))
        return {input_name(sess, "input"): latency_input(batch, res)}, batch, "images/s"
    ids = lm_latency_input(batch, data.seq_len, data.vocab_size)
    return {input_name(sess, "input_ids"): ids}, batch * data.seq_len, "tokens/s"


def time_session(sess, feed: dict, items: int, cfg: RouteConfig) -> Latency:
    out = output_name(sess)
    return measure(lambda: sess.run([out], feed), items_per_call=items, kind="host-wall",
                   min_time_s=cfg.min_time, min_iters=cfg.min_iters)


# ------------------------------------------------------------------------------ one variant -> rows

@dataclass
class Artifact:
    """An ONNX file to evaluate plus how it was made."""

    path: Path
    method: str
    precision: str
    calib_method: str | None = None
    calib_samples: int | None = None
    calib_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    float_precision: str = "fp32"  # what its convs/matmuls compute in when no integer kernel runs


def cuda_driver_missing() -> str | None:
    """Why ORT's CUDA/TensorRT EPs cannot run here, or None when they may (the EP itself confirms later)."""
    avail = available_providers()
    if CUDA_EP not in avail and TRT_EP not in avail:
        return "this ONNX Runtime build has no CUDA/TensorRT execution provider (CPU onnxruntime package)"
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return (f"ONNX Runtime lists {', '.join(p for p in (TRT_EP, CUDA_EP) if p in avail)} but no CUDA driver "
                "(libcuda.so.1) is present: ORT would silently run every kernel on CPUExecutionProvider")
    return None


def devices_to_run(requested: str) -> list[str]:
    """'auto' -> cpu, plus cuda when this ORT build has the CUDA/TensorRT EP; or an explicit list."""
    if requested == "auto":
        avail = available_providers()
        return ["cpu"] + (["cuda"] if CUDA_EP in avail or TRT_EP in avail else [])
    devs = [d.strip() for d in requested.split(",") if d.strip()]
    bad = [d for d in devs if d not in ("cpu", "cuda")]
    if bad or not devs:
        raise SuiteError(f"unknown device {', '.join(bad) or requested!r}; valid: auto, cpu, cuda")
    return devs


def evaluate_rows(art: Artifact, *, cfg: RouteConfig, model: str, manifest: dict, data, writer: RowWriter,
                  device: str, slow_reason: Callable[[ProviderRecord], str | None] | None = None) -> list:
    """Score `art` once and time every configured batch on `device`; one row per batch.

    On `cuda`, a session whose kernels all landed on the CPU EP (ORT's silent fallback) gives
    `skipped` rows saying so, never CPU numbers labelled cuda.
    """
    providers = device_providers(device)
    sess = make_session(art.path, cfg.threads, providers)
    probe_feed, _, _ = latency_feed(sess, model, 1, manifest, data)
    rec = provider_record(art.path, cfg.threads, providers, probe_feed)
    if device != "cpu" and rec.main_provider == CPU_EP:
        reason = (f"{'/'.join(p for p in providers if p != CPU_EP) or 'CUDA EP'} requested but ONNX Runtime ran "
                  f"every kernel on CPUExecutionProvider (no usable CUDA device/driver; session providers "
                  f"{list(rec.session)})")
        return writer.status("skipped", reason, [(art.method, art.precision)])
    t0 = time.perf_counter()
    acc = score(sess, model, data)
    eval_s = time.perf_counter() - t0
    value = acc.top1 if model == "resnet50" else acc.ppl
    top5 = acc.top5 if model == "resnet50" else None
    notes = [f"providers {','.join(rec.session)}", rec.note()] + list(art.notes)
    if slow_reason is not None:
        why = slow_reason(rec)
        if why:
            notes.append(why)
    size = file_size_mb(art.path)
    compute = rec.compute_precision(art.float_precision) if art.precision != "fp32" else "fp32"
    rows = []
    for b in cfg.batches[model]:
        feed, items, unit = latency_feed(sess, model, b, manifest, data)
        lat = time_session(sess, feed, items, cfg)
        extra = dict(acc.extra())
        extra.update(art.extra)
        extra.update(providers=rec.to_dict(), latency=lat.summary(), eval_seconds=round(eval_s, 3),
                     onnx=str(art.path), onnx_sha=sha256_file(art.path)[:16])
        row = writer.row(art.method, art.precision, b, value=value, top5=top5, size_mb=size,
                         calib_samples=art.calib_samples, calib_seconds=art.calib_seconds,
                         calib_method=art.calib_method, compute_precision=compute, throughput_unit=unit,
                         notes="; ".join(notes), extra=extra, **lat.row_fields())
        rows.append(writer.write(row))
    return rows


def run_variants(cfg: RouteConfig, model: str, manifest: dict, data, *, make_artifact: Callable[[str, str], Artifact],
                 devices: list[str], slow_reason=None, gpu: str | None = None) -> list:
    """For each selected (method, precision): make the artifact, then rows per device; failures -> failed rows."""
    from tqdm import tqdm

    rows = []
    writers = {d: RowWriter(cfg, model, manifest, device=d, data=data, gpu=gpu) for d in devices}
    if "cuda" in devices:
        why = cuda_driver_missing()
        if why:  # one set of skipped rows instead of sessions that fall back to CPU
            rows += writers["cuda"].status("skipped", why, cfg.variants(model))
            devices = [d for d in devices if d != "cuda"]
    for method, precision in tqdm(cfg.variants(model), desc=f"{cfg.toolchain}/{model}", unit="variant"):
        try:
            art = make_artifact(method, precision)
        except SkipVariant as exc:
            for d in devices:
                rows += writers[d].status("skipped", str(exc), [(method, precision)])
            continue
        except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the route
            log.debug("variant %s failed", method, exc_info=True)
            for d in devices:
                rows += writers[d].status("failed", one_line(exc), [(method, precision)])
            continue
        for d in devices:
            try:
                rows += evaluate_rows(art, cfg=cfg, model=model, manifest=manifest, data=data, writer=writers[d],
                                      device=d, slow_reason=slow_reason)
            except Exception as exc:  # noqa: BLE001
                log.debug("evaluating %s on %s failed", method, d, exc_info=True)
                rows += writers[d].status("failed", one_line(exc), [(method, precision)])
    return rows


class SkipVariant(Exception):
    """This variant cannot run here (hardware or library support missing): `skipped` rows with this reason."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    msg = f"{exc.__class__.__name__}: {' '.join(str(exc).split()) or '(no message)'}"
    if len(msg) > limit:  # keep the head (what failed) and the tail (why), e.g. of ORT's long C++ messages
        msg = msg[:limit // 2 - 2] + " ... " + msg[-(limit - limit // 2 - 3):]
    return msg


def source_onnx(manifest: dict, model: str) -> tuple[Path, str]:
    """The manifest's FP32 ONNX, checked, and its sha256 (recomputed: the cache key must match the bytes)."""
    if "onnx" not in manifest:
        raise SuiteError(f"the {model} manifest has no 'onnx' entry (prepare the model again)")
    path = Path(manifest["onnx"])
    if not path.is_absolute() and not path.exists():
        from utils.paths import REPO_ROOT

        path = REPO_ROOT / path
    check_onnx(path)
    return path, sha256_file(path)


def calib_key(data) -> dict:
    h = data_hashes(data)
    return {"calib_sha": h["calib_sha"], "n_calib": h["n_calib"]}
