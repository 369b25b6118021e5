"""Timing the scored items of one device: interleaved trials with their in-process FP32 baselines, batch by batch
(utils.harness.interleaved), the paired speedup of each with its interval, each row rewritten with its latency
as soon as its batch is timed; the plan's deadline honoured."""
from __future__ import annotations

import logging
import time

from quantization.kit.config import RouteConfig, RowWriter
from utils.errors import failure_reason
from utils.plan import Plan
from utils.registry import TOOLCHAINS
from utils.specs import RANDOM_REASON
from quantization.kit.contract import Built, ModelContext, Route
from quantization.kit.generation import time_generation
from quantization.kit.variant import ItemRecords, SPEEDUP_CI, Variant, close_built, common_fields, paired_record, traffic_record

log = logging.getLogger("quantization.kit")


def timed_unit(built: Built, li):
    from utils.harness import Timed

    fn = built.timed(li.x) if built.timed is not None else (lambda x=li.x: built.predict(x))
    return Timed(fn, li.items, built.latency_kind, built.sync, built.timer)


def time_group(ctx: ModelContext, variants: list, bases: dict, pair_of: dict, batch: int) -> dict:
    """Interleaved trials of the variants and their in-process FP32 baselines at one batch: every unit is timed
    once per trial, so each variant is paired trial by trial with its own baseline (pair_of[method])."""
    from utils.harness import interleaved
    from utils.stats import speedup_ci, widest_interval

    cfg = ctx.cfg
    li = ctx.task.latency_input(batch, ctx.manifest, ctx.data)
    units = {v.method: timed_unit(v.built, li) for v in variants}
    for name, built in bases.items():
        if name not in units:
            units[name] = timed_unit(built, li)
    pairs = {m: b for m, b in pair_of.items() if m in units and b in units and m != b}
    main_base = next(iter(bases), None)

    memo = {"n": 0, "pick": None}

    def widest(tr):  # re-ranked every 8 extra trials (a bootstrap per row costs more than a fast call)
        if memo["n"] % 8 == 0:
            rows = {m: tr.paired(b, m) for m, b in pairs.items() if m in tr.latency and b in tr.latency}
            memo["pick"] = widest_interval(rows, paired=True, n_boot=400)[0] if rows else None
        memo["n"] += 1
        pick = memo["pick"]
        return [pairs[pick], pick] if pick else None

    trials = interleaved(units, baseline=main_base, min_trials=cfg.min_iters, budget_s=cfg.min_time * len(units),
                         widest=widest if pairs and main_base else None)
    out = {"overhead_ms": trials.overhead_ms, "shape": list(li.shape), "unit": li.unit, "latency": trials.latency,
           "speedup": {}, "trials": trials}
    for m in units:
        if m in pairs:  # a variant (possibly itself the baseline of another, e.g. inductor for pt2e)
            b = pairs[m]
            xb, xo = trials.paired(b, m)
            if len(xb) >= 3 and units[m].kind == units[b].kind:
                out["speedup"][m] = (*(float(x) for x in speedup_ci(xb, xo, **SPEEDUP_CI)), b)
        elif m in bases:  # the toolchain's own FP32 baseline
            out["speedup"][m] = (1.0, 1.0, 1.0, m)
    return out


def fits(plan: Plan, seconds: float | None) -> bool:
    """Whether work estimated at `seconds` ends before the plan's deadline (always, without one)."""
    return plan.deadline is None or time.time() + float(seconds or 0.0) <= plan.deadline


def budget_reason(plan: Plan, seconds: float | None, what: str) -> str:
    left = max(0.0, (plan.deadline or 0.0) - time.time())
    return f"budget: {what} needs ~{float(seconds or 0):.0f} s, {left:.0f} s of the run's budget left"


def timed_batches(v: Variant) -> list[int]:
    """The item's batches this built variant is timed at (none: an accuracy-only runtime)."""
    if v.built.batches is not None and not v.built.batches:
        return []
    return [b for b in v.item.batches if v.built.batches is None or b in v.built.batches]


def time_and_write(route: Route, ctx: ModelContext, writer: RowWriter, device: str, done: list, plan: Plan,
                    records: ItemRecords) -> list:
    """Time every scored item, batch by batch, in interleaved trials with the baseline; rewrite each row with its
    latency as soon as its batch is timed; then the generation rows; then each item's record."""
    tc = TOOLCHAINS[ctx.cfg.toolchain]
    rows = []
    timed = [v for v in done if timed_batches(v)]
    for v in done:
        if v in timed:
            continue
        # accuracy only (e.g. a fake-quant emulation that is not a deployment runtime)
        if v.fields.get("value") is None:  # random weights: nothing this variant measures is meaningful
            why = (f"{RANDOM_REASON}, and this variant is not timed here "
                   f"({'; '.join(v.built.notes[1:2]) or 'accuracy-only runtime'})")
            out = writer.status("skipped", why, [v.item.variant], [1])
            records.write(v.item, "skipped", why, out, v.seconds)
        else:
            out = [writer.write(writer.row(v.method, v.precision, 1, **common_fields(v), extra=v.extra))]
            records.write(v.item, "ok", "", out, v.seconds)
        rows += out
    if not timed:
        return rows
    bases, pair_of, only_for_timing = timing_baselines(route, ctx, device, timed)
    failed: dict[str, str] = {}
    recorded: set[str] = set()  # methods whose item record is written already
    try:
        for b in sorted({b for v in timed for b in timed_batches(v)}):
            group = [v for v in timed if v.method not in failed and b in timed_batches(v)]
            if not group:
                continue
            need = sum((v.item.est_time_s or 0.0) / (len(v.item.batches) + v.item.decode) for v in group)
            if not fits(plan, need):
                log.info("%s at batch %d not timed (%s)", ctx.model, b, budget_reason(plan, need, "timing"))
                for v in group:
                    v.untimed.append(b)
                continue
            t0 = time.time()
            try:
                res = time_group(ctx, group, bases, pair_of, b)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - find the variant whose timing fails and fail it alone
                res = None
                log.warning("timing %s at batch %d failed (%s); timing each variant alone", ctx.model, b,
                            failure_reason(exc))
            for v in group:
                one = res
                if one is None:
                    try:
                        one = time_group(ctx, [v], {k: x for k, x in bases.items() if k == pair_of.get(v.method)},
                                          pair_of, b)
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as exc:  # noqa: BLE001
                        failed[v.method] = failure_reason(exc)
                        for r in writer.status("failed", failed[v.method], [v.item.variant], timed_batches(v)):
                            rows.append(r)
                            v.rows[r.key] = r
                        continue
                r = writer.write(writer.row(v.method, v.precision, b, **latency_fields(v, one, tc, ctx.cfg, ctx)))
                rows.append(r)
                v.rows[r.key] = r
            for v in group:
                v.seconds["timing"][str(b)] = (time.time() - t0) / len(group)
                if b == max(timed_batches(v)) and not v.item.decode and v.method not in failed and not v.untimed:
                    # finished (e.g. a calibration twin timed at the smallest batch only): its record now, so a route
                    # stopped while timing a larger batch does not count it unfinished
                    records.write(v.item, "ok", "", v.rows.values(), v.seconds)
                    recorded.add(v.method)
        gen = [v for v in timed if v.item.decode and v.method not in failed]
        if gen:
            need = sum((v.item.est_time_s or 0.0) / (len(v.item.batches) + 1) for v in gen)
            if not fits(plan, need):
                log.info("%s: no decode rows (%s)", ctx.model, budget_reason(plan, need, "generation"))
                for v in gen:
                    v.untimed.append("decode")
            else:
                rows += time_generation(route, ctx, writer, device, gen, bases, pair_of)
    finally:
        for name in only_for_timing:
            close_built(bases.get(name))
    for v in timed:
        if v.method in recorded:
            continue
        if v.method in failed:
            records.write(v.item, "failed", f"timing: {failed[v.method]}", v.rows.values(), v.seconds)
        elif v.untimed:
            records.write(v.item, "partial", budget_reason(plan, v.item.est_time_s, "timing") + " (not timed at "
                          + ", ".join(str(x) for x in v.untimed) + ")", v.rows.values(), v.seconds)
        else:
            records.write(v.item, "ok", "", v.rows.values(), v.seconds)
    return rows


def latency_fields(v: Variant, one: dict, tc, cfg: RouteConfig, ctx: ModelContext | None = None) -> dict:
    """A timed row's fields: the variant's scoring fields, its latency and its paired speedup."""
    lat = one["latency"][v.method]
    spd = one["speedup"].get(v.method)
    fields = dict(common_fields(v), **lat.row_fields(), throughput_unit=one["unit"], latency_samples=len(lat.samples_ms))
    if spd is not None:
        own = spd[3] in tc.methods(v.item.model)
        fields.update(speedup_paired=spd[0], speedup_ci_low=spd[1], speedup_ci_high=spd[2],
                      speedup_vs=f"{cfg.toolchain}/{spd[3]}" + ("" if own else " (in-process FP32)"))
    tr = one["trials"]
    latency = lat.summary(tr.trial_of[v.method])
    if spd is not None and spd[3] != v.method:
        latency["baseline"] = paired_record(tr, spd[3], v.method)
    fields["extra"] = {**v.extra, "latency": latency, "latency_shape": one["shape"],
                       "harness_overhead_ms": round(one["overhead_ms"], 6)}
    if ctx is not None:
        fields["extra"]["traffic"] = traffic_record(ctx, v, int(one["shape"][0]), lat.kind, one["shape"])
    return fields


def timing_baselines(route: Route, ctx: ModelContext, device: str, timed: list) -> tuple[dict, dict, list]:
    """(bases name -> Built, pair_of method -> base name, names built here only for timing): each timed variant is
    paired with its own FP32 baseline in this process: the toolchain's baseline method (or the method-specific one,
    e.g. pt2e -> inductor), or the route's in-process FP32 reference when the declared baseline is another
    toolchain's row (e.g. the FP32 ONNX for ModelOpt's Q/DQ models)."""
    tc = TOOLCHAINS[ctx.cfg.toolchain]
    live = {v.method: v.built for v in timed}
    bases, pair_of, extra = {}, {}, []
    fallback = None
    for v in timed:
        bl = tc.baseline_for(v.method)
        if bl is None or bl == (ctx.cfg.toolchain, v.method):
            bases.setdefault(v.method, v.built)
            continue
        if bl[0] == ctx.cfg.toolchain and bl[1] in live:
            bases.setdefault(bl[1], live[bl[1]])
            pair_of[v.method] = bl[1]
            continue
        if fallback is None:
            try:
                fallback = route.timing_baseline(ctx, device) or False
            except Exception as exc:  # noqa: BLE001 - no paired speedup then; the rows still get their latency
                log.warning("no in-process timing baseline for %s on %s: %s", ctx.model, device, failure_reason(exc))
                fallback = False
            if fallback:
                extra.append(fallback[0])
        if fallback:
            bases.setdefault(fallback[0], fallback[1])
            pair_of[v.method] = fallback[0]
    return bases, pair_of, extra
