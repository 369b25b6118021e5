"""The kit's ONNX part, for routes whose artifacts are ONNX files run by ONNX Runtime (onnxruntime, modelopt-onnx).

Sessions, provider records (which EP really ran which kernels), the calibration feed, verified
cached artifacts, and `OnnxRoute`: a Route whose `build` makes (or reuses) an ONNX artifact and
opens it in an ONNX Runtime session on the requested device. onnx/onnxruntime are imported lazily.
Every ONNX file a route reads goes through `check_onnx`, which turns a corrupt or truncated
file into a one-line SuiteError. Artifacts are cached under `<model cache>/<toolchain>/`
with names keyed by everything that made them (`artifact_path`), next to a small JSON of
how they were made (calibration time, options), so a rerun reuses them.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from quantization.kit import Built, Calibration, ModelContext, Route, SkipVariant, failure_reason
from quantization.kit import CALIB_BATCH, calibration_batches  # noqa: F401 (public here too, for ONNX routes)
from quantization.kit import cache
from quantization.kit.cache import artifact_path, read_meta, write_meta  # noqa: F401 (public here too)
from quantization.kit.tasks import file_size_mb
from utils import artifacts
from utils.atomic import config_key, sha256_file  # noqa: F401 (config_key: public here too)
from utils.errors import SuiteError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
# ORT kernels that really compute in integer arithmetic (what a fused Q/DQ pattern becomes on CPU)
INT_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "QAttention", "MatMulNBits", "QLinearAdd", "QLinearGlobalAveragePool")
# of those, the kernels whose multiply-accumulates run in integer arithmetic (a row's coverage): MatMulNBits keeps
# 4-bit weights but, at ORT's default accuracy level, dequantizes them and multiplies in float
REDUCED_KERNELS = tuple(k for k in INT_KERNELS if k != "MatMulNBits")


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


def cached_artifact(out: Path, make: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
    """`kit.cache.cached_artifact` for one ONNX file: reused only when it still matches its recorded hash and
    loads as ONNX; else made again (with a warning). `make(tmp_out)` writes the ONNX at tmp_out and returns its
    meta dict. Returns (path, meta, reused)."""
    return cache.cached_artifact(out, make, validate=lambda p: check_onnx(p, full_check=False))


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


# Session config entries every ONNX Runtime session of the suite sets (docs/routes/onnx.md "Fast-path settings").
# allow_spinning=0: intra-op threads do not busy-wait between kernels. Measured A/B (interleaved rounds) on
# ResNet50 on the shared 2-core machine: batch 1 1.45-1.9x faster (FP32 and INT8), batch 32 10-17% faster
# (FP32 in one round 4% slower). ORT's default (spinning on) targets an idle machine; spinning threads take
# the cores the next kernel or another process needs. Not set: session.set_denormal_as_zero (measured: no
# gain); ORT_PARALLEL (not tried: ResNet50/GPT-2 are chains); optimized_model_filepath (saves only session
# creation time, and an ORT_ENABLE_ALL file is machine-specific).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


def session_options(threads: int, *, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only (a missing CUDA EP is reported through the provider record)
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def session_note(threads: int) -> str:
    """What every session of the suite sets, for a row's notes."""
    return (f"ORT session: ORT_ENABLE_ALL, ORT_SEQUENTIAL, intra_op_num_threads {int(threads)}, inter_op_num_threads 1, "
            + ", ".join(f"{k}={v}" for k, v in SESSION_CONFIG.items()))


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
    kernels: dict[str, str] = field(default_factory=dict)  # node name -> op type of every kernel that ran

    def reduced_nodes(self) -> list[str] | None:
        """Names of the executed nodes that multiply in integer arithmetic (ORT keeps the original node's name on a
        fused kernel: QGemm '/m/.../c_attn/Gemm'); None where the kernels ran inside the TensorRT EP (fused engines
        whose nodes the profile does not name)."""
        if any("Tensorrt" in p for p in self.nodes_by_provider):
            return None
        return [n for n, op in self.kernels.items() if op in REDUCED_KERNELS]

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
                          dict(Counter(ops.values()).most_common()), ops)


# ------------------------------------------------------------------------------ calibration

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

    def set_range(self, start_index: int, end_index: int) -> None:
        """ORT's strided calibration (extra option CalibStridedMinMax): hand out batches[start:end] next, within the
        same pass (each range is collected and merged before the next is run: bounded memory)."""
        self._it = iter(self.batches[start_index:end_index])

    def __len__(self) -> int:
        return len(self.batches)


class FeedCalibrationReader(_reader_base()):
    """ORT CalibrationDataReader over ready feeds (dicts of every graph input), e.g. a KV-cache decoder's."""

    def __init__(self, feeds: list[dict]):
        self.feeds = list(feeds)
        self.passes: list[int] = [0]
        self._it = iter(self.feeds)

    def get_next(self) -> dict | None:
        f = next(self._it, None)
        if f is not None:
            self.passes[-1] += int(f["input_ids"].shape[0])
        return f

    def rewind(self) -> None:
        self._it = iter(self.feeds)
        if self.passes[-1]:
            self.passes.append(0)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])

    def __len__(self) -> int:
        return len(self.feeds)


# ------------------------------------------------------------------------------ KV-cache decoder (language models)

def decoder_names(manifest: dict) -> tuple[list[str], list[str]]:
    """Input and output names of the manifest's KV-cache decoder graph (models.prepare.export_decoder_onnx)."""
    n = int(manifest["n_layer"])
    past = [f"past_{kv}_{i}" for i in range(n) for kv in ("key", "value")]
    return ["input_ids", *past], ["logits", *[p.replace("past_", "present_") for p in past]]


def empty_past(manifest: dict, batch: int) -> dict:
    shape = (batch, int(manifest.get("n_kv_head") or manifest["n_head"]), 0, int(manifest["head_dim"]))
    return {n: np.zeros(shape, np.float32) for n in decoder_names(manifest)[0][1:]}


def decoder_step(sess, manifest: dict):
    """Built.generate over a KV-cache decoder session: the state is the list of present keys/values, fed back as the
    next call's past; the prompt starts from an empty (length-0) past."""
    names_in, names_out = decoder_names(manifest)

    def step(ids: np.ndarray, state):
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        feed = {"input_ids": ids}
        if state is None:
            feed.update(empty_past(manifest, ids.shape[0]))
        else:
            feed.update(zip(names_in[1:], state))
        outs = sess.run(names_out, feed)
        return outs[0][:, -1], outs[1:]

    return step


def decoder_calibration_feeds(manifest: dict, fp32_decoder: Path, windows: list[np.ndarray], threads: int) -> list[dict]:
    """Calibration feeds for a KV-cache decoder, from the same calibration windows as the full-sequence graph: the
    first half of each window is run through the FP32 decoder (its keys/values become the past), the second half is
    the input, so every quantized MatMul sees cached-decoding activations over a non-empty past."""
    sess = make_session(fp32_decoder, threads, [CPU_EP])
    names_in, names_out = decoder_names(manifest)
    feeds = []
    for w in windows:
        half = max(1, w.shape[1] // 2)
        first = sess.run(names_out, {"input_ids": np.ascontiguousarray(w[:, :half]), **empty_past(manifest, w.shape[0])})
        feeds.append({"input_ids": np.ascontiguousarray(w[:, half:]), **dict(zip(names_in[1:], first[1:]))})
    del sess
    return feeds


# ------------------------------------------------------------------------------ the ONNX route base

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


@dataclass
class Artifact:
    """An ONNX file to evaluate plus how it was made."""

    path: Path
    method: str
    precision: str
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    float_precision: str = "fp32"  # what its convs/matmuls compute in when no integer kernel runs
    decoder: Path | None = None  # language models: the KV-cache decoder graph, quantized like `path` (decode rows)


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


def source_onnx(manifest: dict) -> tuple[Path, str]:
    """The manifest's FP32 ONNX (verified against its recorded hash when the manifest was loaded), and its sha256."""
    if "onnx" not in manifest:
        raise SuiteError("the model's manifest has no 'onnx' entry (prepare the model again)")
    path = Path(manifest["onnx"])
    check_onnx(path)
    rec = (manifest.get("files") or {}).get("onnx") or {}
    return path, rec.get("sha256") or sha256_file(path)


# an FP32 ONNX larger than this (GPT-2 small: 652 MB) is calibrated with bounded memory by ONNX Runtime: one
# calibration batch collected at a time and merged (CalibStridedMinMax). ModelOpt's own patched ORT calibrators
# always work batch by batch (modelopt/onnx/quantization/ort_patching.py), so it needs nothing more.
BOUNDED_CALIB_MB = 256


def large_model(path: Path | str) -> bool:
    return Path(path).stat().st_size > BOUNDED_CALIB_MB * 1e6


def calib_key(ctx: ModelContext) -> dict:
    return {"calib_sha": ctx.hashes["calib_sha"], "n_calib": ctx.hashes["n_calib"]}


class OnnxRoute(Route):
    """A route whose variants are ONNX files run by ONNX Runtime: subclasses implement `make_artifact`."""

    def device_unavailable(self, device: str, opts) -> str | None:
        return cuda_driver_missing() if device == "cuda" else None

    def open(self, ctx: ModelContext) -> None:
        ctx.state["src"] = source_onnx(ctx.manifest)  # corrupt/missing FP32 ONNX -> one-line error before any row
        ctx.state["artifacts"] = {}

    def make_artifact(self, ctx: ModelContext, method: str, precision: str) -> Artifact:
        raise NotImplementedError

    def slow_reason(self, rec: "ProviderRecord") -> str | None:
        return None

    def timing_baseline(self, ctx: ModelContext, device: str):
        """The FP32 ONNX itself, in this route's ONNX Runtime: what its variants are timed against, trial by trial."""
        src, _ = ctx.state["src"]
        return "fp32-onnx", onnx_built(ctx, Artifact(src, "fp32-onnx", "fp32"), device)

    def build(self, ctx: ModelContext, method: str, precision: str, device: str) -> Built:
        made = ctx.state["artifacts"]
        if method not in made:  # one artifact per variant, whatever the devices
            try:
                made[method] = self.make_artifact(ctx, method, precision)
            except Exception as exc:  # noqa: BLE001 - remembered, so every device gets the same row
                made[method] = exc
        art = made[method]
        if isinstance(art, BaseException):
            raise art
        return onnx_built(ctx, art, device, self.slow_reason)


def onnx_built(ctx: ModelContext, art: Artifact, device: str, slow_reason=None) -> Built:
    """Open `art` in an ONNX Runtime session on `device`.

    On `cuda`, a session whose kernels all landed on the CPU EP (ORT's silent fallback) gives a skipped
    variant saying so, never CPU numbers labelled cuda.
    """
    providers = device_providers(device)
    threads = ctx.cfg.threads
    sess = make_session(art.path, threads, providers)
    in_name, out = input_name(sess, ctx.task.input_name), output_name(sess)
    probe = ctx.task.latency_input(1, ctx.manifest, ctx.data)
    rec = provider_record(art.path, threads, providers, {in_name: probe.x})
    if device != "cpu" and rec.main_provider == CPU_EP:
        raise SkipVariant(f"{'/'.join(p for p in providers if p != CPU_EP) or 'CUDA EP'} requested but ONNX Runtime "
                          f"ran every kernel on CPUExecutionProvider (no usable CUDA device/driver; session providers "
                          f"{list(rec.session)})")
    notes = [f"providers {','.join(rec.session)}", session_note(threads), rec.note()] + list(art.notes)
    why = slow_reason(rec) if slow_reason is not None else None
    if why:
        notes.append(why)
    compute = rec.compute_precision(art.float_precision) if art.precision != "fp32" else "fp32"

    def predict(x: np.ndarray) -> np.ndarray:
        return sess.run([out], {in_name: x})[0]

    def timed(x: np.ndarray):
        feed = {in_name: x}
        return lambda: sess.run([out], feed)

    extra = dict(art.extra)
    extra.update(providers=rec.to_dict(), onnx=artifacts.relative_to(ctx.source.cache_dir, art.path),
                 onnx_sha=sha256_file(art.path)[:16])
    generate = None
    if art.decoder is not None:
        dsess = make_session(art.decoder, threads, providers)
        generate = decoder_step(dsess, ctx.manifest)
        extra.update(decoder_onnx=artifacts.relative_to(ctx.source.cache_dir, art.decoder),
                     decoder_onnx_sha=sha256_file(art.decoder)[:16])
    return Built(predict, size_mb=file_size_mb(art.path), compute_precision=compute, calibration=art.calibration,
                 notes=notes, extra=extra, timed=timed, handle=sess, artifact=Path(art.path), generate=generate,
                 reduced_nodes=rec.reduced_nodes(),
                 coverage_source="ONNX Runtime's profile of the executed kernels")
