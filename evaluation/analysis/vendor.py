"""Each CPU route beside its vendor's own minimal recipe, on the same FP32 artifact and the same quantization scope,
timed in the same interleaved trials.

    python3 -m evaluation.analysis.vendor                                    # both models, random weights -> results/local/
    python3 -m evaluation.analysis.vendor --models resnet50 --toolchains onnxruntime --min-iters 5
    python3 -m evaluation.analysis.vendor --publish                          # results/vendor_<model>.csv (docs/routes/*.md)

Stdlib launcher (like evaluation.launch.sweep): prepares the models in the model-preparing environment, then runs
this module's `measure` sub-command in each toolchain's environment. There, for every (route method, vendor recipe)
pair, the route's variant is built exactly as the bench builds it (quantization.kit.build_variant) and the vendor's
minimal documented recipe is applied to the same FP32 artifact (the manifest's ONNX, or the same torch checkpoint)
with the same calibration samples and the same scope (the layers the route's scope keeps in the higher precision are
excluded from the recipe too); then both are timed at batch 1 and the model's large batch in the same interleaved
trials (utils.harness.interleaved). Rows: each side's p50, the time ratio route / vendor with a paired 95 %
interval (utils.stats.speedup_ci), whether the route is within 10 % of the recipe (yes: the ratio is; no: its whole
interval is outside; unclear: the ratio is outside, the interval reaches inside), each side's coverage (% of the
model's MACs run in reduced precision, read from its runtime), and what the route does differently.

Recipes are the vendors' documented minimal paths, nothing of the suite's own tuning; each toolchain that has one
declares it (Toolchain.tools["vendor"]: quantization/<toolchain>/vendor.py, whose PAIRS (task -> route methods),
RECIPE and DIFFERENCES (method -> text) this launcher reads, and whose recipe(ctx, method, threads) builds it).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from utils.cli import ArgParser, add_output_flags, output_folder, positive_int
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.registry import MODEL_DECLS, MODELS, PREPARE_TOOLCHAIN, TOOLCHAINS, parse_list, task_of, tool, with_tool

WITHIN = 0.10
FIELDS = ("toolchain", "model", "weights", "route_method", "vendor_recipe", "batch", "route_p50_ms", "vendor_p50_ms",
          "route_vs_vendor", "ci_low", "ci_high", "within_10pct", "route_coverage_pct", "vendor_coverage_pct",
          "trials", "status", "note")


def say(msg: str) -> None:
    print(f"[vendor {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def default_batches(model: str) -> tuple[int, ...]:
    """Batch 1 and the model's large batch (the largest of its declared latency batches)."""
    return tuple(sorted({1, max(MODEL_DECLS[model].batches)}))


# ------------------------------------------------------------------------------ the declared recipes

def vendors() -> dict:
    """toolchain -> its vendor-recipe module (Toolchain.tools["vendor"]), in run order."""
    return {t: tool(t, "vendor") for t in with_tool("vendor")}


def pairs_of(toolchain: str, model: str) -> tuple[str, ...]:
    """The route methods of `model` that the toolchain compares with its vendor's recipe."""
    return tuple(tool(toolchain, "vendor").PAIRS.get(task_of(model), ()))


def recipe_text(toolchain: str, method: str) -> str:
    return tool(toolchain, "vendor").RECIPE.get(method, "")


# ------------------------------------------------------------------------------ the launcher (stdlib)

def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python3 -m evaluation.analysis.vendor", description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog=__doc__.split("\n\n", 1)[1] + "\nDeclared recipes:\n" + "\n".join(
                       f"  {t} {m}: {text}" for t, mod in vendors().items() for m, text in mod.RECIPE.items()))
    sub = ap.add_subparsers(dest="cmd")
    for p in (ap, sub.add_parser("measure", help="(internal) one toolchain and model, in its environment")):
        p.add_argument("--models", "--model", dest="models", default=",".join(m for m in MODELS),
                       help="comma list of models")
        p.add_argument("--toolchains", "--toolchain", dest="toolchains", default=",".join(with_tool("vendor")),
                       help=f"comma list of {', '.join(with_tool('vendor'))}")
        p.add_argument("--methods", default=None, help="route methods to compare (default: " + "; ".join(
            f"{t}: {', '.join(dict.fromkeys(x for v in mod.PAIRS.values() for x in v))}"
            for t, mod in vendors().items()) + ")")
        p.add_argument("--weights", default="random", choices=("embedded", "random"),
                       help="random (default): the real-size models; embedded: the small trained ones")
        p.add_argument("--batches", default=None, help="comma list (default: 1 and the model's large batch: " + "; ".join(
            f"{m} {','.join(map(str, default_batches(m)))}" for m in MODELS) + ")")
        p.add_argument("--calib-samples", type=positive_int, default=None,
                       help="calibration samples (default: the declaration's for the weights)")
        p.add_argument("--threads", type=positive_int, default=2)
        p.add_argument("--min-iters", type=positive_int, default=10, help="interleaved trials per batch")
        add_output_flags(p, "the CSVs")
        p.add_argument("-v", "--verbose", action="store_true")
    sub.choices["measure"].add_argument("--part", type=Path, required=True, help="JSON file the rows go to")
    return ap


def selection(args) -> list[tuple[str, str, tuple[str, ...]]]:
    """(toolchain, model, route methods) the flags select, checked against the declared pairs (one line, exit 2, when
    empty)."""
    tcs = parse_list("toolchain", args.toolchains, with_tool("vendor"))
    models = parse_list("model", args.models, MODELS)
    named = tuple(x.strip() for x in args.methods.split(",") if x.strip()) if args.methods else None
    out = []
    for tc in tcs:
        for m in models:
            methods = tuple(x for x in pairs_of(tc, m) if named is None or x in named)
            if methods:
                out.append((tc, m, methods))
    if not out:
        raise SuiteError("the flags select no (route, vendor recipe) pair; pairs: " + "; ".join(
            f"{t}/{m}: {','.join(pairs_of(t, m))}" for t in with_tool("vendor") for m in MODELS if pairs_of(t, m)))
    return out


def batches_of(args, model: str) -> tuple[int, ...]:
    if not args.batches:
        return default_batches(model)
    try:
        out = tuple(sorted({int(x) for x in args.batches.split(",") if x.strip()}))
    except ValueError:
        raise SuiteError(f"--batches must be a comma list of integers, got {args.batches!r}") from None
    if not out or min(out) < 1:
        raise SuiteError("--batches must name batches >= 1")
    return out


def out_dir(args) -> Path:
    return output_folder(args, LOCAL_DIR, RESULTS_DIR)


def write_csv(path: Path, rows: list[dict]) -> Path:
    from utils.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def launch(args) -> int:
    from evaluation.launch import envs

    pairs = selection(args)
    out = out_dir(args)
    models = list(dict.fromkeys(m for _, m, _ in pairs))
    for m in models:
        batches_of(args, m)
    prep_env = TOOLCHAINS[PREPARE_TOOLCHAIN].env.name
    try:
        envs.ensure_env(prep_env)
    except envs.EnvError as exc:
        raise SuiteError(f"environment '{prep_env}' unavailable: {exc}") from None
    say(f"preparing {', '.join(models)} ({args.weights}) in the {prep_env} environment")
    rc = envs.run_in_env(prep_env, ["-m", "models.prepare", "--model", ",".join(models), "--weights", args.weights,
                                    "--threads", str(args.threads)]).returncode
    if rc:
        raise SuiteError(f"models.prepare exited {rc}")
    rows: dict[str, list[dict]] = {m: [] for m in models}
    failed = []
    with tempfile.TemporaryDirectory(prefix="vendor-") as tmp:
        for tc, model, methods in pairs:
            env = TOOLCHAINS[tc].env.name
            part = Path(tmp) / f"{tc}-{model}.json"
            cmd = ["-m", "evaluation.analysis.vendor", "measure", "--toolchain", tc, "--model", model, "--methods",
                   ",".join(methods), "--weights", args.weights, "--threads", str(args.threads), "--min-iters",
                   str(args.min_iters), "--part", str(part)]
            for flag, val in (("--batches", args.batches), ("--calib-samples", args.calib_samples)):
                if val is not None:
                    cmd += [flag, str(val)]
            say(f"{tc} / {model}: {', '.join(methods)} beside the vendor's recipe (in the {env} environment)")
            try:
                envs.ensure_env(env)
                rc = envs.run_in_env(env, cmd + (["-v"] if args.verbose else [])).returncode
            except envs.EnvError as exc:
                rc, why = 1, f"environment '{env}' unavailable: {exc}"
            else:
                why = f"exit code {rc}"
            got = json.loads(part.read_text()) if part.is_file() else []
            rows[model] += got
            done = {r["route_method"] for r in got}
            for meth in methods:
                if meth not in done:
                    failed.append(f"{tc}/{model}/{meth}: {why}")
                    rows[model].append({"toolchain": tc, "model": model, "weights": args.weights, "route_method": meth,
                                        "vendor_recipe": recipe_text(tc, meth), "status": "failed", "note": why})
    for m, rs in rows.items():
        path = write_csv(out / f"vendor_{m}.csv", rs)
        say(f"{len(rs)} rows -> {path}")
        for r in rs:
            if r.get("status") == "ok":
                say(f"  {r['toolchain']} {r['route_method']} b{r['batch']}: route {r['route_p50_ms']} ms, vendor "
                    f"{r['vendor_p50_ms']} ms, route/vendor {r['route_vs_vendor']} [{r['ci_low']}-{r['ci_high']}], "
                    f"coverage {r['route_coverage_pct']} / {r['vendor_coverage_pct']} %")
    for f in failed:
        say(f"failed: {f}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------ in a toolchain's environment

def _coverage_pct(ctx, reduced_layers, reduced_nodes) -> float | None:
    from quantization.kit.macs import coverage, layers_of

    if reduced_layers is None and reduced_nodes is None:
        return None
    layers = list(reduced_layers or []) + (layers_of(ctx.macs, reduced_nodes) if reduced_nodes else [])
    return coverage(ctx.macs, layers)["coverage_pct"]


def measure_pair(toolchain: str, model: str, method: str, args) -> list[dict]:
    """Build the route's variant and the vendor's recipe, time both at each batch in the same interleaved trials."""
    import numpy as np

    from quantization.kit import build_variant, coverage_of
    from utils.harness import Timed, interleaved
    from utils.stats import speedup_ci

    argv = ["--weights", args.weights, "--threads", str(args.threads)]
    if args.calib_samples:
        argv += ["--calib-samples", str(args.calib_samples)]
    ctx, built = build_variant(toolchain, model, method, device="cpu", argv=argv)
    cov = coverage_of(ctx, built, method)
    vendor = tool(toolchain, "vendor")
    recipe = vendor.recipe(ctx, method, args.threads)
    vcov = _coverage_pct(ctx, recipe.reduced_layers, recipe.reduced_nodes)
    rows = []
    try:
        for b in batches_of(args, model):
            li = ctx.task.latency_input(b, ctx.manifest, ctx.data)
            fn = built.timed(li.x) if built.timed is not None else (lambda x=li.x: built.predict(x))
            units = {"route": Timed(fn, li.items, built.latency_kind, built.sync, built.timer),
                     "vendor": Timed(recipe.timed(li.x), li.items)}
            tr = interleaved(units, min_trials=args.min_iters, budget_s=0.0, warmup=2)
            r, v = tr.paired("route", "vendor")
            p, lo, hi = speedup_ci(r, v, paired=True)  # median(route) / median(vendor): > 1 when the route is slower
            within = "yes" if abs(p - 1.0) <= WITHIN else ("no" if lo > 1 + WITHIN or hi < 1 - WITHIN else "unclear")
            note = vendor.DIFFERENCES.get(method, "")
            if within != "yes":
                note = (f"route {'slower' if p > 1 else 'faster'} than the recipe by {abs(p - 1) * 100:.0f} % "
                        f"(beyond {WITHIN * 100:.0f} %{'' if within == 'no' else ', though the interval reaches within'}"
                        "); " + note)
            if cov is not None and vcov is not None and abs(cov["coverage_pct"] - vcov) > 1.0:
                note = f"coverage differs (route {cov['coverage_pct']:.1f} %, recipe {vcov:.1f} %); " + note
            rows.append({"toolchain": toolchain, "model": model, "weights": args.weights, "route_method": method,
                         "vendor_recipe": vendor.RECIPE[method], "batch": b,
                         "route_p50_ms": round(float(np.median(r)), 3), "vendor_p50_ms": round(float(np.median(v)), 3),
                         "route_vs_vendor": round(float(p), 3), "ci_low": round(float(lo), 3),
                         "ci_high": round(float(hi), 3), "within_10pct": within,
                         "route_coverage_pct": None if cov is None else round(cov["coverage_pct"], 1),
                         "vendor_coverage_pct": None if vcov is None else round(vcov, 1), "trials": len(r),
                         "status": "ok", "note": note})
    finally:
        for c in (built.close, recipe.close):
            if c is not None:
                c()
    return rows


def measure(args) -> int:
    (tc,) = parse_list("toolchain", args.toolchains, with_tool("vendor"))
    (model,) = parse_list("model", args.models, MODELS)
    pairs = pairs_of(tc, model)
    methods = [m.strip() for m in (args.methods or ",".join(pairs)).split(",") if m.strip()]
    rows, rc = [], 0
    for method in methods:
        if method not in pairs:
            raise SuiteError(f"{tc}/{model} has no vendor recipe for {method!r} (pairs: {', '.join(pairs)})")
        try:
            rows += measure_pair(tc, model, method, args)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - one pair failing leaves the others' rows
            from utils.errors import failure_reason

            rc = 1
            rows.append({"toolchain": tc, "model": model, "weights": args.weights, "route_method": method,
                         "vendor_recipe": recipe_text(tc, method), "status": "failed", "note": failure_reason(exc)})
        from utils.atomic import atomic_write_json

        atomic_write_json(args.part, rows)
    return rc


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "measure":
        setup_logging(args.verbose)
        return measure(args)
    return launch(args)


if __name__ == "__main__":
    raise SystemExit(main())
