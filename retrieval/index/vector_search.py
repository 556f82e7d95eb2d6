"""Vector search over one vector set of an index: unfiltered, filtered through IVF lists,
exact over a filter's rows, or down to a score."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.index import faiss_ops as fx
from retrieval.index.manifest import VectorSetInfo

IMAGES_PER_TWEET = 4
"""Image hits asked per wanted tweet: a tweet has up to four images, and counts once."""
EXACT_FILTER_BELOW = 2_000
"""A filter admitting fewer vectors than this is searched exactly over its rows: measured on 200k
vectors (bench/bench_filters.py, docs/benchmarks.md), reading 2,000 vectors back and comparing
costs less than the ~1,600 lists IVF would visit (IVF-Flat 2.5x, SQ8 1.2x less); from about
3,000 (SQ8) or 4,000 (Flat) the lists cost less, at a recall still >= 0.98."""


@dataclass(frozen=True)
class VectorSet:
    """One vector set of an index and how its FAISS positions map to vec_ids.

    Text vectors sit at their vec_id; image vectors have positions of their own (a tweet may
    have several images or none), mapped back through `owners`.
    """

    name: str
    info: VectorSetInfo
    shards: list[fx.Shard]
    owners: np.ndarray | None = None
    """vec_id of each image position; None for the text set, whose positions are vec_ids."""

    @property
    def embedder(self) -> Mapping[str, Any]:
        return self.info.embedder

    @property
    def nprobe(self) -> int:
        return self.info.nprobe

    @property
    def nlist(self) -> int:
        return max((fx.nlist_of_index(s.index) for s in self.shards), default=0)

    @property
    def dim(self) -> int:
        """Width of the vectors (0 for an empty set)."""
        return max((s.index.d for s in self.shards), default=0)

    @property
    def ntotal(self) -> int:
        return sum(s.index.ntotal for s in self.shards)


@dataclass(frozen=True)
class SearchPlan:
    """Which path a vector search takes and why, for `--explain`."""

    space: str
    path: str
    """exact (a Flat index), exact_rows (the admitted rows only) or ivf (nprobe lists)."""
    total: int
    allowed: np.ndarray | None = field(repr=False)
    """Sorted admitted positions; None when nothing is filtered."""
    nprobe: int
    reason: str

    @property
    def admitted(self) -> int:
        return self.total if self.allowed is None else len(self.allowed)

    def to_json(self) -> dict[str, Any]:
        facts = {"space": self.space, "path": self.path, "admitted": self.admitted, "total": self.total}
        return facts | {"nprobe": self.nprobe, "reason": self.reason}


def plan_search(vset: VectorSet, allowed: np.ndarray | None, nprobe: int) -> SearchPlan:
    """A filter that admits a fraction f of the vectors visits nprobe / f lists, so about as many
    admitted vectors are scanned as an unfiltered query scans (the tuned recall holds). One that
    admits fewer than EXACT_FILTER_BELOW is searched exactly over those rows instead: cheaper
    than the many lists it would visit (docs/benchmarks.md), and its recall is 1.0."""
    total, nlist, name = vset.ntotal, vset.nlist, vset.name
    if not nlist:
        return SearchPlan(name, "exact", total, allowed, 0, f"{vset.info.factory} index: every vector is compared")
    if allowed is None:
        nprobe = min(nprobe, nlist)  # faiss visits at most every list, and so does the plan
        return SearchPlan(name, "ivf", total, None, nprobe, f"no filter: {nprobe} of {nlist} lists")
    admitted = len(allowed)
    if admitted < EXACT_FILTER_BELOW:
        why = f"the filter admits {admitted:,} of {total:,} vectors (< {EXACT_FILTER_BELOW:,}): exact over those rows"
        return SearchPlan(name, "exact_rows", total, allowed, nlist, why)
    widened = min(nlist, math.ceil(nprobe / (admitted / max(total, 1))))
    why = f"the filter admits {admitted:,} of {total:,} vectors: {widened} of {nlist} lists (nprobe {nprobe} / share)"
    return SearchPlan(name, "ivf", total, allowed, widened, why)


def vector_search(
    vset: VectorSet,
    plan: SearchPlan,
    queries: np.ndarray,
    k: int,
    exclude: set[int] | frozenset[int] = frozenset(),
    min_score: float | None = None,
) -> list[list[tuple[int, float]]]:
    """Per query, up to k (vec_id, score) pairs, best first, one per tweet.

    A filtered IVF search that still comes back short is repeated over every list, so it returns
    k results whenever k exist. `min_score` keeps the hits at or above it (a FAISS range search
    where the index type has one). In the image set a tweet counts once, at its best image.
    """
    asked = k + len(exclude) if vset.owners is None else IMAGES_PER_TWEET * (k + len(exclude))
    if min_score is None:
        scores, ids = _top(vset, plan, queries, asked, min(k, plan.admitted))
        return [_per_tweet(s, i, vset.owners, exclude, k) for s, i in zip(scores, ids)]
    found = [_above(vset, plan, query, min_score, asked) for query in queries]
    return [_per_tweet(s, i, vset.owners, exclude, k) for s, i in found]


def _top(vset: VectorSet, plan: SearchPlan, queries: np.ndarray, k: int, wanted: int) -> tuple[np.ndarray, np.ndarray]:
    if plan.path == "exact_rows" and (vectors := fx.reconstruct(vset.shards, plan.allowed)) is not None:
        scores, rows = fx.exact_search(vectors, queries, min(k, len(vectors)))
        return scores, np.where(rows >= 0, plan.allowed[np.maximum(rows, 0)], -1)
    scores, ids = fx.search(vset.shards, queries, k, nprobe=plan.nprobe, allowed=plan.allowed)
    if plan.allowed is not None and plan.nprobe < vset.nlist:
        short = (ids >= 0).sum(axis=1) < wanted
        if short.any():
            scores[short], ids[short] = fx.search(
                vset.shards, queries[short], k, nprobe=vset.nlist, allowed=plan.allowed
            )
    return scores, ids


def _above(
    vset: VectorSet, plan: SearchPlan, query: np.ndarray, min_score: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hits at or above min_score: a range search; over exact rows, one top-k over all of them
    (their vectors are read back once); for index types without range search, a top-k doubled
    until its last hit falls below the score."""
    if plan.path == "exact_rows":
        k = max(k, plan.admitted)
    else:
        found = fx.range_search(vset.shards, query, min_score, nprobe=plan.nprobe, allowed=plan.allowed)
        if found is not None:
            return found
    while True:
        scores, ids = (a[0] for a in _top(vset, plan, query[None], k, 0))
        if (ids >= 0).sum() < k or scores[-1] < min_score or k >= plan.admitted:
            keep = (ids >= 0) & (scores >= min_score)
            return scores[keep], ids[keep]
        k *= 2


def _per_tweet(
    scores: np.ndarray, ids: np.ndarray, owners: np.ndarray | None, exclude: set[int] | frozenset[int], k: int
) -> list[tuple[int, float]]:
    """Up to k (vec_id, score), best first, each tweet once (at its best image) and none excluded."""
    best: dict[int, float] = {}
    for s, i in zip(scores, ids):
        if i < 0:
            continue
        vec_id = int(i) if owners is None else int(owners[i])
        if vec_id not in exclude and vec_id not in best:
            best[vec_id] = float(s)
    return list(best.items())[:k]
