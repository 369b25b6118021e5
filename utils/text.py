"""Offline English corpus and token-id helpers for the language-model routes (NumPy only).

The embedded corpus is CPython's `pydoc_data.topics` (about 465 kB of reference text that
ships with every Python). Documents are split train/validation by a seeded permutation, so
calibration text (drawn from train) never overlaps evaluation text.
"""
from __future__ import annotations

import hashlib

import numpy as np

from utils.errors import SuiteError

CORPUS_SEED = 0
VAL_FRACTION = 0.1
LM_CALIB_SEED = 4321


def _document_groups(topics: dict[str, str], min_chars: int = 80) -> list[list[str]]:
    """Documents that share any paragraph (of >= min_chars) end up in one group (union-find).

    pydoc_data.topics repeats whole sections across documents, so a split by document alone
    would put the same text on both sides; splitting by group keeps train and validation
    disjoint by text, not only by index.
    """
    import re
    from collections import defaultdict

    names = sorted(topics)
    parent = {n: n for n in names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    holders: dict[str, set] = defaultdict(set)
    for n in names:
        for para in re.split(r"\n\s*\n", topics[n]):
            para = para.strip()
            if len(para) >= min_chars:
                holders[para].add(n)
    for docs in holders.values():
        docs = sorted(docs)
        for d in docs[1:]:
            parent[find(d)] = find(docs[0])
    groups: dict[str, list] = defaultdict(list)
    for n in names:
        groups[find(n)].append(n)
    return sorted(groups.values())


def embedded_corpus() -> dict[str, str]:
    """{'train': text, 'validation': text} from pydoc_data.topics, split by groups of documents.

    Groups (documents sharing text) are taken in a seeded order into validation until it holds
    VAL_FRACTION of the characters; a group larger than twice that share always stays in train.
    """
    from pydoc_data.topics import topics

    groups = _document_groups(topics)
    size = [sum(len(topics[d]) for d in g) for g in groups]
    total = sum(size)
    val: list[str] = []
    got = 0
    for i in np.random.default_rng(CORPUS_SEED).permutation(len(groups)):
        if got >= VAL_FRACTION * total:
            break
        if size[i] <= 2 * VAL_FRACTION * total:
            val += groups[i]
            got += size[i]
    val = sorted(val)
    train = sorted(set(topics) - set(val))
    join = lambda keys: "\n\n".join(topics[k].strip() for k in keys)  # noqa: E731
    return {"train": join(train), "validation": join(val), "train_docs": train, "validation_docs": val}


def lm_calibration(train_ids: np.ndarray, n: int, seq_len: int, seed: int = LM_CALIB_SEED) -> np.ndarray:
    """n non-overlapping windows of seq_len tokens from the training ids, seeded: (n, seq_len) int64."""
    train_ids = np.asarray(train_ids, dtype=np.int64).reshape(-1)
    available = train_ids.size // seq_len
    if n <= 0:
        raise SuiteError(f"calibration size must be >= 1 (got {n})")
    if n > available:
        raise SuiteError(f"calibration size {n} is larger than the train split ({available} windows of {seq_len} tokens)")
    starts = np.sort(np.random.default_rng(seed).permutation(available)[:n]) * seq_len
    return np.stack([train_ids[s:s + seq_len] for s in starts])


def ids_sha(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def lm_latency_input(batch: int, seq_len: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64)
