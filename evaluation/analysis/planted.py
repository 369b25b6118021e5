"""Planted degradation: corrupt one thing on purpose and check that the suite flags it (torch env).

    python -m evaluation.analysis.planted                       # default plants -> results/local/planted/
    python -m evaluation.analysis.planted --publish             # the committed check: results/planted/
    python -m evaluation.analysis.planted --plants int2:fc,int3:conv1,int4:layer2.0.downsample.0,int4:fc,act-x4,act-x16

For each plant, the Torch.FX INT8 ResNet50 (the route's `resnet_fx`, default calibration subset) is
corrupted after conversion (evaluation.analysis.layer_report: `int<b>:<layer>` = that layer's weights become
symmetric per-tensor b-bit values; `act-x<f>` = every activation quantizer's scale x f), scored on the
test split and reported per layer. Rows go to a separate runs dir (results/planted/runs/, toolchain `torch`,
methods `eager` (FP32 baseline), `fx` (clean INT8) and `fx-planted-<plant>`), never results/runs, so the
main table stays clean; `evaluation.report.aggregate --runs-dir results/planted --out results/planted` (run at
the end in the report env) gives them the same Δ and McNemar columns as the main table. Per plant it
prints: top-1, Δ vs FP32, McNemar exact p on the per-sample correctness, and the worst layers of the
per-layer report (results/planted/layer_report_<plant>.csv; planted_summary.json has it all).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

from utils.errors import cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR

log = logging.getLogger("evaluation.analysis.planted")
PLANTED_DIR = RESULTS_DIR / "planted"  # published (--publish): rows in runs/, tables, layer reports and the summary
LOCAL_PLANTED_DIR = LOCAL_DIR / "planted"  # a user's run
DEFAULT_PLANTS = "int2:fc,int3:conv1,int4:layer2.0.downsample.0,int4:fc,act-x4,act-x16"


def evaluate_plant(fp32, qmodel, data, base_correct, spec: str) -> dict:
    """Corrupt a copy of qmodel with `spec`; score it and report its layers (one pass over the test split)."""
    from evaluation.analysis.layer_report import apply_plant, layer_errors, parse_plant
    from utils.metrics import classification_score
    from utils.fidelity import classifier_fidelity
    from utils.stats import mcnemar_exact

    plant = parse_plant(spec)
    q = copy.deepcopy(qmodel)
    info = apply_plant(q, plant)
    outs: dict = {}
    t0 = time.time()
    layers = layer_errors(fp32, q, data.test.x, planted=plant.layer if plant else None, outputs=outs)
    score = classification_score([(outs["quantized"], data.test.y)])
    test = mcnemar_exact(base_correct, score.correct)
    # fidelity of the logits against FP32 (the columns the results table carries): sees faults top-1 does not
    fid = classifier_fidelity(outs["fp32"], outs["quantized"], data.test.y)
    return {"spec": spec, "plant": plant, "info": info, "score": score, "mcnemar": test, "layers": layers,
            "fidelity": fid, "seconds": time.time() - t0}


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.analysis.planted", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--plants", default=DEFAULT_PLANTS, help="comma list; '+' joins faults into one plant (int4:fc+act-x4)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None,
                    help="rows go to <out>/runs; reports and tables to <out> (default results/local/planted)")
    ap.add_argument("--publish", action="store_true", help="the committed check: --out results/planted")
    ap.add_argument("--no-aggregate", action="store_true", help="do not run evaluation.report.aggregate on the runs dir")
    args = ap.parse_args(argv)
    setup_logging()
    if args.publish and args.out is not None:
        from utils.errors import SuiteError

        raise SuiteError("--publish writes results/planted; drop --out")
    args.out = PLANTED_DIR if args.publish else (args.out or LOCAL_PLANTED_DIR)
    from evaluation.analysis.layer_report import parse_plant, write_csv
    from quantization.kit import build_variant, score_built
    from quantization.kit.config import RouteConfig, RowWriter

    specs = [s.strip() for s in args.plants.split(",") if s.strip()]
    for s in specs:
        parse_plant(s.replace("+", ","))  # bad spec -> one-line error before the slow part
    argv = ["--calib-samples", str(args.calib_samples), "--threads", str(args.threads)]
    ctx, fp32_built = build_variant("torch", "resnet50", "eager", argv=argv)
    _, fx_built = build_variant("torch", "resnet50", "fx", argv=argv)
    manifest, data, fp32, q = ctx.manifest, ctx.data, fp32_built.handle, fx_built.handle
    cfg = RouteConfig(toolchain="torch", batches={"resnet50": (1,)}, calib_samples={"resnet50": args.calib_samples},
                      threads=args.threads, runs_dir=args.out / "runs")
    writer = RowWriter(cfg, "resnet50", manifest, hashes=ctx.hashes)
    base = score_built(ctx, fp32_built)
    writer.write(writer.row("eager", "fp32", 1, value=base.top1, top5=base.top5, compute_precision="fp32",
                            notes="FP32 baseline of the planted-fault runs (accuracy only)", extra=base.extra()))
    results = [evaluate_plant(fp32, q, data, base.correct, "")]  # the clean FX model
    for s in specs:
        results.append(evaluate_plant(fp32, q, data, base.correct, s.replace("+", ",")))
    summary = []
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"FP32 top-1 {base.top1:.2f}% on {len(data.test)} test samples")
    print(f"{'plant':<28} {'top1':>6} {'delta':>7} {'p':>10} {'sig':>4} {'SQNR':>6}  worst layers (local SQNR dB)")
    for r in results:
        plant, score, t = r["plant"], r["score"], r["mcnemar"]
        method = "fx" if plant is None else f"fx-planted-{plant.slug}"
        sig = t["p_value"] < 0.05
        worst = r["layers"][:3]
        write_csv(r["layers"], args.out / f"layer_report_{plant.slug if plant else 'clean'}.csv")
        writer.write(writer.row(
            method, "int8", 1, value=score.top1, top5=score.top5, compute_precision="int8",
            calib_samples=len(data.calib), calib_method="minmax+histogram (x86 default)",
            fidelity_vs="torch/eager (fused FP32)", agreement=r["fidelity"]["agreement"],
            flips_lost=r["fidelity"]["flips_lost"], flips_gained=r["fidelity"]["flips_gained"],
            sqnr_db=r["fidelity"]["sqnr_db"], kl=r["fidelity"]["kl"],
            notes=("clean FX INT8" if plant is None else f"PLANTED FAULT: {plant.describe()}"),
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
