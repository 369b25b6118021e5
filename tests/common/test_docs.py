"""Docs cannot go stale: every generated block in docs/ and the README's results block equal what aggregation
renders from the committed results/summary.csv (rerun `python3 -m evaluation.report.aggregate --readme README.md
--docs docs/...` after committing results)."""
from pathlib import Path

import pandas as pd
import pytest

from evaluation.report.docs import DOC_BLOCK, PROVENANCE, block_spec, block_source, doc_source, render_block, rewrite_doc_blocks
from evaluation.report.verdict import Criterion
from evaluation.report.markdown import readme_block, readme_block_of
from utils.paths import REPO_ROOT, RESULTS_DIR

SUMMARY = RESULTS_DIR / "summary.csv"
DOCS = sorted((REPO_ROOT / "docs").rglob("*.md")) + [REPO_ROOT / "README.md"]


@pytest.fixture(scope="module")
def table():
    return pd.read_csv(SUMMARY)


def test_readme_block_matches_the_committed_summary(table):
    block = readme_block_of((REPO_ROOT / "README.md").read_text())
    assert block is not None, "README has no results block"
    assert block == readme_block(table, Criterion()).strip("\n")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_generated_blocks_match_the_committed_summary(doc: Path, table):
    """Every block's first line names what it was rendered from (the committed summary, or a `csv` block's own file,
    relative to the repository: no machine's absolute path), and the rest is what that renders to now."""
    for m in DOC_BLOCK.finditer(doc.read_text()):
        name, spec = m.group("name"), block_spec(m.group("args"))
        head, _, body = m.group("body").partition("\n")
        assert head == PROVENANCE.format(block_source(name, spec, "results/summary.csv")), (doc, name, head)
        assert body == render_block(name, spec, table), (doc, name)


def test_a_publish_names_the_summary_relative_to_the_repository(tmp_path):
    assert doc_source(RESULTS_DIR) == "results/summary.csv"
    assert doc_source(tmp_path) == str(tmp_path.resolve() / "summary.csv")  # outside the repository: absolute
    text = "<!-- generated:csv file=results/bench_runs.csv cols=weights -->\nold\n<!-- /generated -->"
    out = rewrite_doc_blocks(text, pd.DataFrame(), "results/summary.csv")
    assert out.split("\n")[1] == "<!-- from results/bench_runs.csv; do not edit by hand -->"


def test_a_changed_number_is_caught(table):
    """The check above can fail: one changed latency gives another block."""
    spec = {"model": "resnet50", "toolchain": "onnxruntime"}
    before = render_block("rows", spec, table)
    t2 = table.copy()
    i = t2.index[(t2["status"] == "ok") & (t2["toolchain"] == "onnxruntime") & (t2["model"] == "resnet50")
                 & t2["eval_limit"].isna()][0]
    t2.loc[i, "latency_p50_ms"] = t2.loc[i, "latency_p50_ms"] * 1.5
    assert render_block("rows", spec, t2) != before
