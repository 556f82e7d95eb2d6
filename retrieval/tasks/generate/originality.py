"""Is a draft new? Its nearest past tweet in the index, and how close it sits to the brand's voice.

A marketer must not repost last year's tweet by accident, and a draft that copies an exemplar
says nothing the exemplar did not. The near-copy line is the `dedup` one: at cosine 0.95 every
verbatim duplicate of the 10,000 behaviour tweets falls in one group, and reposts with a hashtag
or a word changed join them (docs/benchmarks.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.index.filters import Filters

if TYPE_CHECKING:
    from retrieval.query.search import Searcher

NEAR_COPY = 0.95


@dataclass(frozen=True)
class Nearest:
    """The past tweet closest to a draft, and their cosine."""

    vec_id: int
    tweet_id: int | None
    username: str | None
    content: str
    similarity: float

    @property
    def near_copy(self) -> bool:
        return self.similarity >= NEAR_COPY

    def to_json(self) -> dict[str, Any]:
        return {
            "vec_id": self.vec_id,
            "tweet_id": self.tweet_id,
            "username": self.username,
            "content": self.content,
            "similarity": round(self.similarity, 4),
            "near_copy": self.near_copy,
        }


def nearest_past(
    searcher: Searcher,
    vectors: np.ndarray,
    *,
    before: dt.datetime | None = None,
    exclude: frozenset[int] = frozenset(),
) -> list[Nearest | None]:
    """Per draft vector, the nearest indexed tweet with text (posted before `before` when given):
    None when the index has none."""
    filters = Filters(until=before - dt.timedelta(microseconds=1)) if before else None
    pages = searcher.similar_vectors(np.atleast_2d(vectors), 5, filters=filters, exclude=exclude)
    out: list[Nearest | None] = []
    for hits in pages:
        hit = next((h for h in hits if h.tweet.get("content")), None)
        t = hit.tweet if hit else {}
        out.append(Nearest(t["vec_id"], t.get("tweet_id"), t.get("username"), t["content"], hit.score) if hit else None)
    return out


def account_centroid(searcher: Searcher, username: str, exclude: frozenset[int] = frozenset()) -> np.ndarray | None:
    """The unit mean of the account's text vectors (its voice), read back from the index or, for a
    compressed index that cannot give vectors back, embedded again; None for an unknown account."""
    rows = searcher.reader.con.execute(
        "SELECT vec_id, content FROM tweets WHERE has_vector AND username = ? AND content IS NOT NULL ORDER BY vec_id",
        [username],
    ).fetchall()
    rows = [(i, c) for i, c in rows if i not in exclude]
    if not rows:
        return None
    if searcher.reader.text_vectors_readable:
        vectors = searcher.reader.text_vectors(np.array([i for i, _ in rows], dtype=np.int64))
    else:
        vectors = searcher.embedder.encode([c for _, c in rows])
    centre = vectors.mean(axis=0)
    return centre / max(float(np.linalg.norm(centre)), 1e-12)


def brand_voice(vectors: np.ndarray, centroid: np.ndarray | None) -> list[float | None]:
    """Cosine of each draft to the account's centroid."""
    if centroid is None:
        return [None] * len(vectors)
    return [float(s) for s in np.atleast_2d(vectors) @ centroid]


def novelty(vectors: np.ndarray, exemplars: Sequence[np.ndarray]) -> list[float | None]:
    """1 - the cosine of each draft to its nearest exemplar: 0 for a copy, None without exemplars."""
    if not len(exemplars):
        return [None] * len(vectors)
    return [max(0.0, 1.0 - float(s)) for s in (np.atleast_2d(vectors) @ np.asarray(exemplars).T).max(axis=1)]
