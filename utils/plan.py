"""The run plan: what a run measures, decided once from the declaration and the flags, handed to routes as data.

Stdlib only (the bench builds it under the bare system Python). Every launcher (the local bench, `--cluster`,
the sweeps, the GPU check) and a route started on its own build their plan with `build_plan`; a route process
receives it as a JSON file (`python -m quantization.kit <toolchain> --plan FILE`) and executes exactly its items:
it never re-derives what to run from a command line.

An item is one variant of one model on one device: (model, weights, toolchain, method, precision, device), the
batches its latency rows are timed at, whether it also gets a KV-cache generation (decode) row, its calibration
size and evaluation cap. Its rows are `<item id>__b<batch>[__decode]`. When an item finishes, the kit writes its
record `<runs_dir>/items/<item id>.json` (status, the rows it wrote, seconds spent, the configuration hash and
the code commit): the launcher reads those to mark unfinished items of a stopped route, `--resume` to skip
finished ones, and the next plan to estimate how long an item takes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable

from utils.errors import SuiteError
from utils.registry import (MODELS, ORDER, TOOLCHAINS, WEIGHTS, default_batches, default_calib, models_with, parse_list,
                             task_of)

PLAN_VERSION = 1
ITEMS = "items"  # <runs_dir>/items/<item id>.json: the record of each finished (or abandoned) item
DEVICES = ("cpu", "cuda")

TWIN_NOTE = ("latency at batch {batch} only: its deployed graph and kernels are {twin}'s (only calibrated scales "
             "differ), timed at every batch there; --methods {method} times it at every batch")


# ------------------------------------------------------------------------------ the plan's parts

@dataclass(frozen=True)
class Settings:
    """What every item of a run is measured with (the flags that are not a selection)."""

    weights: str = "embedded"
    weights_path: str | None = None
    data: str | None = None
    eval_limit: int | None = None
    threads: int = 2
    min_time: float = 1.0
    min_iters: int = 20

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise SuiteError(f"unknown weights {self.weights!r}; valid: {', '.join(WEIGHTS)}")
        if self.threads < 1:
            raise SuiteError("--threads must be >= 1")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise SuiteError("--eval-limit must be >= 1")
        if not self.min_time > 0:
            raise SuiteError("--min-time must be > 0")
        if self.min_iters < 1:
            raise SuiteError("--min-iters must be >= 1")


def _safe(p) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p))


@dataclass(frozen=True)
class Item:
    """One variant of one model on one device, and what to measure of it."""

    model: str
    weights: str
    toolchain: str
    method: str
    precision: str
    device: str
    batches: tuple[int, ...]  # latency batches (one row each); a calibration twin: the smallest only
    calib_samples: int
    eval_limit: int | None = None
    decode: bool = False  # a KV-cache generation row (batch 1) beside the full-sequence rows
    notes: tuple[str, ...] = ()  # said in every row of the item (e.g. why a twin is timed at one batch)
    baseline: bool = False  # the toolchain's own FP32 baseline (the budget keeps these first)
    skip: str = ""  # the declaration says it has no path on this device: skipped rows with this reason, no build
    # the row whose scores this item reuses (built and timed only, not scored again): --resume of an item scored by a
    # run stopped before timing it (its own row), or a later pass of a repeated run (the first pass's row)
    scores_from: str = ""
    repeat: int | None = None  # --repeats: the pass of the run (1..N); its rows' keys end in __r<pass>
    est_build_s: float | None = None  # estimates filled by the launcher (for --budget, the kit's deadline)
    est_time_s: float | None = None

    @property
    def ident(self) -> str:
        """The row key without its batch: `model__weights__toolchain__method__precision__device[__limN]`."""
        parts = [self.model, self.weights, self.toolchain, self.method, self.precision, self.device]
        if self.eval_limit is not None:
            parts.append(f"lim{self.eval_limit}")
        if self.repeat is not None:
            parts.append(f"r{self.repeat}")
        return "__".join(_safe(p) for p in parts)

    def row_key(self, batch: int, decode: bool = False) -> str:
        """Must equal utils.rows.ResultRow.key of the row this item writes at `batch`."""
        parts = [self.model, self.weights, self.toolchain, self.method, self.precision, self.device, f"b{batch}"]
        if self.eval_limit is not None:
            parts.append(f"lim{self.eval_limit}")
        if decode:
            parts.append("decode")
        if self.repeat is not None:
            parts.append(f"r{self.repeat}")
        return "__".join(_safe(p) for p in parts)

    def row_keys(self) -> list[str]:
        """Every row this item writes when it finishes: one per batch, and its decode row."""
        return [self.row_key(b) for b in self.batches] + ([self.row_key(1, decode=True)] if self.decode else [])

    @property
    def variant(self) -> tuple[str, str]:
        return self.method, self.precision

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batches"], d["notes"] = list(self.batches), list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Item":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["batches"] = tuple(int(b) for b in d.get("batches", ()))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)


@dataclass
class Plan:
    """The items of a run, the settings they share, where their rows go, and what was left out and why."""

    settings: Settings
    items: list[Item]
    runs_dir: str
    run_id: str | None = None
    deadline: float | None = None  # epoch seconds: the kit starts no item (or timing) that would end after it
    route_args: dict[str, list[str]] = field(default_factory=dict)  # toolchain -> its own flags (route options)
    left_out: list[dict] = field(default_factory=list)  # {"item": ident, "why": ...} (budget, resume)
    methods_named: bool = False
    route_order: list[str] | None = None  # toolchains in the order their routes run (default: the run order)

    # -- selection
    def routes(self) -> list[tuple[str, str]]:
        """(toolchain, model) pairs with items, in the run order (one route process each)."""
        out: list[tuple[str, str]] = []
        for it in self.items:
            if (it.toolchain, it.model) not in out:
                out.append((it.toolchain, it.model))
        rank = {t: i for i, t in enumerate(self.route_order or ORDER)}
        return sorted(out, key=lambda tm: rank.get(tm[0], len(rank)))

    def items_of(self, toolchain: str, model: str | None = None) -> list[Item]:
        return [it for it in self.items if it.toolchain == toolchain and (model is None or it.model == model)]

    def models(self) -> list[str]:
        return list(dict.fromkeys(it.model for it in self.items))

    def toolchains(self) -> list[str]:
        return [t for t in ORDER if any(it.toolchain == t for it in self.items)]

    def subset(self, items: Iterable[Item]) -> "Plan":
        return replace(self, items=list(items), left_out=list(self.left_out))

    def calib_samples(self) -> dict[str, int]:
        return {it.model: it.calib_samples for it in self.items}

    def batches(self) -> dict[str, tuple[int, ...]]:
        """model -> every batch its items time (sorted)."""
        out: dict[str, set[int]] = {}
        for it in self.items:
            out.setdefault(it.model, set()).update(it.batches)
        return {m: tuple(sorted(b)) for m, b in out.items()}

    # -- identity of what an item measures (for --resume)
    def config(self, item: Item) -> dict:
        s = self.settings
        return {"item": {k: v for k, v in item.to_dict().items() if not k.startswith("est_") and k != "scores_from"},
                "weights_path": s.weights_path, "data": s.data, "threads": s.threads, "min_time": s.min_time,
                "min_iters": s.min_iters, "route_args": self.route_args.get(item.toolchain, [])}

    def config_key(self, item: Item) -> str:
        """Everything that shapes the item's rows (a finished item of the same key is done: --resume)."""
        blob = json.dumps(self.config(item), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def score_key(self, item: Item) -> str:
        """What shapes the item's scores (not its timing: batches, --min-time/--min-iters): scored rows of the same key
        are reused by --resume."""
        c = self.config(item)
        c["item"] = {k: v for k, v in c["item"].items() if k not in ("batches", "decode", "notes", "baseline", "repeat")}
        for k in ("min_time", "min_iters"):
            c.pop(k)
        return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # -- as data
    def to_dict(self) -> dict:
        return {"version": PLAN_VERSION, "settings": asdict(self.settings), "runs_dir": str(self.runs_dir),
                "run_id": self.run_id, "deadline": self.deadline, "route_args": self.route_args,
                "methods_named": self.methods_named, "left_out": self.left_out, "route_order": self.route_order,
                "items": [it.to_dict() for it in self.items]}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if d.get("version") != PLAN_VERSION:
            raise SuiteError(f"plan version {d.get('version')!r} is not {PLAN_VERSION} (made by another suite version)")
        return cls(settings=Settings(**d["settings"]), items=[Item.from_dict(x) for x in d["items"]],
                   runs_dir=d["runs_dir"], run_id=d.get("run_id"), deadline=d.get("deadline"),
                   route_args={k: list(v) for k, v in (d.get("route_args") or {}).items()},
                   left_out=list(d.get("left_out") or []), methods_named=bool(d.get("methods_named")),
                   route_order=d.get("route_order"))

    def save(self, path: Path | str) -> Path:
        from utils.atomic import atomic_write_json

        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> "Plan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SuiteError(f"plan file {path} does not exist") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SuiteError(f"plan file {path} is not a plan ({exc.__class__.__name__}: {exc})") from None


# ------------------------------------------------------------------------------ building a plan

def parse_methods(text: str | None) -> tuple[str, ...] | None:
    """'a, b' -> ('a', 'b'); None, '' or 'all' -> None (each toolchain's default methods). The one place that splits
    --methods."""
    if text is None or text.strip() in ("", "all"):
        return None
    items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not items:
        raise SuiteError(f"empty method list {text!r}")
    return items


def parse_batches(text) -> "tuple[int, ...] | dict[str, tuple[int, ...]] | None":
    """'1,8' -> (1, 8) for every model; 'resnet50=1,32;gpt2=1,8' -> per model (a model not named keeps its
    default); None -> each model's default."""
    if text is None or text == "":
        return None
    if isinstance(text, dict):
        return {m: parse_batches(v) for m, v in text.items()}
    if isinstance(text, str) and "=" in text:
        out = {}
        for part in (p for p in text.split(";") if p.strip()):
            m, _, bs = part.partition("=")
            m = m.strip()
            if m not in MODELS:
                raise SuiteError(f"--batches {text!r}: unknown model {m!r}; valid: {', '.join(MODELS)}")
            out[m] = parse_batches(bs)
        return out
    if isinstance(text, (tuple, list)):
        vals = tuple(int(b) for b in text)
    else:
        try:
            vals = tuple(int(x) for x in str(text).split(",") if x.strip())
        except ValueError:
            raise SuiteError(f"--batches must be a comma list of integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise SuiteError(f"--batches must be integers >= 1, got {text!r}")
    return tuple(dict.fromkeys(vals))


def selected_variants(toolchain: str, model: str, device: str, weights: str,
                      methods: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """(method, precision) of (toolchain, model) a run on `device` measures: those --methods names, else the
    declaration's defaults (all but the device's opt-in methods and, with random weights, the calibration twins)."""
    tc = TOOLCHAINS[toolchain]
    if methods is not None:
        return [v for v in tc.model_variants(model) if v[0] in methods]
    keep = set(tc.default_methods(model, device, weights))
    return [v for v in tc.model_variants(model) if v[0] in keep]


def build_plan(*, models=None, toolchains=None, methods=None, devices=None, batches=None, calib_samples=None,
               settings: Settings = Settings(), runs_dir: Path | str, route_args: dict | None = None,
               strict_devices: bool = False) -> Plan:
    """The plan of a run: every selected (toolchain, model, device, variant), from the declaration and the flags.

    models/toolchains/devices: comma text, a sequence, or None (all); methods: comma text, a sequence or None (each
    toolchain's defaults); batches: comma text, a sequence or None (each model's default); calib_samples: an int or
    None (each model's default). A method no selected toolchain has on a selected model, a device no selected
    toolchain declares: SuiteError (exit 2). `strict_devices`: a toolchain that declares none of the named devices is
    an error (a route started on its own) instead of being left out (the bench)."""
    # every declared model that has the run's weights, unless named (a named one without them: one line, exit 2)
    models = models_with(settings.weights) if models in (None, "all") else _names("model", models, MODELS)
    toolchains = _names("toolchain", toolchains, ORDER)
    toolchains = tuple(t for t in ORDER if t in toolchains)  # run order from the declarations' `needs`
    named = parse_methods(methods) if not isinstance(methods, (tuple, list)) else (tuple(methods) or None)
    devs = _names("device", devices, DEVICES) if devices not in (None, "auto") else None
    bs = parse_batches(batches)
    if named is not None:
        known = {m for t in toolchains for mdl in models for m in TOOLCHAINS[t].methods(mdl)}
        bad = [m for m in named if m not in known]
        if bad:
            raise SuiteError(f"unknown method {', '.join(map(repr, bad))} for {', '.join(toolchains)} on {', '.join(models)}; "
                             f"valid: {', '.join(sorted(known))}")
    if devs is not None:
        kept = tuple(t for t in toolchains if set(devs) & set(TOOLCHAINS[t].devices))
        if not kept or (strict_devices and kept != toolchains):
            lost = [t for t in toolchains if t not in kept]
            raise SuiteError(f"{', '.join(lost) or 'no selected toolchain'} declares none of the devices "
                             f"{','.join(devs)} (declared: " + "; ".join(f"{t} {','.join(TOOLCHAINS[t].devices)}"
                                                                        for t in lost) + ")")
        toolchains = kept
    items: list[Item] = []
    for t in toolchains:
        tc = TOOLCHAINS[t]
        for m in models:
            if not tc.methods(m):
                continue
            mb = (bs.get(m) if isinstance(bs, dict) else bs) or default_batches(m, settings.weights)
            n_calib = calib_samples if calib_samples is not None else default_calib(m, settings.weights)
            for d in [d for d in tc.devices if devs is None or d in devs]:
                chosen = selected_variants(t, m, d, settings.weights, named)
                live = {meth for meth, _ in chosen}
                for meth, prec in chosen:
                    twin = tc.latency_twins.get(meth)
                    once = named is None and twin in live and len(mb) > 1
                    items.append(Item(
                        model=m, weights=settings.weights, toolchain=t, method=meth, precision=prec, device=d,
                        batches=(1,) if d in tc.accuracy_only else (min(mb),) if once else tuple(mb),
                        calib_samples=int(n_calib),
                        eval_limit=settings.eval_limit, decode=meth in tc.generating(m),
                        notes=(TWIN_NOTE.format(twin=twin, batch=min(mb), method=meth),) if once else (),
                        baseline=tc.baseline == (t, meth), skip=tc.unsupported.get(d, {}).get(meth, "")))
    return Plan(settings=settings, items=items, runs_dir=str(runs_dir), route_args=dict(route_args or {}),
                methods_named=named is not None)


def _names(kind: str, value, valid) -> tuple[str, ...]:
    if value is None or isinstance(value, str):
        return parse_list(kind, value, valid)
    vals = tuple(value)
    for v in vals:
        if v not in valid:
            raise SuiteError(f"unknown {kind} {v!r}; valid: {', '.join(valid)}")
    return vals


# ------------------------------------------------------------------------------ item records

def item_record_path(runs_dir: Path | str, item: Item) -> Path:
    return Path(runs_dir) / ITEMS / f"{item.ident}.json"


def write_item_record(runs_dir: Path | str, record: dict) -> Path:
    """Atomically write the record of one item (`record["item"]` is the item's dict)."""
    from utils.atomic import atomic_write_json

    item = Item.from_dict(record["item"])
    record = {**record, "timestamp": record.get("timestamp") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return atomic_write_json(item_record_path(runs_dir, item), record)


def read_item_records(runs_dir: Path | str) -> dict[str, dict]:
    """item id -> its latest record (unreadable files are left out: a record is a hint, the rows are the truth)."""
    out = {}
    for p in sorted((Path(runs_dir) / ITEMS).glob("*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
            out[Item.from_dict(rec["item"]).ident] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# ------------------------------------------------------------------------------ estimates, --resume, --budget

# conservative seconds per item when no earlier run measured it: (task, weights) -> (build and score, timing)
DEFAULT_ITEM_S = {("image-classification", "embedded"): (40.0, 40.0), ("image-classification", "random"): (40.0, 30.0),
                  ("image-classification", "pretrained"): (120.0, 60.0),
                  ("language-model", "embedded"): (20.0, 20.0), ("language-model", "random"): (90.0, 60.0),
                  ("language-model", "pretrained"): (180.0, 90.0)}
DEFAULT_OPEN_S = 20.0  # a route process: imports, the model's manifest and data
NO_DEVICE_S = 1.0  # an item on a device that is known to be missing: a skipped row
# on a GPU (seen on an H200: GPT-2 124M built in ~18 s a variant, ResNet50 compiled by inductor in ~12 s)
DEFAULT_GPU_ITEM_S = {"image-classification": (8.0, 8.0), "language-model": (15.0, 8.0)}


@dataclass
class Estimates:
    """Seconds an item takes, from the records of earlier runs (any of the given runs folders), else defaults."""

    records: dict[str, dict]

    @classmethod
    def from_dirs(cls, dirs: Iterable[Path | str]) -> "Estimates":
        """Item records of the given runs folders (the newest per item); where an item has none, a record derived
        from its rows there (calibration, evaluation and timed seconds: runs made before item records existed)."""
        recs: dict[str, dict] = {}
        derived: dict[str, dict] = {}
        for d in dirs:
            for k, r in read_item_records(d).items():
                if k not in recs or str(r.get("timestamp", "")) > str(recs[k].get("timestamp", "")):
                    recs[k] = r
            for k, r in _records_from_rows(d).items():
                derived.setdefault(k, r)
        return cls({**derived, **recs})

    def item(self, it: Item, device_missing: str | None = None) -> tuple[float, float, str]:
        """(build+score seconds, timing seconds, where the numbers come from)."""
        if it.skip:
            return NO_DEVICE_S, 0.0, "declared without a path here: a skipped row"
        if it.device == "cuda" and device_missing:
            return NO_DEVICE_S, 0.0, "no device: a skipped row"
        rec = self.records.get(it.ident) or self.records.get(replace(it, repeat=None).ident) \
            or self.records.get(replace(it, repeat=1).ident)  # a pass of a repeated run costs what a run costs
        if rec and rec.get("status") in ("ok", "skipped") and rec.get("seconds"):
            s = rec["seconds"]
            if rec.get("status") == "skipped":
                return float(s.get("total", NO_DEVICE_S)), 0.0, "skipped before"
            timed = s.get("timing") or {}
            per_batch = [float(v) for v in timed.values()] or [0.0]
            t = sum(float(timed.get(str(b), max(per_batch))) for b in it.batches) + float(s.get("decode", 0.0) or 0.0)
            how = "from its rows" if rec.get("derived") else "measured"
            score = 0.0 if it.scores_from else float(s.get("score", 0.0))  # reused scores: built and timed only
            return float(s.get("build", 0.0)) + score, t, f"{how} {rec.get('timestamp', '')[:10]}"
        if it.device == "cuda":
            b, t = DEFAULT_GPU_ITEM_S[task_of(it.model)]
            f = TOOLCHAINS[it.toolchain].estimate_factor.get(it.method, 1.0) if it.toolchain in TOOLCHAINS else 1.0
            b, t = b * f, t * f
        else:
            b, t = DEFAULT_ITEM_S[(task_of(it.model), it.weights)]
        return b, t * len(it.batches) / 2 + (t / 2 if it.decode else 0.0), "default"

    def route_open(self, toolchain: str, model: str, weights: str) -> float:
        opens = [float(r["seconds"]["open"]) for r in self.records.values()
                 if r.get("item", {}).get("toolchain") == toolchain and r.get("item", {}).get("model") == model
                 and r.get("item", {}).get("weights") == weights and (r.get("seconds") or {}).get("open") is not None]
        return max(opens) if opens else DEFAULT_OPEN_S


def _records_from_rows(runs_dir: Path | str) -> dict[str, dict]:
    """Rough item records from ok rows: build + score = calibration + evaluation seconds, timing per batch = its
    trials (each times the variant and its baseline) plus the first call."""
    out: dict[str, dict] = {}
    for p in sorted(Path(runs_dir).glob("*.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        parts = [r.get(k) for k in ("model", "weights", "toolchain", "method", "precision", "device")]
        if None in parts:
            continue
        ident = "__".join(_safe(x) for x in parts + ([f"lim{r['eval_limit']}"] if r.get("eval_limit") else []))
        if r.get("status") == "skipped" and ident not in out:  # a skip costs the route's check only
            out[ident] = {"status": "skipped", "timestamp": (r.get("environment") or {}).get("timestamp", ""),
                          "seconds": {"total": 2.0}, "derived": True}
        if r.get("status") != "ok" or not isinstance(r.get("extra"), dict):
            continue
        if out.get(ident, {}).get("status") == "skipped":
            del out[ident]
        rec = out.setdefault(ident, {"status": "ok", "timestamp": (r.get("environment") or {}).get("timestamp", ""),
                                     "item": {"model": parts[0], "weights": parts[1], "toolchain": parts[2]},
                                     "seconds": {"build": 0.0, "score": 0.0, "timing": {}}, "derived": True})
        s = rec["seconds"]
        s["build"] = max(s["build"], float(r.get("calib_seconds") or 0.0) + 5.0)
        s["score"] = max(s["score"], float(r["extra"].get("eval_seconds") or 0.0))
        p50 = float(r.get("latency_p50_ms") or 0.0) / 1000.0
        t = 2.0 * p50 * float(r.get("latency_samples") or 0) + float(r.get("first_call_ms") or 0.0) / 1000.0
        if r.get("latency_kind") == "decode":
            s["decode"] = t * 32  # a sample is one generated token: a trial generates the whole continuation
        else:
            s["timing"][str(r.get("batch"))] = t
    return out


def with_estimates(plan: Plan, est: Estimates, device_missing: str | None = None) -> Plan:
    items = []
    for it in plan.items:
        b, t, _ = est.item(it, device_missing)
        items.append(replace(it, est_build_s=round(b, 1), est_time_s=round(t, 1)))
    return plan.subset(items)


def finished_items(plan: Plan, runs_dir: Path | str, commit: str) -> tuple[dict[str, str], set[str]]:
    """--resume: (item id -> why it counts as done, ids of items scored but not timed). Done: its latest record is
    ok, for the same configuration and code commit, and every row it wrote is still there, ok and timed. Scored:
    every row of its batches is there and ok, written by this configuration and commit, and at least one is still
    pending its timing (a run stopped in the timing phase): it is built and timed again, not scored again."""
    from utils.rows import read_row

    done, scored = {}, set()
    recs = read_item_records(runs_dir)
    for it in plan.items:
        key = plan.config_key(it)
        rec = recs.get(it.ident)
        if rec and rec.get("status") == "ok" and rec.get("config_key") == key and rec.get("git_commit") == commit:
            rows = [read_row(Path(runs_dir) / f"{k}.json") for k in rec.get("rows") or []]
            if rows and all(r is not None and r.complete for r in rows):
                done[it.ident] = f"done in run {rec.get('run_id')} ({rec.get('timestamp', '')})"
                continue
        rows = [read_row(Path(runs_dir) / f"{it.row_key(b)}.json") for b in it.batches]
        skey = plan.score_key(it)
        if rows and all(r is not None and r.status == "ok" and (r.extra.get("plan_item") or {}).get("score_key") == skey
                        and (r.environment or {}).get("git_commit") == commit for r in rows) \
                and any(r.pending for r in rows):
            scored.add(it.ident)
    return done, scored


def passes(plan: Plan, n: int) -> list[Plan]:
    """--repeats n: the plan once per pass, its items marked with the pass (their rows' keys end in __r<pass>); a
    later pass reuses the first pass's scores (scoring is deterministic) and times again; the toolchains' order is
    rotated from pass to pass (the first pass keeps the declarations' `needs` order: it makes the artifacts later
    toolchains read)."""
    if n <= 1:
        return [plan]
    out = []
    order = plan.toolchains()
    for k in range(1, n + 1):
        rot = order[(k - 1) % len(order):] + order[:(k - 1) % len(order)] if order else order
        items = [replace(it, repeat=k, scores_from=it.scores_from if k == 1 else
                         replace(it, repeat=1).row_key(it.batches[0]))
                 for t in rot for it in plan.items if it.toolchain == t]
        p = plan.subset(items)
        p.route_order = rot
        out.append(p)
    return out


def value_order(items: list[Item]) -> list[Item]:
    """Each toolchain's FP32 baseline first, then the declaration's order (run order, model, device, variant)."""
    idx = {id(it): i for i, it in enumerate(items)}
    return sorted(items, key=lambda it: (0 if it.baseline else 1, idx[id(it)]))


def fit_budget(plan: Plan, budget_s: float, fixed_s: float, est: Estimates,
               device_missing: str | None = None) -> tuple[Plan, list[dict]]:
    """Items in value order while their estimates (and each new route process's start) fit in what the budget leaves
    after `fixed_s` (environments, preparation, ceilings, report); the plan keeps the run order. Returns the plan of
    the kept items and the left-out ones with why."""
    left = budget_s - fixed_s
    kept: set[int] = set()
    opened: set[tuple[str, str]] = set()
    out = []
    for it in value_order(plan.items):
        b, t, src = est.item(it, device_missing)
        route = (it.toolchain, it.model)
        cost = b + t + (0.0 if route in opened else est.route_open(it.toolchain, it.model, it.weights))
        if cost <= left:
            left -= cost
            kept.add(id(it))
            opened.add(route)
        else:
            out.append({"item": it.ident, "why": f"budget: needs ~{cost:.0f} s ({src}), {max(left, 0):.0f} s left"})
    return plan.subset([it for it in plan.items if id(it) in kept]), out


# ------------------------------------------------------------------------------ printing

def routes_seconds(plan: Plan, est: Estimates, device_missing: str | None = None) -> float:
    """Estimated seconds of the plan's route processes (their starts and items)."""
    total = sum(est.route_open(t, m, plan.settings.weights) for t, m in plan.routes())
    return total + sum(sum(est.item(it, device_missing)[:2]) for it in plan.items)


def describe(plan: Plan, est: Estimates | None = None, where: dict[str, str] | None = None,
             device_missing: str | None = None) -> list[str]:
    """The plan as lines: one per item (where it runs, batches, decode, estimate), then what was left out."""
    est = est or Estimates({})
    procs = len({(it.toolchain, it.model, it.repeat) for it in plan.items})
    lines = [f"plan: {len(plan.items)} item(s) in {procs} route process(es); weights "
             f"{plan.settings.weights}; rows -> {plan.runs_dir}"]
    total = 0.0
    for t, m in plan.routes():
        its = plan.items_of(t, m)
        op = est.route_open(t, m, plan.settings.weights)
        total += op
        lines.append(f"  {t}/{m}  [{(where or {}).get(t, TOOLCHAINS[t].env.name)}]  start ~{op:.0f} s")
        for it in its:
            b, tm, src = est.item(it, device_missing)
            total += b + tm
            extra = (" +decode" if it.decode else "") + (" (FP32 baseline)" if it.baseline else "") + \
                (f" pass {it.repeat}" if it.repeat else "")
            lines.append(f"    {it.method:<18} {it.precision:<5} {it.device:<5} b{','.join(map(str, it.batches)):<6}"
                         f"{extra:<24} ~{b + tm:5.0f} s  ({src})")
    lines.append(f"routes: ~{total:.0f} s estimated")
    for lo in plan.left_out:
        lines.append(f"  left out {lo['item']}: {lo['why']}")
    return lines


def new_run_id(suffix: str = "") -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}" + suffix
