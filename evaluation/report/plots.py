"""The accuracy/fidelity vs speedup plot (results/accuracy_vs_latency.png), Pareto front marked."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils.atomic import atomic_write_figure
from utils.registry import TOOLCHAINS


def _fidelity_axis(g: pd.DataFrame) -> tuple[str, str]:
    """The fidelity measure that separates the rows: SQNR for classifiers, KL for LMs, else accuracy."""
    if g["metric"].iloc[0] == "top1" and g["sqnr_db"].notna().any():
        return "sqnr_db", "logit SQNR vs FP32, dB (higher is better)"
    if g["kl"].notna().any():
        return "kl", "mean KL(FP32 ‖ row) per token (lower is better)"
    return "value", g["metric"].iloc[0]


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both speedup (x, higher) and fidelity (y)."""
    out = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            better_y = y2 >= y if higher_is_better else y2 <= y
            strictly = x2 > x or (y2 > y if higher_is_better else y2 < y)
            if x2 >= x and better_y and strictly:
                dominated = True
                break
        if not dominated:
            out.append(i)
    return out


def plot_accuracy_latency(df: pd.DataFrame, path: Path) -> Path | None:
    """Per (model, weights, device, largest batch): fidelity against speedup over the best FP32, Pareto front
    marked, one legend entry per row (no labels printed over each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[(df["status"] == "ok") & df["speedup_vs_best_fp32"].notna() & df["eval_limit"].isna()
            & (df["latency_kind"] != "decode")]
    if ok.empty:
        return None
    panels = []
    for (m, w, d), g in ok.groupby(["model", "weights", "device"], sort=True):
        panels.append((m, w, d, int(g["batch"].max())))
    fig, axes = plt.subplots(1, len(panels), figsize=(8.6 * len(panels), 5.4), squeeze=False)
    markers = {t: tc.marker for t, tc in TOOLCHAINS.items()}
    cmap = plt.get_cmap("tab20")
    for ax, (m, w, d, b) in zip(axes[0], panels):
        g = ok[(ok["model"] == m) & (ok["weights"] == w) & (ok["device"] == d) & (ok["batch"] == b)]
        col, label = _fidelity_axis(g)
        g = g[g[col].notna()]
        higher = col in ("sqnr_db",) or (col == "value" and g["metric"].iloc[0] == "top1")
        pts = list(zip(g["speedup_vs_best_fp32"], g[col]))
        front = set(pareto(pts, higher))
        for i, (_, r) in enumerate(g.iterrows()):
            x, y = r["speedup_vs_best_fp32"], r[col]
            lo, hi = r["speedup_best_ci_low"], r["speedup_best_ci_high"]
            xerr = [[x - lo], [hi - x]] if pd.notna(lo) else None
            ax.errorbar([x], [y], xerr=xerr, fmt=markers.get(r["toolchain"], "x"), color=cmap(i % 20), ms=7,
                        mec="black" if i in front else None, mew=1.6 if i in front else 0, capsize=2,
                        label=f"{r['toolchain']} {r['method']} ({r['precision']})" + (" ★" if i in front else ""))
        fx = sorted((pts[i] for i in front), key=lambda p: p[0])
        if len(fx) > 1:
            ax.plot([p[0] for p in fx], [p[1] for p in fx], "k--", lw=0.8, alpha=0.6)
        if col == "kl":
            ax.set_yscale("symlog", linthresh=1e-4)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"speedup over the best FP32 runtime (batch {b}, {d}; 95 % interval)")
        ax.set_ylabel(label)
        ax.set_title(f"{m} ({w}): ★ = Pareto front")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)  # beside, never on points
    fig.tight_layout()
    return atomic_write_figure(fig, path)
