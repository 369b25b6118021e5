"""Sweep tables and plots from their rows (report environment: pandas, matplotlib).

    python -m evaluation.report.sweeps plot-calib --toolchain onnxruntime --model resnet50 --dir DIR --png P --csv C
    python -m evaluation.report.sweeps plot-batch --model resnet50 --dir DIR --png P --csv C

`python3 -m evaluation.launch.sweep calib|batch` runs the points and then these, in the report environment.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import ArgParser
from utils.errors import SuiteError, cli_main
from utils.registry import ORDER, task_of

LATENCY_SHAPE = {"image-classification": "3x224x224", "language-model": "128 tokens"}


def significance(row, base) -> tuple[float | None, bool | None]:
    """(p-value or None, significant) of row vs base: the table's own paired tests (evaluation.report.aggregate)."""
    from evaluation.report.table import significance as paired_test

    if base is None or row.value is None or base.value is None:
        return None, None
    t = paired_test(row, base)
    return t["delta_p_value"], t["delta_significant"]


def _save_png(fig, path: Path) -> None:
    from utils.atomic import atomic_write_figure

    atomic_write_figure(fig, path)


def calib_table(toolchain: str, model: str, root: Path):
    """One record per (calibration size, method) from the rows under root/n<N>/ (+ root/baseline/)."""
    import pandas as pd

    from utils.rows import read_rows

    root = Path(root)
    base = None
    if (root / "baseline").is_dir():
        ok = [r for r in read_rows(root / "baseline") if r.status == "ok" and r.value is not None]
        base = min(ok, key=lambda r: r.batch) if ok else None
    recs = []
    for d in sorted(root.glob("n*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0):
        if not d.name[1:].isdigit():
            continue
        n = int(d.name[1:])
        per_method: dict[str, object] = {}
        for r in read_rows(d):
            if r.toolchain != toolchain or r.model != model:
                continue
            keep = per_method.get(r.method)
            if keep is None or (keep.status != "ok" and r.status == "ok") or (r.status == keep.status and r.batch < keep.batch):
                per_method[r.method] = r
        for method, r in per_method.items():
            p, sig = significance(r, base) if r.status == "ok" else (None, None)
            recs.append(dict(
                toolchain=toolchain, model=model, method=method, precision=r.precision, calib_size=n,
                calib_samples=r.calib_samples, metric=r.metric, value=r.value, top5=r.top5,
                baseline_value=base.value if base else None,
                delta=(r.value - base.value) if (base and r.value is not None) else None,
                delta_p_value=p, delta_significant=sig, calib_seconds=r.calib_seconds, calib_method=r.calib_method,
                latency_p50_ms=r.latency_p50_ms, batch=r.batch, n_eval=r.extra.get("n_eval"),
                calib_sha=r.environment.get("calib_sha"), eval_sha=r.environment.get("eval_sha"),
                status=r.status, reason=r.reason))
    cols = ["toolchain", "model", "method", "precision", "calib_size", "calib_samples", "metric", "value", "top5",
            "baseline_value", "delta", "delta_p_value", "delta_significant", "calib_seconds", "calib_method",
            "latency_p50_ms", "batch", "n_eval", "calib_sha", "eval_sha", "status", "reason"]
    df = pd.DataFrame.from_records(recs, columns=cols).sort_values(["method", "calib_size"]).reset_index(drop=True)
    return df, base


def plot_calib(toolchain: str, model: str, root: Path, png: Path, csv: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.atomic import atomic_write_text

    df, base = calib_table(toolchain, model, root)
    if df.empty:
        raise SuiteError(f"no {toolchain}/{model} rows under {root}: run the calib sweep first")
    atomic_write_text(csv, df.to_csv(index=False))
    ok = df[(df["status"] == "ok") & df["value"].notna()]
    metric = df["metric"].iloc[0]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    sizes = sorted(df["calib_size"].unique())
    methods = sorted(ok["method"].unique())
    for i, (method, g) in enumerate(ok.groupby("method")):
        # methods side by side around each size (x offset of a few %), so equal values stay visible
        x = g["calib_size"] * 2 ** ((i - (len(methods) - 1) / 2) * 0.06)
        line, = ax.plot(x, g["value"], "-", label=method, alpha=0.8)
        sig = (g["delta_significant"] == True).to_numpy()  # noqa: E712 (object column: True/False/None)
        ax.scatter(x[sig], g["value"][sig], color=line.get_color(), s=40, zorder=3)
        ax.scatter(x[~sig], g["value"][~sig], facecolor="white", edgecolor=line.get_color(), s=40, zorder=3)
        cs = g[g["calib_seconds"].notna()]
        ax2.plot(cs["calib_size"], cs["calib_seconds"], "o-", color=line.get_color(), ms=4, label=method)
    if base is not None:
        ax.axhline(base.value, color="k", ls="--", lw=1, label=f"FP32 ({base.toolchain}/{base.method}) {base.value:.2f}")
    if metric == "top1" and len(ok):  # keep a few points of context around flat curves
        lo = min(ok["value"].min(), base.value if base is not None else 100.0)
        ax.set_ylim(max(0.0, min(lo - 1.0, lo * 0.99)), 100.2)
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(sizes)
        a.set_xticklabels([str(s) for s in sizes])
        a.set_xlabel("calibration samples (from the train split)")
        a.grid(alpha=0.3)
    ax.set_ylabel("top-1 % (test split)" if metric == "top1" else "perplexity (lower is better)")
    n_eval = ok["n_eval"].dropna()
    ax.set_title(f"{model} on {toolchain}: accuracy vs calibration size"
                 + (f" (n_eval={int(n_eval.iloc[0])})" if len(n_eval) else ""), fontsize=10)
    ax.text(0.01, 0.01, "filled: differs from FP32 (McNemar exact p<0.05); hollow: not significant"
            if metric == "top1" else "filled: 95% bootstrap interval of the ppl delta excludes 0",
            transform=ax.transAxes, fontsize=7, va="bottom")
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        ax.text(0.01, 0.06, f"{len(bad)} point(s) not ok: see CSV", transform=ax.transAxes, fontsize=7, color="red")
    ax.legend(fontsize=8, loc="lower right")
    if (ok["calib_seconds"].fillna(0) > 0).any():
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_ylabel("calibration + quantization time, s")
    ax2.set_title("cost of calibration (time of the run that built the artifact)", fontsize=10)
    fig.tight_layout()
    _save_png(fig, png)
    print(df[["method", "calib_size", "value", "delta", "delta_p_value", "calib_seconds", "status"]].to_string(index=False))
    print(f"-> {png}, {csv}")
    return 0


def batch_table(model: str, root: Path):
    import pandas as pd

    from utils.rows import read_rows

    recs = []
    for r in read_rows(root):
        if r.model != model:
            continue
        lat = r.extra.get("latency") or {}
        recs.append(dict(model=model, toolchain=r.toolchain, method=r.method, precision=r.precision, device=r.device,
                         batch=r.batch, latency_kind=r.latency_kind, latency_p10_ms=r.latency_p10_ms,
                         latency_p50_ms=r.latency_p50_ms, latency_p90_ms=r.latency_p90_ms,
                         ms_per_item=(r.latency_p50_ms / r.batch) if r.latency_p50_ms else None,
                         throughput=r.throughput, throughput_unit=r.throughput_unit, first_call_ms=r.first_call_ms,
                         n_timed=lat.get("n"), value=r.value, metric=r.metric, threads=r.environment.get("threads"),
                         status=r.status, reason=r.reason))
    cols = ["model", "toolchain", "method", "precision", "device", "batch", "latency_kind", "latency_p10_ms",
            "latency_p50_ms", "latency_p90_ms", "ms_per_item", "throughput", "throughput_unit", "first_call_ms",
            "n_timed", "value", "metric", "threads", "status", "reason"]
    order = {t: i for i, t in enumerate(ORDER)}
    df = pd.DataFrame.from_records(recs, columns=cols)
    if not df.empty:
        df["_t"] = df["toolchain"].map(order).fillna(99)
        df = df.sort_values(["_t", "method", "device", "batch"]).drop(columns=["_t"])
    return df.reset_index(drop=True)


def plot_batch(model: str, root: Path, png: Path, csv: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.atomic import atomic_write_text

    df = batch_table(model, root)
    if df.empty:
        raise SuiteError(f"no {model} rows under {root}: run the batch sweep first")
    atomic_write_text(csv, df.to_csv(index=False))
    ok = df[(df["status"] == "ok") & df["latency_p50_ms"].notna()]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    unit = (ok["throughput_unit"].dropna().iloc[0] if len(ok) else "items/s")
    for (tc, method, prec, dev), g in ok.groupby(["toolchain", "method", "precision", "device"], sort=False):
        g = g.sort_values("batch")
        label = f"{tc}/{method} ({prec}, {dev})"
        line, = a1.plot(g["batch"], g["throughput"], "o-", label=label, ms=4)
        per = g["latency_p50_ms"] / g["batch"]
        err = [per - g["latency_p10_ms"] / g["batch"], g["latency_p90_ms"] / g["batch"] - per]
        a2.errorbar(g["batch"], per, yerr=err, fmt="o-", color=line.get_color(), ms=4, capsize=2, label=label)
    batches = sorted(df["batch"].unique())
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    a1.set_ylabel(f"throughput at p50, {unit}")
    a2.set_ylabel("p50 latency per item, ms (bars: p10-p90)")
    a2.set_yscale("log")
    threads = ok["threads"].dropna()
    shape = LATENCY_SHAPE[task_of(model)]
    a1.set_title(f"{model}: throughput vs batch ({shape}, {int(threads.iloc[0]) if len(threads) else '?'} threads, CPU)",
                 fontsize=10)
    a2.set_title("latency per item (lower is better)", fontsize=10)
    a1.legend(fontsize=7)
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        a1.text(0.01, 0.01, f"not ok: {', '.join(sorted(set(bad['toolchain'] + '/' + bad['method'])))} (see CSV)",
                transform=a1.transAxes, fontsize=7, color="red")
    fig.tight_layout()
    _save_png(fig, png)
    print(df[["toolchain", "method", "batch", "latency_p50_ms", "throughput", "status"]].to_string(index=False))
    print(f"-> {png}, {csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python -m evaluation.report.sweeps", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pc = sub.add_parser("plot-calib", help="rows of a calib sweep -> PNG + CSV")
    pc.add_argument("--toolchain", required=True)
    pc.add_argument("--model", required=True)
    pc.add_argument("--dir", type=Path, required=True)
    pc.add_argument("--png", type=Path, required=True)
    pc.add_argument("--csv", type=Path, required=True)
    pb = sub.add_parser("plot-batch", help="rows of a batch sweep -> PNG + CSV")
    pb.add_argument("--model", required=True)
    pb.add_argument("--dir", type=Path, required=True)
    pb.add_argument("--png", type=Path, required=True)
    pb.add_argument("--csv", type=Path, required=True)
    return ap


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "plot-calib":
        return plot_calib(args.toolchain, args.model, args.dir, args.png, args.csv)
    return plot_batch(args.model, args.dir, args.png, args.csv)


if __name__ == "__main__":
    raise SystemExit(main())
