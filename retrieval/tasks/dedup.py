"""Near-duplicate groups of a whole index: which tweets are copies of each other, and which copy
of each did best, so a marketer can clean an archive or see how often a template was reposted."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from retrieval.errors import RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.query.ranking import DEFAULT_COLLAPSE
from retrieval.query.search import Searcher

BATCH = 1024
"""Vectors read back and range-searched at a time: memory stays at a batch of vectors and pairs."""


@dataclass(frozen=True)
class Duplicates:
    """The groups of two or more tweets linked by pairs at or above the threshold."""

    threshold: float
    vectors: int
    """Tweets with text looked at: every stored vector, plus near-copies a `--dedup` build left out."""
    members: pa.Table
    """One row per tweet in a group: group, size, vec_id, id, date, username, likes, relative_likes, best, content."""
    verbatim_texts: int
    """Texts that occur more than once in the index."""
    verbatim_in_one_group: int
    """Of those, the ones whose every copy lies in a single group."""

    @property
    def groups(self) -> int:
        return len(set(self.members.column("group").to_pylist()))

    @property
    def in_groups(self) -> int:
        return self.members.num_rows

    @property
    def removable(self) -> int:
        """Tweets beyond one per group: what keeping one representative would save."""
        return self.in_groups - self.groups

    def largest(self, n: int = 5) -> list[dict[str, Any]]:
        """The n biggest groups' best performers (size, id, content), biggest first."""
        best = [r for r in self.members.to_pylist() if r["best"]]
        return sorted(best, key=lambda r: (-r["size"], r["group"]))[:n]

    def summary(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "vectors": self.vectors,
            "groups": self.groups,
            "tweets_in_groups": self.in_groups,
            "removable": self.removable,
            "verbatim_texts": self.verbatim_texts,
            "verbatim_in_one_group": self.verbatim_in_one_group,
        }


def find_duplicates(
    searcher: Searcher, threshold: float = DEFAULT_COLLAPSE, *, nprobe: int | None = None, progress: bool = True
) -> Duplicates:
    """Range search of every stored text vector at the threshold, in batches, then connected
    components of the pairs; the best of a group has the highest likes relative to its account
    (the earliest tweet when none has likes)."""
    if not 0 < threshold <= 1:
        raise RetrievalError(f"the threshold is a cosine in (0, 1], got {threshold}")
    reader = searcher.reader
    n = reader.vector_set("text").ntotal
    if not reader.text_vectors_readable:
        raise RetrievalError(
            f"{reader.path}: its index type ({reader.manifest.text.factory}) cannot give vectors back; "
            "rebuild it with a Flat, IVF-Flat or SQ factory to find duplicates"
        )
    pairs = []
    for start in tqdm(range(0, n, BATCH), desc="near-copies", unit="batch", disable=not progress):
        pairs.append(reader.near_pairs(np.arange(start, min(n, start + BATCH)), threshold, nprobe)[:2])
    stored = [(rep, c) for rep, copies in reader.stored_copies().items() for c in copies]  # index build --dedup
    pairs.append((np.array([r for r, _ in stored], np.int64), np.array([c for _, c in stored], np.int64)))
    labels = fx.components(
        reader.manifest.next_id, np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])
    )
    sizes = np.bincount(labels)
    grouped = np.flatnonzero(sizes[labels] > 1)
    members = _members(searcher, grouped, labels[grouped], sizes)
    verbatim, together = _verbatim(reader, labels)
    return Duplicates(threshold, n + len(stored), members, verbatim, together)


def _members(searcher: Searcher, vec_ids: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> pa.Table:
    """The grouped tweets' rows, groups numbered from 1 by size (largest first), best marked."""
    rows = searcher.reader.rows([int(i) for i in vec_ids])
    levels = searcher.levels()
    by_label: dict[int, list[dict[str, Any]]] = {}
    for row, label in zip(rows, labels):
        by_label.setdefault(int(label), []).append(row)
    order = sorted(by_label, key=lambda label: (-sizes[label], min(r["vec_id"] for r in by_label[label])))
    out = []
    for number, label in enumerate(order, 1):
        group = by_label[label]
        relative = [levels.relative(r) for r in group]
        best = max(range(len(group)), key=lambda i: _best_key(group[i], relative[i]))
        for i, r in enumerate(group):
            out.append(
                {
                    "group": number,
                    "size": len(group),
                    "vec_id": r["vec_id"],
                    "id": r["tweet_id"],
                    "date": r["date"],
                    "username": r["username"],
                    "likes": r["likes"],
                    "relative_likes": relative[i],
                    "best": i == best,
                    "content": r["content"],
                }
            )
    return pa.Table.from_pylist(out, schema=MEMBERS_SCHEMA)


MEMBERS_SCHEMA = pa.schema(
    [
        ("group", pa.int64()),
        ("size", pa.int64()),
        ("vec_id", pa.int64()),
        ("id", pa.int64()),
        ("date", pa.timestamp("us")),
        ("username", pa.string()),
        ("likes", pa.int64()),
        ("relative_likes", pa.float64()),
        ("best", pa.bool_()),
        ("content", pa.string()),
    ]
)


def _best_key(row: dict[str, Any], relative: float | None) -> tuple:
    """Highest relative likes first; without likes, the earliest tweet (the original)."""
    when = row["date"].timestamp() if row["date"] is not None else float("inf")
    return (relative is not None, relative or 0.0, -when, -row["vec_id"])


def _verbatim(reader: Any, labels: np.ndarray) -> tuple[int, int]:
    """How many texts occur more than once, and how many of them have all their copies in one group."""
    copies = reader.verbatim_copies()
    together = sum(len({int(labels[i]) for i in ids}) == 1 for ids in copies)
    return len(copies), together


def write_members(duplicates: Duplicates, path: str | Path) -> Path:
    """The members table as parquet, or CSV for a .csv name, written whole or not at all."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".csv"):
        raise RetrievalError(f"{path}: write the groups to a .parquet or .csv file")
    if not path.parent.is_dir():
        raise RetrievalError(f"{path}: no folder {path.parent}")
    # a name of its own, not mkstemp's file: that one is private (0600), the file is for sharing
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        if path.suffix.lower() == ".csv":
            pacsv.write_csv(duplicates.members, tmp)
        else:
            pq.write_table(duplicates.members, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
