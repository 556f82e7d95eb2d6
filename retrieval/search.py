"""Similar past tweets: nearest neighbours of a text or of a stored tweet, with metadata filters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed import Embedder, embedder_for_index
from retrieval.errors import RetrievalError
from retrieval.reader import IndexReader
from retrieval.store import Filters


@dataclass(frozen=True)
class Hit:
    """One neighbour: its rank (1-based), cosine similarity and metadata row."""

    rank: int
    score: float
    tweet: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        tweet = {k: v for k, v in self.tweet.items() if k not in ("has_vector", "row", "source")}
        if tweet.get("date") is not None:
            tweet["date"] = tweet["date"].isoformat()
        tweet["media"] = json.loads(tweet["media"] or "[]")
        return {"rank": self.rank, "score": round(self.score, 4), **tweet}


class Searcher:
    """An index plus the embedder it was built with; queries go through the same model and precision."""

    def __init__(self, reader: IndexReader, embedder: Embedder) -> None:
        if embedder.dim != reader.embedder["dim"]:
            raise RetrievalError(
                f"{reader.path}: index holds {reader.embedder['dim']}-d vectors, "
                f"embedder {embedder.name} gives {embedder.dim}-d"
            )
        self.reader = reader
        self.embedder = embedder

    @classmethod
    def open(cls, path: str | Path, embedder: Embedder | None = None) -> Searcher:
        reader = IndexReader(path)
        return cls(reader, embedder or embedder_for_index(reader.embedder))

    def similar(
        self, text: str, k: int = 10, *, filters: Filters | None = None, nprobe: int | None = None
    ) -> list[Hit]:
        if not text or not text.strip():
            raise RetrievalError("the query text is empty")
        return self.similar_vectors(self.embedder.encode([text.strip()]), k, filters=filters, nprobe=nprobe)[0]

    def similar_to_tweet(
        self, tweet_id: int, k: int = 10, *, filters: Filters | None = None, nprobe: int | None = None
    ) -> list[Hit]:
        """Neighbours of an indexed tweet, the tweet itself left out."""
        tweet = self.reader.find_tweet(tweet_id)
        if tweet is None:
            raise RetrievalError(f"{self.reader.path}: no tweet with id {tweet_id}")
        if not tweet["content"]:
            raise RetrievalError(f"{self.reader.path}: tweet {tweet_id} has no text to search with")
        query = self.embedder.encode([tweet["content"]])
        return self.similar_vectors(query, k, filters=filters, nprobe=nprobe, exclude={tweet["vec_id"]})[0]

    def similar_vectors(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[list[Hit]]:
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        found = self.reader.search(queries, k, filters=filters, nprobe=nprobe, exclude=exclude)
        rows = {r["vec_id"]: r for r in self.reader.rows(sorted({i for hits in found for i, _ in hits}))}
        return [[Hit(rank, score, rows[i]) for rank, (i, score) in enumerate(hits, 1)] for hits in found]

    def close(self) -> None:
        self.reader.close()
