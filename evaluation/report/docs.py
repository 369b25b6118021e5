"""Generated blocks of the README and docs/ (<!-- generated:NAME k=v --> ... <!-- /generated -->): rewritten from the
published table (rows, verdict) or another committed results CSV, never by hand; each keeps its provenance line."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from utils.atomic import atomic_write_text
from utils.errors import SuiteError
from utils.paths import REPO_ROOT
from evaluation.report.format import ci_text, delta_text, fmt
from evaluation.report.table import with_all_columns
from evaluation.report.verdict import Criterion, render_verdicts, verdicts


DOC_BLOCK = re.compile(r"<!-- generated:(?P<name>[\w.-]+)(?P<args>[^>]*)-->\n(?P<body>.*?)<!-- /generated -->", re.S)


def _block_rows(df: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """The ok full-evaluation rows a `rows` block selects: weights=embedded and full-sequence latency unless the block
    says otherwise (`weights=random`, `kind=decode` for the generation rows)."""
    g = df[(df["status"] == "ok") & df["eval_limit"].isna()]
    spec = {"weights": "embedded", **spec}
    g = g[(g["latency_kind"] == "decode") == (spec.get("kind") == "decode")]
    for k in ("model", "weights", "toolchain", "device"):
        if spec.get(k):
            g = g[g[k].isin(spec[k].split(","))]
    if spec.get("batch"):
        g = g[g["batch"].isin([int(x) for x in spec["batch"].split(",")])]
    return g


def render_csv(path: Path, cols: list[str] | None = None, head_n: int | None = None,
               where: dict[str, str] | None = None) -> str:
    """A committed results CSV (a sweep, a layer report, a settings measurement) as a Markdown table: optionally
    only some columns (`cols=a,b`), rows matching `where` (`where=col:value`), the first `head=N` rows."""
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return "(empty)\n"
    head, body = rows[0], rows[1:]
    for k, v in (where or {}).items():
        body = [r for r in body if r[head.index(k)] == v]
    if head_n:
        body = body[:head_n]
    if cols:
        idx = [head.index(c) for c in cols]
        head, body = [head[i] for i in idx], [[r[i] for i in idx] for r in body]

    def cell(x: str) -> str:
        try:
            v = float(x)
        except ValueError:
            return x
        return f"{v:.3g}" if abs(v) < 1000 and v != int(v) else (str(int(v)) if v == int(v) else f"{v:.0f}")

    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in body]
    return "\n".join(out) + "\n"


def render_block(name: str, spec: dict, df: pd.DataFrame, crit: Criterion = Criterion()) -> str:
    """A generated block for docs: `rows` (a table of the selected ok rows of the summary), `verdict`, or `csv`
    (file=results/<name>.csv: another committed results table)."""
    if name == "csv":
        from utils.paths import REPO_ROOT

        where = dict(w.split(":", 1) for w in spec["where"].split(";")) if spec.get("where") else None
        if not (REPO_ROOT / spec["file"]).is_file():  # a table whose command has not been published yet
            return f"({spec['file']} is not published yet: the command named above writes it with --publish)\n"
        return render_csv(REPO_ROOT / spec["file"], spec["cols"].split(",") if spec.get("cols") else None,
                          int(spec["head"]) if spec.get("head") else None, where)
    df = with_all_columns(df)
    if name == "verdict":
        vs = [v for v in verdicts(df, crit) if all(not spec.get(k) or str(v[k]) in spec[k].split(",")
                                                    for k in ("model", "weights", "device"))]
        return "\n".join(render_verdicts(vs, crit)) or "(no row meets the criterion)\n"
    if name != "rows":
        raise SuiteError(f"unknown generated block {name!r} (valid: rows, verdict, csv)")
    g = _block_rows(df, spec)
    lines = ["| model | toolchain | method | prec | batch | value | Δ | agree % | SQNR dB | KL | p50 ms | "
             "vs best FP32 | vs own FP32 |", "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for _, r in g.iterrows():
        lines.append(f"| {r['model']} | {r['toolchain']} | {r['method']} | {r['precision']} | {r['batch']} | "
                     f"{fmt(r['value'], '.2f')} | {delta_text(r)} | {fmt(r['agreement'], '.2f')} | "
                     f"{fmt(r['sqnr_db'], '.1f')} | {fmt(r['kl'], '.2e')} | {fmt(r['latency_p50_ms'], '.2f')} | "
                     f"{ci_text(r['speedup_vs_best_fp32'], r['speedup_best_ci_low'], r['speedup_best_ci_high'])} | "
                     f"{ci_text(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])} |")
    return "\n".join(lines) + "\n"


def block_spec(args: str) -> dict:
    return dict(kv.split("=", 1) for kv in args.split() if "=" in kv)


PROVENANCE = "<!-- from {}; do not edit by hand -->"


def doc_source(out_dir: Path) -> str:
    """The summary a run's generated doc blocks come from, as their provenance line names it: relative to the
    repository when it lies inside it (results/summary.csv for the committed reference), else absolute."""
    path = Path(out_dir).resolve() / "summary.csv"
    try:
        return str(path.relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)


def block_source(name: str, spec: dict, source: str) -> str:
    """What a generated block is rendered from: a `csv` block its own file, every other block the summary."""
    return spec["file"] if name == "csv" else source


def rewrite_doc_blocks(text: str, df: pd.DataFrame, source: str) -> str:
    """Rewrite every `<!-- generated:NAME k=v ... -->` ... `<!-- /generated -->` block from the table; each block's
    first line names its source (PROVENANCE)."""
    def sub(m):
        spec = block_spec(m.group("args"))
        body = render_block(m.group("name"), spec, df)
        return (f"<!-- generated:{m.group('name')}{m.group('args')}-->\n"
                f"{PROVENANCE.format(block_source(m.group('name'), spec, source))}\n{body}<!-- /generated -->")
    return DOC_BLOCK.sub(sub, text)


def update_docs(docs: list[Path], df: pd.DataFrame, source: str) -> list[Path]:
    changed = []
    for p in docs:
        text = p.read_text(encoding="utf-8")
        new = rewrite_doc_blocks(text, df, source)
        if new != text:
            atomic_write_text(p, new)
            changed.append(p)
    return changed
