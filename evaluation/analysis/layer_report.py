"""Per-layer error of a quantized model against FP32: which layer loses the most?

    python -m evaluation.analysis.layer_report --model resnet50 --toolchain torch                       # torch env
    python -m evaluation.analysis.layer_report --model resnet50 --toolchain torch --plant int4:layer3.0.conv2
    python -m evaluation.analysis.layer_report --model resnet50 --toolchain onnxruntime --method minmax   # onnxruntime env

Each toolchain that declares a `layer_report` tool (utils/registry.py, Toolchain.tools) compares its quantized
model with its FP32 model layer by layer in its own environment (quantization/<toolchain>/layer_report.py says
how: the torch FX INT8 modules against the fused FP32 modules, the ONNX Runtime QDQ nodes against the FP32 ONNX
nodes). Two numbers per layer, both over the evaluation samples (the test split; energy-weighted):

- `local`: the layer's own error (its quantized input fed to the FP32 layer, compared with its quantized output:
  upstream error is the same on both sides). The report is sorted by local SQNR, worst first.
- `accumulated`: the layer's quantized output vs the FP32 model's output at that layer (end-to-end drift).

SQNR = 10 log10(sum ref^2 / sum (ref - q)^2) (utils.metrics.sqnr_db on the concatenated
outputs); relative error = ||ref - q|| / ||ref||. Writes `layer_report_<toolchain>[-<method>]_<model>[_<plant>].csv`
(results/local/, --publish: results/) and a bar plot (.png; the report environment draws it when this one has no
matplotlib). `--plant` corrupts the model on purpose where the toolchain's report implements it (see
evaluation/analysis/planted.py): `int4:<layer>` (or `int2:<layer>`) makes one layer's weights per-tensor INT4 (INT2)
values, `act-x4` scales every activation quantizer's range by 4.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from utils.cli import add_output_flags, output_folder
from utils.errors import SuiteError, cli_main, setup_logging
from utils.paths import LOCAL_DIR, RESULTS_DIR
from utils.registry import CLASSIFIER, models_of, tool, with_tool

log = logging.getLogger("evaluation.analysis.layer_report")

CSV_COLUMNS = ["rank", "layer", "kind", "local_sqnr_db", "local_rel_err", "accum_sqnr_db", "accum_rel_err",
               "weight_qscheme", "weight_levels", "out_scale", "out_shape", "planted"]


def write_csv(rows: list[dict], path: Path) -> Path:
    import csv
    import io

    from utils.atomic import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("local_sqnr_db", "local_rel_err", "accum_sqnr_db", "accum_rel_err"):
            r[k] = float(r[k])
        r["planted"] = r["planted"] == "True"
    return rows


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """Bar plot of local SQNR per layer (worst first). Without matplotlib here (the torch env has none),
    the report env draws it from the CSV (`--plot-csv`)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.atomic import atomic_write_figure

    order = rows  # worst first
    fig, ax = plt.subplots(figsize=(7.5, max(4.0, 0.17 * len(order) + 1.2)))
    ys = np.arange(len(order))
    local = [min(r["local_sqnr_db"], 80) for r in order]
    accum = [min(r["accum_sqnr_db"], 80) for r in order]
    colors = ["tab:red" if r["planted"] else "tab:blue" for r in order]
    from matplotlib.patches import Patch

    ax.barh(ys, local, color=colors, height=0.7)
    dots = ax.scatter(accum, ys, color="k", s=8, zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["layer"] for r in order], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR, dB (higher is better)")
    import textwrap

    ax.set_title("\n".join(textwrap.fill(t, 75) for t in title.split("\n")), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color="tab:blue", label="local SQNR (this layer's own error; the ranking)"), dots]
    labels = [handles[0].get_label(), "accumulated SQNR (vs the FP32 model at this layer)"]
    if any(r["planted"] for r in order):
        handles.append(Patch(color="tab:red"))
        labels.append("planted layer (local SQNR)")
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    fig.tight_layout()
    return atomic_write_figure(fig, path)


def plot_anywhere(rows: list[dict], csv_path: Path, title: str) -> Path | None:
    """Plot here if matplotlib is importable, else in the report environment from the CSV."""
    png = plot(rows, csv_path.with_suffix(".png"), title)
    if png is not None:
        return png
    from evaluation.launch import envs

    if not envs.is_ready("report"):
        log.warning("no matplotlib here and no report env: run `python3 -m evaluation.launch.envs report`, then "
                    "`.venvs/report/bin/python -m evaluation.analysis.layer_report --plot-csv %s`", csv_path)
        return None
    rc = envs.run_in_env("report", ["-m", "evaluation.analysis.layer_report", "--plot-csv", str(csv_path), "--title", title]).returncode
    return csv_path.with_suffix(".png") if rc == 0 else None


@cli_main
def main(argv: list[str] | None = None) -> int:
    reporters = with_tool("layer_report")
    ap = argparse.ArgumentParser(prog="python -m evaluation.analysis.layer_report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    classifiers = models_of(CLASSIFIER)  # the reports compare convolution/linear layers of image classifiers
    ap.add_argument("--model", default=classifiers[0], choices=classifiers)
    ap.add_argument("--toolchain", default=reporters[0], choices=reporters,
                    help="whose quantized model (run in that toolchain's environment)")
    ap.add_argument("--method", default=None, help="the quantized method (default: the toolchain's report's own)")
    ap.add_argument("--plant", default=None, help="corrupt on purpose: int4:<layer>, int2:<layer>, act-x4 (comma list)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--eval-limit", type=int, default=None, help="cap on test samples (default: all 359)")
    ap.add_argument("--threads", type=int, default=2)
    add_output_flags(ap, "the CSV and PNG")
    ap.add_argument("--top", type=int, default=10, help="layers printed")
    ap.add_argument("--plot-csv", type=Path, default=None, help="only draw the PNG next to an existing report CSV")
    ap.add_argument("--title", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup_logging()
    args.out = output_folder(args, LOCAL_DIR, RESULTS_DIR)
    if args.plot_csv:
        if plot(read_csv(args.plot_csv), args.plot_csv.with_suffix(".png"), args.title or args.plot_csv.stem) is None:
            raise SuiteError("matplotlib is not installed in this environment (use the report env)")
        print(f"-> {args.plot_csv.with_suffix('.png')}")
        return 0
    rep = tool(args.toolchain, "layer_report").report(args.model, args.method, plant=args.plant,
                                                      calib_samples=args.calib_samples, eval_limit=args.eval_limit,
                                                      threads=args.threads)
    rows = rep.rows
    csv_path = write_csv(rows, args.out / f"{rep.stem}.csv")
    png = plot_anywhere(rows, csv_path, rep.title)
    print(f"{'rank':>4} {'layer':<24} {'local dB':>9} {'local rel':>9} {'accum dB':>9}")
    for r in rows[:args.top]:
        print(f"{r['rank']:>4} {r['layer']:<24} {r['local_sqnr_db']:>9.2f} {r['local_rel_err']:>9.4f} "
              f"{r['accum_sqnr_db']:>9.2f}" + ("  <- planted" if r["planted"] else ""))
    print(f"-> {csv_path}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
