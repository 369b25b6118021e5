"""The verdict above each table: per model, device, batch and latency kind, within one run and one commit, the rows
meeting the criterion (accuracy and fidelity to FP32) ranked by their speedup over the run's best FP32 row; a winner
only where its interval excludes the others', else a tie."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from evaluation.report.format import ci_text, fmt, is_false

@dataclass(frozen=True)


class Criterion:
    """What 'accurate enough' means for the verdict (flags of evaluation.report.aggregate): accuracy, and fidelity to FP32."""

    max_top1_drop: float = 1.0  # points of top-1
    max_ppl_increase_pct: float = 1.0  # percent of perplexity
    min_agreement: float = 99.0  # % top-1 / next-token agreement with the FP32 baseline
    min_sqnr_db: float = 30.0  # classifiers: logit SQNR against the FP32 baseline's logits

    def describe(self) -> str:
        return (f"accuracy drop not significant or within {self.max_top1_drop:g} pt top-1 / "
                f"{self.max_ppl_increase_pct:g} % perplexity, agreement ≥ {self.min_agreement:g} %, and for "
                f"classifiers logit SQNR ≥ {self.min_sqnr_db:g} dB against FP32")

    def accepts(self, r) -> bool:
        if r["status"] != "ok" or pd.isna(r["value"]):
            return False
        if r["precision"] != "fp32":
            if pd.isna(r["agreement"]) or r["agreement"] < self.min_agreement:
                return False
            if r["metric"] == "top1" and (pd.isna(r["sqnr_db"]) or r["sqnr_db"] < self.min_sqnr_db):
                return False
        if pd.isna(r["delta"]):
            return True  # an FP32 baseline itself
        if is_false(r["delta_significant"]):
            return True
        if r["metric"] == "top1":
            return -r["delta"] <= self.max_top1_drop
        return 100.0 * r["delta"] / r["baseline_value"] <= self.max_ppl_increase_pct


def _one_run(g: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of the group's main run (the run with most rows; the newest on a tie) and how many rows of other
    runs or commits were left out: a verdict never compares rows measured in different runs."""
    runs = g.groupby("run_id", dropna=False).agg(n=("run_id", "size"), t=("timestamp", "max"))
    if runs.empty:
        return g, 0
    best = runs.sort_values(["n", "t"], ascending=[False, False]).index[0]
    main = g[g["run_id"] == best] if pd.notna(best) else g[g["run_id"].isna()]
    commits = main["git_commit"].dropna()
    if len(commits):
        main = main[main["git_commit"] == commits.mode().iloc[0]]
    return main, len(g) - len(main)


def _overlap(a, b) -> bool:
    """Do two speedup intervals overlap (a missing interval overlaps everything: no evidence of a difference)?"""
    if pd.isna(a["speedup_best_ci_low"]) or pd.isna(b["speedup_best_ci_low"]):
        return True
    return a["speedup_best_ci_low"] <= b["speedup_best_ci_high"] and b["speedup_best_ci_low"] <= a["speedup_best_ci_high"]


def verdicts(df: pd.DataFrame, crit: Criterion) -> list[dict]:
    """Per (model, weights, device, batch, latency kind), within one run: the rows meeting the criterion, fastest
    first by their speedup over that run's best FP32 row. A winner only where its speedup interval (which carries the
    between-run spread of a repeated run) excludes every other accepted row's; otherwise the rows whose intervals
    overlap the fastest one's are a tie. Full-evaluation rows only."""
    out = []
    ok = df[(df["status"] == "ok") & df["latency_p50_ms"].notna() & df["eval_limit"].isna()]
    full = ok[ok["latency_kind"] != "decode"]
    for key, g_all in ok.groupby(["model", "weights", "device", "batch", "latency_kind"], sort=False):
        g, other_runs = _one_run(g_all)
        random = key[1] == "random"
        if random:  # no accuracy to judge: every row, said to be only that
            good = g
        elif key[4] == "decode":  # a generation row is judged by its variant's full-sequence row
            judged = {(r["toolchain"], r["method"]) for _, r in full[(full["model"] == key[0]) & (full["weights"] == key[1])
                                                                     & (full["device"] == key[2])].iterrows()
                      if crit.accepts(r)}
            good = g[[(r["toolchain"], r["method"]) in judged for _, r in g.iterrows()]]
        else:
            good = g[[crit.accepts(r) for _, r in g.iterrows()]]
        good = good[good["speedup_vs_best_fp32"].notna()]
        if good.empty:
            continue
        good = good.sort_values("speedup_vs_best_fp32", ascending=False)
        best = good.iloc[0]
        tied = [r for _, r in good.iloc[1:].iterrows() if _overlap(best, r)]
        cov = _coverage(best)
        out.append({"model": key[0], "weights": key[1], "device": key[2], "batch": int(key[3]), "kind": key[4],
                    "toolchain": best["toolchain"], "method": best["method"], "precision": best["precision"],
                    "p50_ms": best["latency_p50_ms"], "speedup": best["speedup_vs_best_fp32"],
                    "ci_low": best["speedup_best_ci_low"], "ci_high": best["speedup_best_ci_high"],
                    "best_fp32": best["best_fp32"], "agreement": best["agreement"], "delta": best["delta"],
                    "metric": best["metric"], "n_rows": len(g), "n_meeting": len(good), "random": random,
                    "repeats": best.get("repeats"), "spread": best.get("p50_spread_pct"),
                    "tied": [f"{r['toolchain']} {r['method']} ({ci_text(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])}×)"
                             for r in tied],
                    "other_runs": other_runs, "run_id": best.get("run_id"), "commit": best.get("git_commit"),
                    "coverage": cov, "coverage_differs": _coverage_differs(best, good.iloc[1:])})
    return out


COVERAGE_SAME_PT = 1.0  # coverages within this many points count as the same work


def _coverage(r) -> float | None:
    """A row's coverage (% of MACs in reduced precision); 0 for an FP32 row; None where not reported."""
    c = r.get("coverage_pct") if hasattr(r, "get") else None
    if c is not None and not (isinstance(c, float) and math.isnan(c)):
        return float(c)
    return 0.0 if r.get("precision") == "fp32" else None


def _coverage_differs(best, others: pd.DataFrame) -> list[str]:
    """'toolchain method (coverage c %)' for every other compared row whose coverage is not the winner's (beyond
    COVERAGE_SAME_PT points, or unknown on either side while the other is known): those rows did other work."""
    cb = _coverage(best)
    out = []
    for _, r in others.iterrows():
        if r.get("precision") == "fp32":  # the FP32 rows are what every speedup is over: other work by definition
            continue
        c = _coverage(r)
        if (c is None) != (cb is None) or (c is not None and abs(c - cb) > COVERAGE_SAME_PT):
            out.append(f"{r['toolchain']} {r['method']} ({'?' if c is None else f'{c:.0f}'} %)")
    return out


def _coverage_text(v: dict) -> str:
    c = v.get("coverage")
    return "coverage not reported" if c is None else f"coverage {c:.0f} %"


def render_verdicts(vs: list[dict], crit: Criterion, model: str | None = None, weights: str | None = None) -> list[str]:
    lines = []
    for v in vs:
        if (model and v["model"] != model) or (weights and v["weights"] != weights):
            continue
        agree = f", agreement {v['agreement']:.2f} %" if fmt(v["agreement"], ".2f") else ""
        delta = f", Δ {v['metric']} {fmt(v['delta'], '+.2f')}" if fmt(v["delta"], ".2f") else ""
        kind = " · decode (per generated token)" if v.get("kind") == "decode" else ""
        reps = v.get("repeats")
        runs = (f"{int(reps)} runs, p50 spread {fmt(v.get('spread'), '.1f')} %" if fmt(reps, ".0f") and reps > 1
                else "1 run")
        which = (f"fastest of all {v['n_meeting']} timed rows (random weights: no accuracy criterion applies)"
                 if v.get("random") else f"fastest of {v['n_meeting']} of {v['n_rows']} rows meeting the criterion")
        if v.get("other_runs"):
            which += f"; {v['other_runs']} row(s) of other runs left out"
        head = f"- **{v['model']} · {v['device']} · batch {v['batch']}{kind}**: "
        what = (f"**{v['toolchain']} {v['method']}** ({v['precision']}, {_coverage_text(v)}), {v['p50_ms']:.2f} ms p50, "
                f"{ci_text(v['speedup'], v['ci_low'], v['ci_high'])}× over the best FP32 ({v['best_fp32']}){agree}{delta}")
        if v.get("coverage_differs"):
            which += ("; compared with rows of other coverage (other work in reduced precision, not only another "
                      "runtime): " + ", ".join(v["coverage_differs"]))
        if v.get("tied"):
            lines.append(f"{head}**tie** (speedup intervals overlap): {what}; tied with {', '.join(v['tied'])}; "
                         f"{runs}; {which}.")
        elif v["n_meeting"] > 1:
            lines.append(f"{head}{what}; its interval excludes every other row's; {runs}; {which}.")
        else:
            lines.append(f"{head}{what}; {runs}; the only one of {v['n_rows']} rows meeting the criterion"
                         + (f"; {v['other_runs']} row(s) of other runs left out" if v.get("other_runs") else "") + ".")
    if lines:
        lines = [f"Verdict (criterion: {crit.describe()}; a winner only where its speedup interval, between-run spread "
                 "included, excludes the others'; † marks a speedup interval containing 1; coverage: % of the model's "
                 "multiply-accumulates the row ran in reduced precision, and a line says when it compares rows of "
                 "other coverage):", ""] + lines + [""]
    return lines
