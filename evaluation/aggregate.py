"""Rows -> results/summary.csv, results/summary.md and plots (report env: pandas, matplotlib, scipy).

    python -m evaluation.aggregate [--runs-dir results/runs] [--out results]
    python -m evaluation.aggregate --runs-dir from-gpu-box/runs --runs-dir results/cluster/runs --out merged

Several --runs-dir (run folders copied from other machines) merge into one table: rows of the same key (model,
weights, toolchain, method, precision, device, batch, subset) keep the newest ok row by its timestamp, never a
failed or skipped row over an ok one; a newer failed/skipped row beside the kept ok row is noted as its latest
attempt. Rows of different devices and hosts stand side by side (`host`, `launcher` columns).

Every number comes from the JSON rows; nothing is parsed from printed output. Deltas and
`speedup` compare with the FP32 row the registry names as the toolchain's baseline (same model,
weights, device, batch, latency kind); `speedup_vs_best_fp32` with the fastest FP32 row of the
same model, weights, device and batch whatever the toolchain; `efficiency` is the row's useful
operations per second over the device ceiling (matmul microbenchmark of the same run) for the
precision its matmuls run in.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from utils.metrics import unpack_bits
from evaluation.stats import bootstrap_ppl_delta, mcnemar_exact
from utils.atomic import atomic_write_figure, atomic_write_text
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import RESULTS_DIR, RUNS_DIR
from utils.registry import ORDER, TOOLCHAINS
from utils.rows import ResultRow, read_attempts, read_rows

log = logging.getLogger("evaluation.aggregate")

COLUMNS = ["model", "weights", "dataset", "toolchain", "method", "precision", "device", "batch", "metric", "value",
           "baseline_value", "delta", "delta_significant", "delta_p_value", "delta_ci_low", "delta_ci_high", "top5",
           "latency_kind", "latency_p10_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "first_call_ms",
           "throughput", "throughput_unit", "speedup", "speedup_vs_best_fp32", "efficiency", "compute_precision",
           "ops_per_item", "size_mb", "calib_samples", "calib_seconds", "calib_method", "status", "reason", "notes",
           "eval_sha", "calib_sha", "eval_limit", "cpu", "gpu", "host", "launcher", "threads", "git_commit", "run_id", "timestamp",
           "last_attempt"]
ALPHA = 0.05


def _ceiling(row: ResultRow) -> float | None:
    c = row.environment.get("ceilings") or {}
    key = {"fp32": "fp32_ops_per_s", "int8": "int8_ops_per_s"}.get(row.compute_precision or "")
    if row.device != "cpu" or key is None:
        return None
    return c.get(key)


def _significance(row: ResultRow, base: ResultRow) -> dict:
    out = {"delta_significant": None, "delta_p_value": None, "delta_ci_low": None, "delta_ci_high": None}
    if row is base or row.status != "ok" or base.status != "ok" or row.value is None or base.value is None:
        return out
    e, b = row.extra, base.extra
    if row.metric == "top1" and "correct_bits" in e and "correct_bits" in b:
        if e.get("n_eval") != b.get("n_eval") or row.environment.get("eval_sha") != base.environment.get("eval_sha"):
            return out  # not the same samples: no paired test
        n = int(e["n_eval"])
        t = mcnemar_exact(unpack_bits(b["correct_bits"], n), unpack_bits(e["correct_bits"], n))
        out.update(delta_p_value=t["p_value"], delta_significant=t["p_value"] < ALPHA)
    elif row.metric == "ppl" and "window_nll" in e and "window_nll" in b and len(e["window_nll"]) == len(b["window_nll"]):
        t = bootstrap_ppl_delta(b["window_nll"], e["window_nll"], b["window_tokens"])
        out.update(delta_ci_low=t["ci_low"], delta_ci_high=t["ci_high"], delta_significant=t["significant"])
    return out


def build_table(rows: list[ResultRow], attempts: dict | None = None) -> pd.DataFrame:
    by_key = {(r.model, r.weights, r.toolchain, r.method, r.device, r.batch): r for r in rows}
    fastest_fp32: dict[tuple, float] = {}
    for r in rows:
        if r.status == "ok" and r.precision == "fp32" and r.latency_p50_ms:
            k = (r.model, r.weights, r.device, r.batch, r.latency_kind)
            fastest_fp32[k] = min(fastest_fp32.get(k, math.inf), r.latency_p50_ms)
    records = []
    for r in rows:
        tc = TOOLCHAINS.get(r.toolchain)
        bl = tc.baseline_for(r.method) if tc else None
        base = by_key.get((r.model, r.weights, *bl, r.device, r.batch)) if bl else None
        if base is None and bl:  # e.g. a CUDA row whose FP32 baseline ran on CPU: accuracy only
            base = next((by_key[k] for k in by_key if k[:4] == (r.model, r.weights, *bl)), None)
        rec = {c: getattr(r, c, None) for c in COLUMNS if hasattr(r, c)}
        rec.update(baseline_value=None, delta=None, speedup=None, speedup_vs_best_fp32=None, efficiency=None)
        if base is not None and base.status == "ok" and r.status == "ok" and base.value is not None and r.value is not None:
            rec["baseline_value"] = base.value
            rec["delta"] = r.value - base.value
            rec.update(_significance(r, base))
            if (base.latency_p50_ms and r.latency_p50_ms and base.device == r.device and base.batch == r.batch
                    and base.latency_kind == r.latency_kind):
                rec["speedup"] = base.latency_p50_ms / r.latency_p50_ms
        best = fastest_fp32.get((r.model, r.weights, r.device, r.batch, r.latency_kind))
        if best and r.status == "ok" and r.latency_p50_ms:
            rec["speedup_vs_best_fp32"] = best / r.latency_p50_ms
        ceil = _ceiling(r)
        if ceil and r.ops_per_item and r.throughput and r.status == "ok":
            rec["efficiency"] = 100.0 * r.ops_per_item * r.throughput / ceil
        env = r.environment
        rec.update(eval_sha=env.get("eval_sha"), calib_sha=env.get("calib_sha"), cpu=env.get("cpu"), gpu=env.get("gpu"),
                   host=env.get("host"), launcher=env.get("launcher"), threads=env.get("threads"),
                   git_commit=env.get("git_commit"), run_id=env.get("run_id"), timestamp=env.get("timestamp"))
        att = (attempts or {}).get(r.key)
        rec["last_attempt"] = (f"{att.status} {att.environment.get('timestamp', '')} "
                               f"(run {att.environment.get('run_id')}): {att.reason}") if att is not None else None
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    df["_sub"] = df["eval_limit"].notna()  # full-evaluation rows first, subset rows after them
    order = {t: i for i, t in enumerate(ORDER)}
    meth = {(t, m): i for t, tc in TOOLCHAINS.items() for v in tc.variants.values() for i, (m, _) in enumerate(v)}
    df["_t"] = df["toolchain"].map(order).fillna(99)
    df["_m"] = [meth.get((t, m), 99) for t, m in zip(df["toolchain"], df["method"])]
    df = df.sort_values(["model", "weights", "_sub", "_t", "_m", "device", "batch"]).drop(columns=["_t", "_m", "_sub"])
    return df.reset_index(drop=True)


def _fmt(x, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, spec)


def render_markdown(df: pd.DataFrame, rows: list[ResultRow]) -> str:
    envs = [r.environment for r in rows if r.status == "ok" and r.environment]
    lines = ["# Results", ""]
    if envs:
        e = max(envs, key=lambda x: x.get("timestamp", ""))
        ceil = e.get("ceilings") or {}
        pk = {**{k: v for env in envs for k, v in env.get("packages", {}).items()}}
        lines += [f"Machine: {e.get('cpu')} ({e.get('cores')} cores, {e.get('threads')} threads used), "
                  f"GPU: {e.get('gpu') or 'none'}; Python {e.get('python')}; commit {e.get('git_commit')}; "
                  f"latest row {e.get('timestamp')}.",
                  "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())) + "."]
        hosts = sorted({(x.get("host"), x.get("cpu"), x.get("gpu")) for x in envs if x.get("host")}, key=str)
        if len(hosts) > 1:
            lines.append("Hosts: " + "; ".join(f"{h} ({c}, GPU: {g or 'none'})" for h, c, g in hosts)
                         + " (the host column says which made each row).")
        if ceil:
            lines.append(f"Device ceilings ({ceil.get('threads')} threads): FP32 matmul "
                         f"{ceil.get('fp32_ops_per_s', 0) / 1e9:.1f} GFLOP/s, INT8 matmul "
                         f"{(ceil.get('int8_ops_per_s') or 0) / 1e9:.1f} GOP/s.")
        lines.append("")
    lines += ["Δ: against the toolchain's FP32 baseline on the same samples; `~` marks a Δ that is not significant "
              "(McNemar exact p ≥ 0.05 for top-1; 95% paired-bootstrap interval over windows containing 0 for ppl). "
              "Latency: p50 with p10–p90; speedup vs the same runtime's FP32; `vs best FP32` vs the fastest FP32 row of "
              "any toolchain (same model, device, batch); efficiency: useful ops/s over the device's matmul ceiling for "
              "the row's compute precision (it can exceed 100% where a runtime's convolution kernels beat the sgemm "
              "microbenchmark that defines the ceiling).", ""]
    for (model, weights, dataset), g in df.groupby(["model", "weights", "dataset"], sort=False):
        metric = g["metric"].iloc[0]
        lines += [f"## {model} ({weights} weights, {dataset}; metric {metric})", "",
                  f"| toolchain | method | prec | dev | batch | {metric} | Δ | p50 ms (p10–p90) | throughput | speedup | "
                  "vs best FP32 | eff. % | size MB | calib n / s | status |",
                  "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
        shown: set = set()
        for _, r in g.iterrows():
            if r["status"] != "ok":  # one line per skipped/failed variant, all batches together
                k = (r["toolchain"], r["method"], r["precision"], r["device"], r["status"], r["reason"])
                if k in shown:
                    continue
                shown.add(k)
                batches = ",".join(str(b) for b in g[(g["toolchain"] == r["toolchain"]) & (g["method"] == r["method"])
                                                     & (g["device"] == r["device"])]["batch"])
                lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | {r['device']} | {batches} |"
                             f" | | | | | | | | | {r['status']}: {r['reason']} |")
                continue
            vspec = ".2f"
            delta = _fmt(r["delta"], "+.2f")
            if delta and r["delta_significant"] is False:
                delta += " ~"
            lat = ""
            if pd.notna(r["latency_p50_ms"]):
                lat = f"{r['latency_p50_ms']:.2f} ({r['latency_p10_ms']:.2f}–{r['latency_p90_ms']:.2f})"
            thr = f"{r['throughput']:.1f} {str(r['throughput_unit'] or '').replace('/s', '')}/s" if pd.notna(r["throughput"]) else ""
            cal = ""
            if pd.notna(r["calib_samples"]) and r["calib_samples"]:
                cal = f"{int(r['calib_samples'])} / {_fmt(r['calib_seconds'], '.1f')}"
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
            if pd.notna(r["eval_limit"]):
                status += f" (subset: --eval-limit {int(r['eval_limit'])})"
            if r["last_attempt"]:
                status += f"; latest attempt {r['last_attempt']}"
            lines.append(
                f"| {r['toolchain']} | {r['method']} | {r['precision']} | {r['device']} | {r['batch']} | "
                f"{_fmt(r['value'], vspec)} | {delta} | {lat} | {thr} | {_fmt(r['speedup'], '.2f')} | "
                f"{_fmt(r['speedup_vs_best_fp32'], '.2f')} | {_fmt(r['efficiency'], '.1f')} | {_fmt(r['size_mb'], '.1f')} | "
                f"{cal} | {status} |")
        lines.append("")
        notes = list(dict.fromkeys((r["toolchain"], r["method"], r["notes"]) for _, r in g.iterrows() if r["notes"]))
        if notes:
            lines += [f"Notes ({model}):", ""] + [f"- **{t} / {m}**: {n}" for t, m, n in notes] + [""]
    return "\n".join(lines)


def render_compact(df: pd.DataFrame) -> str:
    """One line per (model, toolchain, method): accuracy, Δ, p50 at each batch, speedup vs best FP32 at the largest."""
    out = []
    for (model, weights, dataset), g in df.groupby(["model", "weights", "dataset"], sort=False):
        batches = sorted(g["batch"].unique())
        metric = g["metric"].iloc[0]
        out += [f"**{model}** ({weights}, {dataset})", "",
                f"| toolchain | method | prec | dev | {metric} | Δ | " + " | ".join(f"p50 ms b{b}" for b in batches)
                + " | speedup vs own FP32 (" + " / ".join(f"b{b}" for b in batches) + f") | vs best FP32 (b{batches[-1]}) | status |",
                "|---|---|---|---|--:|--:|" + "--:|" * len(batches) + "--:|--:|---|"]
        for (tc, method, prec, dev), gg in g.groupby(["toolchain", "method", "precision", "device"], sort=False):
            first = gg.iloc[0]
            lat = {int(r["batch"]): _fmt(r["latency_p50_ms"], ".1f") for _, r in gg.iterrows()}
            spd = {int(r["batch"]): _fmt(r["speedup"], ".2f") for _, r in gg.iterrows()}
            speedups = " / ".join(spd.get(int(b), "") for b in batches) if any(spd.values()) else ""
            last = gg[gg["batch"] == gg["batch"].max()].iloc[0]
            delta = _fmt(first["delta"], "+.2f") + (" ~" if first["delta_significant"] is False and pd.notna(first["delta"]) else "")
            status = "ok" if first["status"] == "ok" else f"{first['status']}: {str(first['reason']).split(':')[0][:90]}"
            out.append(f"| {tc} | {method} | {prec} | {dev} | {_fmt(first['value'], '.2f')} | {delta} | "
                       + " | ".join(lat.get(int(b), "") for b in batches)
                       + f" | {speedups} | {_fmt(last['speedup_vs_best_fp32'], '.2f')} | {status} |")
        out.append("")
    return "\n".join(out)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme: Path, df: pd.DataFrame, rows: list[ResultRow]) -> bool:
    """Replace the README's results block (between the markers) with the compact table."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    envs = [r.environment for r in rows if r.status == "ok" and r.environment]
    head = ""
    if envs:
        e = max(envs, key=lambda x: x.get("timestamp", ""))
        head = (f"Measured {e.get('timestamp', '')[:10]} on {e.get('cpu')} ({e.get('threads')} threads, "
                f"GPU: {e.get('gpu') or 'none'}), commit {e.get('git_commit')}; versions in results/summary.md.\n\n")
    pre, rest = text.split(README_START, 1)
    post = rest.split(README_END, 1)[1]
    atomic_write_text(readme, f"{pre}{README_START}\n{head}{render_compact(df)}\n{README_END}{post}")
    return True


def plot_accuracy_latency(df: pd.DataFrame, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["latency_p50_ms"].notna() & df["value"].notna()]
    if ok.empty:
        return None
    panels = sorted({(m, w, b) for m, w, b in zip(ok["model"], ok["weights"], ok["batch"])})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    markers = {t: tc.marker for t, tc in TOOLCHAINS.items()}
    for ax, (m, w, b) in zip(axes[0], panels):
        g = ok[(ok["model"] == m) & (ok["weights"] == w) & (ok["batch"] == b)]
        for tc, gg in g.groupby("toolchain"):
            ax.scatter(gg["latency_p50_ms"], gg["value"], marker=markers.get(tc, "x"), label=tc, s=45)
            for _, r in gg.iterrows():
                ax.annotate(f"{r['method']}", (r["latency_p50_ms"], r["value"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        if g["metric"].iloc[0] == "top1":  # zoom on the spread of the rows, not 0-100
            lo, hi = float(g["value"].min()), float(g["value"].max())
            ax.set_ylim(max(0.0, lo - 1.0), min(100.5, hi + 0.5))
        ax.set_xlabel(f"p50 latency, ms (batch {b}, {g['device'].iloc[0]})")
        ax.set_ylabel(g["metric"].iloc[0] + (" (lower is better)" if g["metric"].iloc[0] == "ppl" else " %"))
        ax.set_title(f"{m} ({w})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic_write_figure(fig, path)


def _stamp(row: ResultRow) -> str:
    return str(row.environment.get("timestamp") or "")


def _newer(a: ResultRow, b: ResultRow | None) -> bool:
    """Does `a` win over `b` for the same key: an ok row over any other, else the newer timestamp (ties: later)."""
    if b is None:
        return True
    if (a.status == "ok") != (b.status == "ok"):
        return a.status == "ok"
    return _stamp(a) >= _stamp(b)


def merge_runs(runs_dirs) -> tuple[list[ResultRow], dict[str, ResultRow]]:
    """Rows and latest attempts of one or several run folders, merged by key (see the module docstring)."""
    kept: dict[str, ResultRow] = {}
    others: dict[str, ResultRow] = {}  # newest failed/skipped row of each key, from rows and attempts alike
    for d in runs_dirs:
        d = Path(d)
        if not d.is_dir():
            raise SuiteError(f"--runs-dir {d} is not a folder")
        try:
            rows = read_rows(d)
        except (ValueError, TypeError) as exc:
            raise SuiteError(f"--runs-dir {d}: a row does not parse as this suite's row schema: {exc}") from None
        for r in rows + list(read_attempts(d).values()):
            if _newer(r, kept.get(r.key)):
                if r.key in kept and kept[r.key].status != "ok":
                    _keep_newest(others, kept[r.key])
                kept[r.key] = r
            elif r.status != "ok":
                _keep_newest(others, r)
    attempts = {k: a for k, a in others.items()
                if k in kept and kept[k].status == "ok" and _stamp(a) > _stamp(kept[k])}
    return sorted(kept.values(), key=lambda r: r.key), attempts


def _keep_newest(into: dict, row: ResultRow) -> None:
    if row.key not in into or _stamp(row) >= _stamp(into[row.key]):
        into[row.key] = row


def aggregate(runs_dir, out_dir: Path, readme: Path | None = None) -> pd.DataFrame:
    dirs = [Path(d) for d in (runs_dir if isinstance(runs_dir, (list, tuple)) else [runs_dir])]
    if len(dirs) == 1:
        rows, attempts = read_rows(dirs[0]), read_attempts(dirs[0])
    else:
        rows, attempts = merge_runs(dirs)
    if not rows:
        raise SuiteError(f"no result rows in {', '.join(map(str, dirs))}: run `python3 -m evaluation.bench` first")
    df = build_table(rows, attempts)
    atomic_write_text(out_dir / "summary.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "summary.md", render_markdown(df, rows))
    plot_accuracy_latency(df, out_dir / "accuracy_vs_latency.png")
    if readme is not None and update_readme(readme, df, rows):
        log.info("results table updated in %s", readme)
    log.info("%d rows -> %s, %s, %s", len(df), out_dir / "summary.csv", out_dir / "summary.md",
             out_dir / "accuracy_vs_latency.png")
    return df


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.aggregate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", type=Path, action="append", default=None,
                    help=f"a folder of rows (default {RUNS_DIR}); repeat it to merge run folders from several machines")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--readme", type=Path, default=None, help="also refresh the results block of this README")
    args = ap.parse_args(argv)
    setup_logging()
    aggregate(args.runs_dir or [RUNS_DIR], args.out, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
