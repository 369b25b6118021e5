"""Planted degradation: corrupt one thing on purpose and check that the suite flags it (the toolchain's env).

    python -m evaluation.analysis.planted                       # default plants -> results/local/planted/
    python -m evaluation.analysis.planted --publish             # the committed check: results/planted/
    python -m evaluation.analysis.planted --plants int2:fc,int3:conv1,int4:layer2.0.downsample.0,int4:fc,act-x4,act-x16

A toolchain that declares a `planted` tool (Toolchain.tools; quantization/torch/planted.py: the FX INT8 ResNet50,
`int<b>:<layer>` = that layer's weights become symmetric per-tensor b-bit values, `act-x<f>` = every activation
quantizer's scale x f) corrupts its quantized variant after conversion; each plant is scored on the test split and
reported per layer (evaluation.analysis.layer_report's columns). Rows go to a separate runs dir
(results/planted/runs/, methods <baseline> (FP32), <quantized> (clean) and <quantized>-planted-<plant>), never
results/runs, so the main table stays clean; `evaluation.report.aggregate --runs-dir results/planted --out
results/planted` (run at the end in the report env) gives them the same Δ and McNemar columns as the main table. Per
plant it prints: top-1, Δ vs FP32, McNemar exact p on the per-sample correctness, and the worst layers of the
per-layer report (results/planted/layer_report_<plant>.csv; planted_summary.json has it all).
"""
from __future__ import annotations

import argparse
import json
import logging
import time

from utils.cli import add_output_flags, output_folder
from utils.errors import cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.registry import with_tool

log = logging.getLogger("evaluation.analysis.planted")
PLANTED_DIR = RESULTS_DIR / "planted"  # published (--publish): rows in runs/, tables, layer reports and the summary
LOCAL_PLANTED_DIR = LOCAL_DIR / "planted"  # a user's run


def planted_tool(toolchain: str | None = None):
    """(toolchain, its planted-fault module): the named one, or the first declaring one."""
    from utils.registry import tool, with_tool

    tc = toolchain or with_tool("planted")[0]
    return tc, tool(tc, "planted")


def evaluate_plant(fp32, qmodel, data, base_correct, spec: str, toolchain: str | None = None) -> dict:
    """Corrupt a copy of qmodel with `spec` (the toolchain's planted tool); score it and report its layers (one pass
    over the test split)."""
    from utils.fidelity import classifier_fidelity
    from utils.metrics import classification_score
    from utils.stats import mcnemar_exact

    _, mod = planted_tool(toolchain)
    t0 = time.time()
    r = mod.corrupt(fp32, qmodel, data.test.x, spec)
    outs = r["outputs"]
    score = classification_score([(outs["quantized"], data.test.y)])
    test = mcnemar_exact(base_correct, score.correct)
    # fidelity of the logits against FP32 (the columns the results table carries): sees faults top-1 does not
    fid = classifier_fidelity(outs["fp32"], outs["quantized"], data.test.y)
    return {"spec": spec, "slug": r["slug"], "description": r["description"], "info": r["info"], "score": score,
            "mcnemar": test, "layers": r["layers"], "fidelity": fid, "seconds": time.time() - t0}


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.analysis.planted", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--toolchain", default=None,
                    help="whose quantized variant (default: the first declaring planted faults: "
                         f"{', '.join(with_tool('planted'))})")
    ap.add_argument("--plants", default=None,
                    help="comma list; '+' joins faults into one plant (int4:fc+act-x4) (default: the toolchain's)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    add_output_flags(ap, "rows (<out>/runs), reports and tables", "results/local/planted", "results/planted")
    ap.add_argument("--no-aggregate", action="store_true", help="do not run evaluation.report.aggregate on the runs dir")
    args = ap.parse_args(argv)
    setup_logging()
    args.out = output_folder(args, LOCAL_PLANTED_DIR, PLANTED_DIR)
    from evaluation.analysis.layer_report import write_csv
    from quantization.kit import build_variant, score_built
    from quantization.kit.config import RouteConfig, RowWriter
    from utils.registry import TOOLCHAINS, check_choice

    tc, mod = planted_tool(check_choice("toolchain", args.toolchain, with_tool("planted")) if args.toolchain else None)
    model = mod.MODEL
    specs = [s.strip() for s in (args.plants or mod.DEFAULT_PLANTS).split(",") if s.strip()]
    for s in specs:
        mod.check(s.replace("+", ","))  # bad spec -> one-line error before the slow part
    argv = ["--calib-samples", str(args.calib_samples), "--threads", str(args.threads)]
    ctx, fp32_built = build_variant(tc, model, mod.BASELINE, argv=argv)
    _, q_built = build_variant(tc, model, mod.QUANTIZED, argv=argv)
    manifest, data, fp32, q = ctx.manifest, ctx.data, fp32_built.handle, q_built.handle
    cfg = RouteConfig(toolchain=tc, batches={model: (1,)}, calib_samples={model: args.calib_samples},
                      threads=args.threads, runs_dir=args.out / "runs")
    writer = RowWriter(cfg, model, manifest, hashes=ctx.hashes)
    base = score_built(ctx, fp32_built)
    writer.write(writer.row(mod.BASELINE, "fp32", 1, value=base.top1, top5=base.top5, compute_precision="fp32",
                            notes="FP32 baseline of the planted-fault runs (accuracy only)", extra=base.extra()))
    precision = TOOLCHAINS[tc].precision(model, mod.QUANTIZED)
    results = [evaluate_plant(fp32, q, data, base.correct, "", tc)]  # the clean quantized model
    for s in specs:
        results.append(evaluate_plant(fp32, q, data, base.correct, s.replace("+", ","), tc))
    summary = []
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"FP32 top-1 {base.top1:.2f}% on {len(data.test)} test samples")
    print(f"{'plant':<28} {'top1':>6} {'delta':>7} {'p':>10} {'sig':>4} {'SQNR':>6}  worst layers (local SQNR dB)")
    for r in results:
        slug, score, t = r["slug"], r["score"], r["mcnemar"]
        method = mod.QUANTIZED if slug is None else f"{mod.QUANTIZED}-planted-{slug}"
        sig = t["p_value"] < 0.05
        worst = r["layers"][:3]
        write_csv(r["layers"], args.out / f"layer_report_{slug or 'clean'}.csv")
        writer.write(writer.row(
            method, precision, 1, value=score.top1, top5=score.top5, compute_precision=precision,
            calib_samples=len(data.calib), calib_method=mod.CALIB_METHOD,
            fidelity_vs=mod.FIDELITY_VS, agreement=r["fidelity"]["agreement"],
            flips_lost=r["fidelity"]["flips_lost"], flips_gained=r["fidelity"]["flips_gained"],
            sqnr_db=r["fidelity"]["sqnr_db"], kl=r["fidelity"]["kl"],
            notes=(f"clean {mod.LABEL}" if slug is None else f"PLANTED FAULT: {r['description']}"),
            extra={**score.extra(), "plant": r["spec"], "plant_info": r["info"], "mcnemar_vs_fp32": t,
                   "worst_layers": [{k: l[k] for k in ("layer", "local_sqnr_db", "accum_sqnr_db")} for l in worst]}))
        rank = next((l["rank"] for l in r["layers"] if l["planted"]), None)
        summary.append({"plant": r["spec"] or "clean", "top1": score.top1, "delta": score.top1 - base.top1,
                        "sqnr_db": r["fidelity"]["sqnr_db"], "agreement": r["fidelity"]["agreement"],
                        "kl": r["fidelity"]["kl"],
                        "p_value": t["p_value"], "significant": sig, "n_base_only": t["n_base_only"],
                        "n_other_only": t["n_other_only"], "planted_layer_rank": rank,
                        "worst_layers": [(l["layer"], round(l["local_sqnr_db"], 2)) for l in worst]})
        print(f"{(r['spec'] or 'clean'):<28} {score.top1:>6.2f} {score.top1 - base.top1:>+7.2f} {t['p_value']:>10.3g} "
              f"{'yes' if sig else 'no':>4} {r['fidelity']['sqnr_db']:>6.1f}  " + ", ".join(f"{l['layer']} {l['local_sqnr_db']:.1f}" for l in worst)
              + (f"  (planted layer rank {rank})" if rank else ""))
    from utils.atomic import atomic_write_text

    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["plant", "top1", "delta", "mcnemar_p", "lost", "gained", "logit_sqnr_db", "agreement", "kl",
                "planted_layer_rank", "worst_layer", "worst_local_sqnr_db", "next_layer", "next_local_sqnr_db"])
    for x in summary:
        wl = x["worst_layers"] + [("", float("nan"))] * 2
        w.writerow([x["plant"], f"{x['top1']:.2f}", f"{x['delta']:+.2f}", f"{x['p_value']:.3g}", x["n_base_only"],
                    x["n_other_only"], f"{x['sqnr_db']:.1f}", f"{x['agreement']:.2f}", f"{x['kl']:.2e}",
                    x["planted_layer_rank"] or "", wl[0][0], f"{wl[0][1]:.1f}", wl[1][0], f"{wl[1][1]:.1f}"])
    atomic_write_text(args.out / "plants.csv", buf.getvalue())
    atomic_write_text(args.out / "planted_summary.json",
                      json.dumps({"fp32_top1": base.top1, "n_eval": len(data.test), "plants": summary}, indent=1))
    if not args.no_aggregate:
        from evaluation.launch import envs

        if envs.is_ready("report"):
            envs.run_in_env("report", ["-m", "evaluation.report.aggregate", "--runs-dir", str(args.out / "runs"),
                                       "--out", str(args.out)])
        else:
            log.warning("report env not ready: run `python3 -m evaluation.launch.envs report` and aggregate %s", args.out / "runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
