"""The tables as Markdown: results/summary.md (every column, notes, the machine) and the README's compact block."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils.atomic import atomic_write_text
from utils.registry import TOOLCHAINS
from utils.rows import ResultRow
from utils.specs import RANDOM_REASON
from evaluation.report.format import NOT_TIMED, ci_text, delta_text, fmt, is_pending
from evaluation.report.table import CUDA_CEILING_PRECISIONS, with_all_columns
from evaluation.report.verdict import Criterion, render_verdicts, verdicts


LEGEND = (
    "Δ: against the toolchain's FP32 baseline on the same samples; `~` marks a Δ that is not significant (McNemar "
    "exact p ≥ 0.05 for top-1; 95 % paired moving-block bootstrap over perplexity windows containing 0). Fidelity "
    "(against the FP32 baseline's outputs on the same samples): agreement = % equal top-1 (next-token top-1 for "
    "LMs), flips = samples lost / gained, SQNR = logit SQNR in dB, KL = mean KL(FP32 ‖ this). FP32 rows of other "
    "runtimes are compared with the torch FP32 reference (`x-SQNR`), so an export or runtime fault shows up without "
    "quantization. Latency: p50 over n interleaved trials. `vs best FP32` is the headline speedup: over the fastest "
    "FP32 row of any runtime on the same device and batch, with a 95 % bootstrap interval; `vs own FP32` is over "
    "the row's own FP32 baseline, measured in the same process in interleaved trials (paired interval). † marks an "
    "interval containing 1.0. runs: the passes of a repeated run (bench --repeats) timed, with the spread of their p50 "
    "((max − min) / median); a repeated run's p50 is the median of its passes' and its intervals come from a two-level "
    "bootstrap (passes, then trials), so they include the between-run spread. Efficiency: useful ops/s over the "
    "device's measured matmul ceiling for the row's compute precision. Roofline: the same rate over the lower of two "
    "bounds, that ceiling and the measured memory bandwidth over the row's estimated bytes per call (weights as "
    "stored, activations, KV cache; utils/traffic.py), with the bound that applies: a memory-bound row (token "
    "generation) reads low on eff. % and is judged by roofline %. peak MB: resident high-water of building and "
    "running the variant.")


def render_markdown(df: pd.DataFrame, rows: list[ResultRow], crit: Criterion = Criterion()) -> str:
    envs = [r.environment for r in rows if r.status == "ok" and r.environment]
    lines = ["# Results", ""]
    if envs:
        e = max(envs, key=lambda x: x.get("timestamp", ""))
        ceil = e.get("ceilings") or {}
        pk = {**{k: v for env in envs for k, v in env.get("packages", {}).items()}}
        hosts = sorted({str(env.get("host")) for env in envs if env.get("host")})
        lines += [f"Machine: {e.get('cpu')} ({e.get('cores')} cores, {e.get('threads')} threads used), "
                  f"GPU: {e.get('gpu') or 'none'}; Python {e.get('python')}; commit {e.get('git_commit')}; "
                  f"latest row {e.get('timestamp')}" + (f"; hosts {', '.join(hosts)}" if len(hosts) > 1 else "") + ".",
                  "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())) + "."]
        hosts = sorted({(x.get("host"), x.get("cpu"), x.get("gpu")) for x in envs if x.get("host")}, key=str)
        if len(hosts) > 1:
            lines.append("Hosts: " + "; ".join(f"{h} ({c}, GPU: {g or 'none'})" for h, c, g in hosts)
                         + " (the host column says which made each row).")
        if ceil.get("libraries") is not None or ceil.get("fp32_ops_per_s") is not None:  # the CPU's (not cuda-only)
            lines.append(f"Device ceilings ({ceil.get('threads')} threads): FP32 matmul "
                         f"{(ceil.get('fp32_ops_per_s') or 0) / 1e9:.1f} GFLOP/s ({ceil.get('fp32_library', 'torch.mm')}),"
                         f" INT8 matmul {(ceil.get('int8_ops_per_s') or 0) / 1e9:.1f} GOP/s "
                         f"({ceil.get('int8_library', 'torch._int_mm')})"
                         + (f", memory {ceil['mem_bytes_per_s'] / 1e9:.1f} GB/s ({ceil.get('mem_library')}, arrays of "
                            f"{(ceil.get('memory') or {}).get('array_mb')} MB, last-level cache "
                            f"{(ceil.get('memory') or {}).get('llc_mb')} MB)" if ceil.get("mem_bytes_per_s") else "")
                         + ".")
        gpu = ceil.get("cuda") or {}
        if gpu.get("available"):  # the GPU's own (utils.ceilings.measure_cuda, through its declared library)
            rates = ", ".join(f"{p.upper()} {gpu[f'{p}_ops_per_s'] / 1e12:.0f}" for p in CUDA_CEILING_PRECISIONS
                              if gpu.get(f"{p}_ops_per_s"))
            lib = f", through {gpu['library']}" if gpu.get("library") else ""
            lines.append(f"GPU ceilings ({gpu.get('gpu')}, compute capability {gpu.get('capability')}{lib}): "
                         f"matmul TOP/s {rates}.")
        over = [r.extra.get("harness_overhead_ms") for r in rows if r.status == "ok" and r.extra.get("harness_overhead_ms")]
        b1 = [r.latency_p50_ms for r in rows if r.status == "ok" and r.batch == 1 and r.latency_p50_ms]
        if over and b1:
            lines.append(f"Harness overhead (an empty call timed the same way): at most {max(over) * 1000:.2f} µs, "
                         f"{100 * max(over) / min(b1):.3f} % of the fastest batch-1 p50 ({min(b1):.2f} ms).")
        lines.append("")
    lines += [LEGEND, ""]
    vs = verdicts(df, crit)
    for (model, weights, dataset), g_all in df.groupby(["model", "weights", "dataset"], sort=False):
        metric = g_all["metric"].iloc[0]
        g = g_all[g_all["latency_kind"] != "decode"]
        lines += [f"## {model} ({weights} weights, {dataset}; metric {metric})", ""]
        if weights == "random":
            lines += [f"Accuracy cells are empty: {RANDOM_REASON} (the real architecture with randomly initialised "
                      "weights; fidelity columns compare each row with its FP32 baseline on the same inputs).", ""]
        lines += render_verdicts(vs, crit, model, weights)
        lines += [f"| toolchain | method | prec | cov % | dev | batch | {metric} | Δ | agree % | flips −/+ | SQNR dB | KL | "
                  "x-SQNR dB | p50 ms (p10–p90) | n | runs (p50 spread) | vs best FP32 | vs own FP32 | eff. % | "
                  "roofline % (bound) | "
                  "peak MB | size MB | calib n / s | status |",
                  "|---|---|---|--:|---|" + "--:|" * 18 + "---|"]
        shown: set = set()
        for _, r in g.iterrows():
            if r["status"] != "ok":  # one line per skipped/failed variant, all batches together
                k = (r["toolchain"], r["method"], r["precision"], r["device"], r["status"], r["reason"])
                if k in shown:
                    continue
                shown.add(k)
                batches = ",".join(str(b) for b in g[(g["toolchain"] == r["toolchain"]) & (g["method"] == r["method"])
                                                     & (g["device"] == r["device"])]["batch"])
                lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | | {r['device']} | {batches} |"
                             + " |" * 17 + f" {r['status']}: {r['reason']} |")
                continue
            lat = NOT_TIMED if is_pending(r) else ""
            if pd.notna(r["latency_p50_ms"]):
                lat = f"{r['latency_p50_ms']:.2f} ({r['latency_p10_ms']:.2f}–{r['latency_p90_ms']:.2f})"
            flips = f"{int(r['flips_lost'])}/{int(r['flips_gained'])}" if pd.notna(r["flips_lost"]) else ""
            cal = ""
            if pd.notna(r["calib_samples"]) and r["calib_samples"]:
                cal = f"{int(r['calib_samples'])} / {fmt(r['calib_seconds'], '.1f')}"
            status = r["status"]
            if pd.notna(r["eval_limit"]):
                status += f" (subset: --eval-limit {int(r['eval_limit'])})"
            if r["last_attempt"]:
                status += f"; latest attempt {r['last_attempt']}"
            kl = fmt(r["kl"], ".2e") if pd.notna(r["kl"]) and r["kl"] < 0.01 else fmt(r["kl"], ".4f")
            lines.append(
                f"| {r['toolchain']} | {r['method']} | {r['precision']} | {_cov(r)} | {r['device']} | {r['batch']} | "
                f"{fmt(r['value'], '.2f')} | {delta_text(r)} | {fmt(r['agreement'], '.2f')} | {flips} | "
                f"{fmt(r['sqnr_db'], '.1f')} | {kl} | {fmt(r['xrt_sqnr_db'], '.1f')} | {lat} | "
                f"{fmt(r['latency_samples'], '.0f')} | {_runs(r)} | "
                f"{ci_text(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])} | "
                f"{ci_text(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])} | {fmt(r['efficiency'], '.1f')} | "
                f"{_roof(r)} | {_peak(r)} | {fmt(r['size_mb'], '.1f')} | {cal} | {status} |")
        lines.append("")
        lines += _render_decode(g_all[g_all["latency_kind"] == "decode"])
        notes = list(dict.fromkeys((r["toolchain"], r["method"], r["notes"]) for _, r in g.iterrows() if r["notes"]))
        if notes:
            lines += [f"Notes ({model}):", ""] + [f"- **{t} / {m}**: {n}" for t, m, n in notes] + [""]
    return "\n".join(lines)


def _cov(r) -> str:
    """The coverage cell: % of MACs in reduced precision (quantized rows; empty for FP32 rows and where not reported)."""
    return fmt(r.get("coverage_pct"), ".0f")


def _runs(r) -> str:
    """'3 (2.1 %)': the passes of a repeated run that were timed and the spread of their p50; '1' for one run."""
    n = fmt(r.get("repeats"), ".0f")
    if not n:
        return "1" if pd.notna(r.get("latency_p50_ms")) else ""
    return f"{n} ({fmt(r.get('p50_spread_pct'), '.1f')} %)"


def _roof(r) -> str:
    """'41.3 (memory)': the row's rate over the lower of its compute and memory bounds, and which bound that is."""
    pct = fmt(r.get("roofline_pct"), ".1f")
    return f"{pct} ({r['bound']})" if pct else ""


def _peak(r) -> str:
    """Resident high-water MB, and the GPU's where a GPU ran the row."""
    out = fmt(r["peak_mem_mb"], ".0f")
    gpu = fmt(r.get("gpu_peak_mem_mb"), ".0f")
    return f"{out} (GPU {gpu})" if gpu else out


def _render_decode(d: pd.DataFrame) -> list[str]:
    """The generation table: greedy decoding with a KV cache, per generated token, beside time to first token."""
    if d.empty:
        return []
    ok = d[d["status"] == "ok"]
    lines = []
    if not ok.empty:
        ex = ok.iloc[0]
        lines += [f"Generation (greedy, KV cache, batch {int(ex['batch'])}): ms/token = host wall time per generated "
                  "token after the first (p50 over n generations of the interleaved trials); TTFT = time to the first "
                  "token (the prompt's prefill and its argmax), median; token match = % of greedy tokens equal to the "
                  "in-process FP32 baseline's on the same prompt (after a first difference the continuations part).",
                  ""]
    lines += ["| toolchain | method | prec | dev | batch | ms/token p50 (p10–p90) | n | tokens/s | TTFT ms | "
              "token match % | vs best FP32 | vs own FP32 | eff. % | roofline % (bound) | peak MB | status |",
              "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for _, r in d.iterrows():
        if r["status"] != "ok":
            lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | {r['device']} | {r['batch']} |"
                         + " |" * 10 + f" {r['status']}: {r['reason']} |")
            continue
        lat = f"{r['latency_p50_ms']:.2f} ({r['latency_p10_ms']:.2f}–{r['latency_p90_ms']:.2f})"
        lines.append(f"| {r['toolchain']} | {r['method']} | {r['precision']} | {r['device']} | {r['batch']} | {lat} | "
                     f"{fmt(r['latency_samples'], '.0f')} | {fmt(r['throughput'], '.1f')} | "
                     f"{fmt(r['ttft_ms'], '.1f')} | {fmt(r['token_match'], '.1f')} | "
                     f"{ci_text(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])} | "
                     f"{ci_text(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])} | {fmt(r['efficiency'], '.1f')} | "
                     f"{_roof(r)} | {_peak(r)} | {r['status']} |")
    return lines + [""]


def _twins_missing_batches(g: pd.DataFrame, batches: list) -> list[str]:
    """'toolchain method (twin of X)' for every ok calibration twin (the declaration's latency_twins) without a row
    at some batch of the table."""
    out = []
    for (tc, method), gg in g[g["status"] == "ok"].groupby(["toolchain", "method"], sort=False):
        twin = TOOLCHAINS[tc].latency_twins.get(method) if tc in TOOLCHAINS else None
        if twin and set(int(b) for b in batches) - set(int(b) for b in gg["batch"]):
            out.append(f"{tc} {method} (twin of {twin})")
    return out


def render_compact(df: pd.DataFrame, crit: Criterion = Criterion()) -> str:
    """The README block: the verdict, then one line per (model, toolchain, method, device): accuracy, Δ, agreement,
    p50 at each batch, the headline speedup over the best FP32 (with its interval) at each batch."""
    out = []
    vs = verdicts(df, crit)
    full = df[df["eval_limit"].isna()]
    for (model, weights, dataset), g_all in full.groupby(["model", "weights", "dataset"], sort=False):
        g = g_all[g_all["latency_kind"] != "decode"]
        dec = g_all[(g_all["latency_kind"] == "decode") & (g_all["status"] == "ok")]
        dec_by = {(r["toolchain"], r["method"], r["device"]): r for _, r in dec.iterrows()}
        batches = sorted(g["batch"].unique())
        metric = g["metric"].iloc[0]
        out += [f"**{model}** ({weights}, {dataset})", ""]
        if weights == "random":
            out += [f"Accuracy cells are empty: {RANDOM_REASON}.", ""]
        out += render_verdicts(vs, crit, model, weights)
        reps = g["repeats"].dropna()
        if len(reps):
            out += [f"Latency: median p50 of {int(reps.max())} runs of the plan (toolchains' order rotated); every "
                    "interval includes the between-run spread; each row's spread is in results/summary.md.", ""]
        dec_cols = ["ms/token decode b1", "decode vs best FP32"] if dec_by else []
        out += [f"| toolchain | method | prec | cov % | dev | {metric} | Δ | agree % | "
                + " | ".join(f"p50 ms b{b}" for b in batches) + " | "
                + " | ".join(f"vs best FP32 b{b}" for b in batches) + " | "
                + "".join(f"{c} | " for c in dec_cols) + "status |",
                "|---|---|---|--:|---|--:|--:|--:|" + "--:|" * (2 * len(batches) + len(dec_cols)) + "---|"]
        for (tc, method, prec, dev), gg in g.groupby(["toolchain", "method", "precision", "device"], sort=False):
            first = gg.iloc[0]
            by = {int(r["batch"]): r for _, r in gg.iterrows()}
            lat = [(fmt(by[b]["latency_p50_ms"], ".1f") or (NOT_TIMED if is_pending(by[b]) else "")) if b in by else ""
                   for b in batches]
            spd = [ci_text(by[b]["speedup_vs_best_fp32"], by[b]["speedup_best_ci_low"], by[b]["speedup_best_ci_high"])
                   if b in by else "" for b in batches]
            extra = ""
            if dec_cols:
                d = dec_by.get((tc, method, dev))
                extra = ("" if d is None else fmt(d["latency_p50_ms"], ".2f")) + " | " + (
                    "" if d is None else ci_text(d["speedup_vs_best_fp32"], d["speedup_best_ci_low"],
                                             d["speedup_best_ci_high"])) + " | "
            status = "ok" if first["status"] == "ok" else f"{first['status']}: {str(first['reason']).split(':')[0][:90]}"
            if any(is_pending(r) for r in by.values()):
                status += f" ({NOT_TIMED} at b{','.join(str(b) for b, r in by.items() if is_pending(r))})"
            out.append(f"| {tc} | {method} | {prec} | {_cov(first)} | {dev} | {fmt(first['value'], '.2f')} | {delta_text(first)} | "
                       f"{fmt(first['agreement'], '.2f')} | " + " | ".join(lat) + " | " + " | ".join(spd)
                       + f" | {extra}{status} |")
        out.append("")
        twins = _twins_missing_batches(g, batches)
        if twins:
            out += ["Empty larger-batch cells of " + "; ".join(twins) + ": calibration twins (same deployed graph, "
                    "other scales), timed at the smallest batch only; `--methods` names them to time every batch "
                    "(docs/methodology.md).", ""]
    out.append("![accuracy and fidelity vs speedup](results/accuracy_vs_latency.png)")
    return "\n".join(out)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_block(df: pd.DataFrame, crit: Criterion = Criterion()) -> str:
    """The README's results block, from the table alone (a test re-renders it from results/summary.csv)."""
    df = with_all_columns(df)
    ok = df[df["status"] == "ok"]
    head = ""
    if not ok.empty:
        e = ok.loc[ok["timestamp"].astype(str).idxmax()]
        gpu = e["gpu"] if isinstance(e["gpu"], str) and e["gpu"] else "none"
        head = (f"Measured {str(e['timestamp'])[:10]} on {e['cpu']} ({fmt(e['threads'], '.0f')} threads, GPU: {gpu}), "
                f"commit {e['git_commit']}; versions in results/summary.md.\n\n")
    return head + render_compact(df, crit)


def readme_block_of(text: str) -> str | None:
    if README_START not in text or README_END not in text:
        return None
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n")


def update_readme(readme: Path, df: pd.DataFrame, rows: list[ResultRow], crit: Criterion = Criterion()) -> bool:
    """Replace the README's results block (between the markers) with the compact table."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    pre, rest = text.split(README_START, 1)
    post = rest.split(README_END, 1)[1]
    atomic_write_text(readme, f"{pre}{README_START}\n{readme_block(df, crit)}\n{README_END}{post}")
    return True
