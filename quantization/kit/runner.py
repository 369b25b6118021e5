"""The one loop over a plan's items, in a route process: per model the context, per device each item built and
scored (its rows written at once, latency pending), then timed; each item ends with its record
(<runs_dir>/items/<item id>.json) that the launcher, --resume and the next plan's estimates read."""
from __future__ import annotations

import logging
import time

from quantization.kit.config import RouteConfig, RowWriter
from utils.errors import SuiteError, failure_reason
from utils.plan import Item, Plan
from utils.specs import RANDOM_REASON
from quantization.kit.contract import ModelContext, Route, SkipVariant, open_model
from quantization.kit.scoring import reset_peak, reused_scores, rss_mb, score_variant, variant_coverage
from quantization.kit.timing import budget_reason, fits, time_and_write, timed_batches
from quantization.kit.variant import ItemRecords, Variant, cfg_verbose, close_built, common_fields

log = logging.getLogger("quantization.kit")


def run_model(route: Route, cfg: RouteConfig, opts, model: str, items: list[Item], plan: Plan,
              records: ItemRecords) -> list:
    """The plan's items of one model: each built and scored, its rows written at once (latency pending), then timed
    in interleaved trials with the in-process FP32 baseline, batch by batch, each row rewritten with its latency as
    soon as its batch is timed. Failures are isolated per item, in one format; each item ends with its record."""
    from tqdm import tqdm

    t_open = time.time()
    ctx = open_model(route, cfg, model, opts)  # SuiteError (bad input, stale artifact): one line, exit 2
    open_s = time.time() - t_open
    devices = list(dict.fromkeys(it.device for it in items))
    writers = {d: RowWriter(cfg, model, ctx.manifest, device=d, hashes=ctx.hashes, **route.environment(d, opts))
               for d in devices}
    rows, live = [], []
    for d in devices:
        why = route.device_unavailable(d, opts)
        if why:
            for it in (i for i in items if i.device == d):
                written = writers[d].status_item("skipped", why, it)
                records.write(it, "skipped", why, written, {"open": open_s, "total": 0.0})
                rows += written
        else:
            live.append(d)
    rss_open, _ = rss_mb()
    for d in live:
        done: list[Variant] = []
        w = writers[d]
        try:
            for it in tqdm([i for i in items if i.device == d], desc=f"{cfg.toolchain}/{model}/{d}", unit="variant"):
                if it.skip:  # the declaration says it has no path on this device: no build
                    written = w.status_item("skipped", it.skip, it)
                    records.write(it, "skipped", it.skip, written, {"open": open_s, "total": 0.0})
                    rows += written
                    continue
                need = (it.est_build_s or 0.0) + (it.est_time_s or 0.0)
                if not fits(plan, need):
                    why = budget_reason(plan, need, "this item")
                    log.info("%s: left out (%s)", it.ident, why)
                    records.write(it, "left-out", why, (), {"open": open_s})
                    continue
                v = build_and_score(route, ctx, w, it, d, rss_open, open_s, records)
                if v is not None:
                    done.append(v)
                    rows += list(v.rows.values())
            rows += time_and_write(route, ctx, w, d, done, plan, records)
        finally:
            for v in done:
                close_built(v.built)
    return rows


def build_and_score(route: Route, ctx: ModelContext, w: RowWriter, it: Item, d: str, rss_open, open_s: float,
                     records: ItemRecords) -> "Variant | None":
    """Build and score one item and write its rows at once: pending their timing (or final: accuracy only). A skip
    or failure writes that item's rows and record and returns None."""
    rss_before, _ = rss_mb()
    measured = reset_peak()
    built = None
    t0 = time.time()
    reused = reused_scores(ctx, it, records.plan) if it.scores_from else None
    try:
        built = route.build(ctx, it.method, it.precision, d)
        build_s = time.time() - t0
        if ctx.source.weights == "random":
            built.notes.insert(0, RANDOM_REASON)
        built.notes.extend(n for n in it.notes if n not in built.notes)
        t1 = time.time()
        fields, extra = reused if reused is not None else score_variant(ctx, built, it.method, d)
        extra["plan_item"] = {"ident": it.ident, "config_key": records.plan.config_key(it),
                              "score_key": records.plan.score_key(it)}
        fields.update(variant_coverage(ctx, built, it, extra))
        score_s = time.time() - t1
        _, hwm = rss_mb()
        if reused is not None:
            pass  # the earlier run's memory high-water (it built and scored) stays
        elif measured and hwm and rss_before is not None and rss_open is not None:
            # the high-water of building and scoring this variant, less what the variants built before it still
            # hold in this process (they stay alive to be timed together)
            fields["peak_mem_mb"] = round(hwm - max(0.0, rss_before - rss_open), 1)
            extra["rss_high_water_mb"] = round(hwm, 1)
        if built.gpu_peak_mb is not None:  # device memory high-water of building and scoring it
            gpu = built.gpu_peak_mb()
            fields["gpu_peak_mem_mb"] = round(gpu, 1) if gpu is not None else None
    except SkipVariant as exc:
        close_built(built)
        records.write(it, "skipped", str(exc), w.status_item("skipped", str(exc), it),
                      {"open": open_s, "total": time.time() - t0})
        return None
    except (KeyboardInterrupt, MemoryError):
        close_built(built)
        raise
    except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
        close_built(built)
        log.warning("%s %s on %s failed: %s", ctx.model, it.method, d, failure_reason(exc), exc_info=cfg_verbose())
        records.write(it, "failed", failure_reason(exc), w.status_item("failed", failure_reason(exc), it),
                      {"open": open_s, "total": time.time() - t0})
        return None
    v = Variant(it, built, fields, {**extra, **built.extra},
                 {"open": open_s, "build": build_s, "score": score_s, "timing": {}})
    if not timed_batches(v):  # accuracy only: its rows are final now (written with the others in time_and_write)
        return v
    for b in timed_batches(v):  # scored: written now, its latency columns when its batch is timed
        r = w.write(w.row(it.method, it.precision, b, **common_fields(v), pending="timing",
                          extra={**v.extra, "pending": "scored; latency not timed yet"}))
        v.rows[r.key] = r
    return v


def execute(route: Route, plan: Plan, items: list[Item], opts) -> int:
    """Run `items` (this route's part of `plan`), model by model; every item ends with rows and a record."""
    cfg = RouteConfig.from_plan(route.toolchain, plan.subset(items))
    records = ItemRecords(plan, cfg.runs_dir)
    why = route.unavailable(opts)
    for model in dict.fromkeys(it.model for it in items):
        mine = [it for it in items if it.model == model]
        if why:
            try:
                manifest = cfg.source(model).load_manifest(verify=False)
            except SuiteError:
                manifest = None
            for d in dict.fromkeys(it.device for it in mine):
                w = RowWriter(cfg, model, manifest, device=d, **route.environment(d, opts))
                for it in (i for i in mine if i.device == d):
                    records.write(it, "skipped", why, w.status_item("skipped", why, it), {"total": 0.0})
            continue
        rows = run_model(route, cfg, opts, model, mine, plan, records)
        log.info("%s/%s: %d rows (%d ok) in %s", route.toolchain, model, len(rows),
                 sum(r.status == "ok" for r in rows), cfg.runs_dir)
    return 0
