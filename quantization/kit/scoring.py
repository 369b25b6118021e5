"""Scoring a built variant: its accuracy through the model's task, its outputs kept for fidelity, fidelity against
its FP32 baseline's outputs and the reference runtime's, coverage, memory high-water, and scores reused from an
earlier row (--resume, later passes of a repeated run)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from quantization.kit.config import RouteConfig
from utils.errors import failure_reason
from utils.plan import Item, Plan
from utils.registry import TOOLCHAINS
from utils.specs import RANDOM_REASON
from quantization.kit.contract import Built, ModelContext

log = logging.getLogger("quantization.kit")

OUTPUTS = "outputs"  # <runs_dir>/outputs/<key>.npz: each variant's outputs on the evaluation samples


def outputs_key(cfg: RouteConfig, model: str, toolchain: str, method: str, device: str) -> str:
    parts = [model, cfg.weights, toolchain, method, device] + ([f"lim{cfg.eval_limit}"] if cfg.eval_limit else [])
    return "__".join(parts)


def find_outputs(cfg: RouteConfig, model: str, ref: tuple[str, str] | None, device: str, eval_sha: str | None):
    """Load the outputs a baseline run kept for these evaluation samples (same device first, else any)."""
    if ref is None:
        return None, None
    from utils.fidelity import load_outputs

    folder = Path(cfg.runs_dir) / OUTPUTS
    names = [outputs_key(cfg, model, *ref, device)] + [outputs_key(cfg, model, *ref, d) for d in ("cpu", "cuda")]
    for name in dict.fromkeys(names):
        p = folder / f"{name}.npz"
        if p.is_file():
            try:
                out = load_outputs(p)
            except (OSError, ValueError, KeyError):
                continue
            if getattr(out, "meta", {}).get("eval_sha") == eval_sha:
                return out, "/".join(ref)
    return None, None


def rss_mb() -> tuple[float | None, float | None]:
    """(current resident MB, high-water MB) of this process (Linux /proc), else (None, None)."""
    cur = hwm = None
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None, None
    return cur, hwm


def reset_peak() -> bool:
    """Reset the resident high-water mark (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def is_fp32(tc, method: str) -> bool:
    return any(m == method and p == "fp32" for vs in tc.variants.values() for m, p in vs)


def score_variant(ctx: ModelContext, built: Built, method: str, device: str) -> tuple[dict, dict]:
    """Score once, keep the outputs, compare them with the baseline's and (FP32 rows) the reference runtime's."""
    from utils.fidelity import compare, save_outputs
    from utils.registry import REFERENCE

    cfg, task, tc = ctx.cfg, ctx.task, TOOLCHAINS[ctx.cfg.toolchain]
    eval_sha = ctx.hashes.get("eval_sha")
    bl = tc.baseline_for(method)
    is_baseline = bl is None or bl == (cfg.toolchain, method)
    reference, ref_name = (None, None) if is_baseline else find_outputs(cfg, ctx.model, bl, device, eval_sha)
    t0 = time.perf_counter()
    score, outputs, fid = task.score_outputs(built.predict, ctx.data, batch=built.score_batch, pad=built.score_pad,
                                             progress=True, reference=reference)
    eval_s = time.perf_counter() - t0
    save_outputs(Path(cfg.runs_dir) / OUTPUTS / f"{outputs_key(cfg, ctx.model, cfg.toolchain, method, device)}.npz",
                 outputs, meta={"eval_sha": eval_sha, "toolchain": cfg.toolchain, "method": method, "device": device})
    fields = {**task.score_fields(score), **task.fidelity_fields(fid), "fidelity_vs": ref_name}
    extra = {**score.extra(), "eval_seconds": round(eval_s, 3)}
    if ctx.source.weights == "random":  # accuracy of random weights means nothing; agreement/SQNR/KL still do
        # flips stay: counted against the same labels as ever, they are few (the random baseline is almost never
        # right), which is what they should say; the accuracy cells are left empty
        fields.update(value=None, top5=None)
        extra = {"eval_seconds": extra["eval_seconds"], "accuracy": RANDOM_REASON,
                 "fidelity_samples": ctx.hashes.get("n_eval") or ctx.hashes.get("n_eval_tokens")}
    if fid and fid.get("ppl_bootstrap"):
        extra["fidelity_ppl_bootstrap"] = {k: fid["ppl_bootstrap"].get(k) for k in
                                           ("ratio", "ratio_ci_low", "ratio_ci_high", "significant", "block_len")}
    if fid and fid.get("kl_exact") is False:
        extra["kl_note"] = "KL over the baseline's top-k tokens plus one tail bucket (a lower bound)"
    if is_fp32(tc, method) and (cfg.toolchain, method) != REFERENCE:
        ref_out, xname = find_outputs(cfg, ctx.model, REFERENCE, "cpu", eval_sha)
        if ref_out is not None:
            x = compare(ref_out, outputs)
            fields.update(xrt_vs=xname, xrt_agreement=x.get("agreement"), xrt_sqnr_db=x.get("sqnr_db"))
            if task.kind == "language-model":
                extra["xrt_ppl_ratio"] = x.get("ppl_ratio")
    return fields, extra


def score_built(ctx: ModelContext, built: Built, progress: bool = False):
    """The variant's accuracy on the shared evaluation samples, through the model's task (as the bench scores it)."""
    return ctx.task.score(built.predict, ctx.data, batch=built.score_batch, pad=built.score_pad, progress=progress)


def coverage_of(ctx: ModelContext, built: Built, method: str) -> dict | None:
    """The built variant's coverage (quantization/kit/macs.py `coverage`: share of the model's MACs its runtime ran in
    reduced precision, and the layers that differ from the variant's quantization scope) with the scope's name and
    where it was read; None when the route reports no layers. Raises when the model's MAC table cannot be made."""
    if built.reduced_layers is None and built.reduced_nodes is None:
        return None
    from quantization.kit.macs import ALL_LAYERS, coverage, layers_of

    table = ctx.macs
    name, scope = ctx.scope_for(method)
    reduced = built.reduced_layers
    if reduced != ALL_LAYERS:
        reduced = list(reduced or []) + (layers_of(table, built.reduced_nodes) if built.reduced_nodes else [])
    return {**coverage(table, reduced, scope.keeps), "scope": name, "scope_keeps": list(scope.keep),
            "source": built.coverage_source or "the route's runtime"}


def variant_coverage(ctx: ModelContext, built: Built, it: Item, extra: dict) -> dict:
    """The row's coverage (share of the model's MACs the runtime ran in reduced precision) from the layers the route
    reports, compared with the variant's quantization scope; the comparison goes to the notes and `extra`. FP32 rows
    have none; a quantized row whose route reports nothing says so."""
    if it.precision == "fp32":
        return {}
    from quantization.kit.macs import coverage_note

    try:
        cov = coverage_of(ctx, built, it.method)
    except Exception as exc:  # noqa: BLE001 - no MAC table (an unusual graph): the row stands without its coverage
        log.warning("no MAC table for %s: %s", ctx.model, failure_reason(exc))
        built.notes.append(f"coverage not computed: no MAC table ({failure_reason(exc, 160)})")
        return {}
    if cov is None:
        built.notes.append("coverage not reported: this route does not read which layers its runtime ran in reduced "
                           "precision")
        return {}
    built.notes.append(coverage_note(cov, cov["scope"], cov["source"]))
    extra["coverage"] = cov
    return {"coverage_pct": cov["coverage_pct"]}


SCORE_FIELDS = ("value", "top5", "agreement", "flips_lost", "flips_gained", "sqnr_db", "kl", "fidelity_vs", "xrt_vs",
                "xrt_agreement", "xrt_sqnr_db", "peak_mem_mb", "gpu_peak_mem_mb")


def reused_scores(ctx: ModelContext, it: Item, plan: Plan) -> tuple[dict, dict] | None:
    """The scoring and fidelity fields of the row `it.scores_from` (scoring is deterministic): --resume of an item
    scored by an earlier run of the same configuration that stopped before timing it, or a later pass of a repeated
    run; None (score again) when that row is missing or was scored with other settings."""
    from utils.rows import read_row

    r = read_row(Path(ctx.cfg.runs_dir) / f"{it.scores_from}.json")
    if r is None or r.status != "ok" or (r.extra.get("plan_item") or {}).get("score_key") != plan.score_key(it):
        return None
    drop = ("latency", "latency_shape", "harness_overhead_ms", "pending", "plan_item")
    extra = {k: v for k, v in r.extra.items() if k not in drop}
    extra["scores_from_run"] = (r.environment or {}).get("run_id")
    extra["scores_from_row"] = it.scores_from
    log.info("%s: scores reused from run %s (row %s); building and timing only", it.ident, extra["scores_from_run"],
             it.scores_from)
    return {k: getattr(r, k) for k in SCORE_FIELDS}, extra
