"""Similar past tweets: nearest neighbours of a text or of a stored tweet, with metadata filters."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.embed.text import Embedder, embedder_for_index
from retrieval.errors import RetrievalError
from retrieval.index.filters import Filters
from retrieval.index.keywords import tokenize
from retrieval.index.manifest import read_manifest
from retrieval.index.reader import SPACES, IndexReader
from retrieval.query.levels import GroupStats
from retrieval.query.ranking import Candidate, Levels, Ranked, Ranking, rank
from retrieval.schema import stored_media

if TYPE_CHECKING:
    import PIL.Image

    from retrieval.embed.clip import ClipEmbedder

MODES = ("vector", "keyword", "hybrid")
"""How a text query finds tweets: its meaning (vectors), its words (BM25), or both fused."""
RRF_K = 60
"""The rank offset of reciprocal-rank fusion (the usual 60: a top rank on one side is not decisive)."""
FUSION_DEPTH = 50
"""Hits taken from each side before fusing."""


@dataclass(frozen=True)
class Hit:
    """One neighbour: its rank (1-based), cosine similarity and metadata row."""

    rank: int
    score: float
    tweet: dict[str, Any]
    found_by: Mapping[str, int] = field(default_factory=dict)
    """Keyword and hybrid search: which side found the tweet and its rank there ({"vector": 3, "keyword": 1})."""
    near_copies: tuple[int, ...] = ()
    """Ids of the hits folded into this one (within the collapse threshold of it or of each other)."""
    factors: Mapping[str, float] = field(default_factory=dict)
    """What placed it under rank engagement or blend: relative_likes, typical_likes, engagement, decay, blended."""

    @classmethod
    def of(cls, position: int, ranked: Ranked) -> Hit:
        c = ranked.candidate
        copies = tuple(_shown_id(n.tweet) for n in ranked.near_copies)
        return cls(position, c.score, c.tweet, c.found_by, copies, ranked.factors)

    @property
    def id(self) -> int:
        """The id to ask for it by (`similar --id`, a profile's liked tweets)."""
        return _shown_id(self.tweet)

    def to_json(self) -> dict[str, Any]:
        tweet = {k: v for k, v in self.tweet.items() if k not in ("has_vector", "row", "source")}
        if tweet.get("date") is not None:
            tweet["date"] = tweet["date"].isoformat()
        tweet["media"] = stored_media(tweet["media"])
        found = {"found_by": dict(self.found_by)} if self.found_by else {}
        copies = {"near_copies": list(self.near_copies)} if self.near_copies else {}
        factors = {"factors": {k: round(v, 4) for k, v in self.factors.items()}} if self.factors else {}
        return {"rank": self.rank, "score": round(self.score, 4), **tweet, **found, **copies, **factors}


def _shown_id(tweet: Mapping[str, Any]) -> int:
    """The id a user knows a tweet by: its source file's id, or its row for a file without ids."""
    return tweet["tweet_id"] if tweet.get("tweet_id") is not None else tweet["vec_id"]


def open_index(
    path: str | Path, *, embedder: Embedder | None = None, clip: ClipEmbedder | None = None, check: bool = False
) -> Searcher:
    """An index opened for queries with the models it was built with (the text model loads on
    first use); `check` hashes every file first instead of only the changed ones."""
    return Searcher.open(path, embedder, clip=clip, check=check)


def index_clip(
    path: str | Path | None, checkpoint: str | Path | None = None, model: str | None = None
) -> ClipEmbedder | None:
    """The CLIP model asked for or, for an index with image vectors, the one it was built with
    (while that file is still there); None means text only."""
    from retrieval.embed.clip import clip_for

    image = read_manifest(path).image if path is not None else None
    return clip_for(checkpoint, model, image.embedder if image is not None else None)


class Searcher:
    """An index plus the models it was built with; queries go through the same models.

    The text model loads on first use, so image queries never pay for it. The CLIP model is
    given by the caller (its checkpoint is a file the user owns), or None for text only.
    """

    def __init__(
        self, reader: IndexReader, embedder: Embedder | None = None, *, clip: ClipEmbedder | None = None
    ) -> None:
        dim = reader.sets["text"].dim
        if embedder is not None and dim and embedder.dim != dim:
            raise RetrievalError(
                f"{reader.path}: index holds {dim}-d vectors, embedder {embedder.name} gives {embedder.dim}-d"
            )
        image = reader.manifest.image
        if clip is not None and image is not None:
            clip.check_built_with(image.embedder, reader.path)
        self.reader = reader
        self._embedder = embedder
        self.clip = clip
        self._levels: Levels | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        embedder: Embedder | Future[Embedder] | None = None,
        *,
        clip: ClipEmbedder | None = None,
        check: bool = False,
    ) -> Searcher:
        """`embedder` may still be loading (retrieval.query.early): the index is opened first, so a
        damaged index is reported before a text model that fails to load."""
        reader = IndexReader(path, check=check)
        return cls(reader, embedder.result() if isinstance(embedder, Future) else embedder, clip=clip)

    @property
    def embedder(self) -> Embedder:
        """The text model the index was built with, loaded when first needed (a command that
        knows it will need it starts it earlier: retrieval.query.early)."""
        if self._embedder is None:
            if self.reader.embedder["name"] is None:
                raise RetrievalError(f"{self.reader.path}: the index holds no text vectors; query it with an image")
            self._embedder = embedder_for_index(self.reader.embedder)
        return self._embedder

    def _clip(self) -> ClipEmbedder:
        if self.clip is None:
            raise RetrievalError("image search needs the CLIP model the index was built with", hint="clip_checkpoint")
        return self.clip

    def similar(
        self,
        text: str,
        k: int = 10,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        space: str = "text",
        mode: str = "vector",
        min_score: float | None = None,
        ranking: Ranking | None = None,
    ) -> list[Hit]:
        """Tweets near a text: by the text model over tweet texts (`text`), or by CLIP's text tower
        over their images (`image`). `mode` keyword uses BM25 over the words instead, hybrid fuses
        the two rankings; the image space is vector only. `min_score` keeps vector hits at or
        above that cosine similarity; `ranking` folds near-copies and orders the page."""
        if not text or not text.strip():
            raise RetrievalError("the query text is empty")
        if min_score is not None and mode != "vector":
            raise RetrievalError(f"--min-score is a cosine similarity: use it with mode vector, not {mode}")
        if space == "image" and mode != "vector":
            raise RetrievalError(f"the image space is searched by vectors only, not {mode}")
        if space == "image":
            query = self._clip().encode([text.strip()])
            return self.similar_vectors(
                query, k, filters=filters, nprobe=nprobe, space="image", min_score=min_score, ranking=ranking
            )[0]
        if space != "text":
            raise RetrievalError(f"unknown space {space!r}; use one of {', '.join(SPACES)}")
        if mode == "vector":
            query = self.embedder.encode([text.strip()])
            return self.similar_vectors(query, k, filters=filters, nprobe=nprobe, min_score=min_score, ranking=ranking)[
                0
            ]
        if mode not in MODES:
            raise RetrievalError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if not tokenize(text):
            raise RetrievalError(f"{text.strip()!r}: no words to search for by keyword")
        ranking = ranking or Ranking()
        wanted = ranking.depth(k)
        depth = wanted if mode == "keyword" else max(wanted, FUSION_DEPTH)
        sides = {"keyword": self.reader.keyword_search(text, depth, filters=filters)}
        if mode == "hybrid":
            query = self.embedder.encode([text.strip()])
            sides["vector"] = self.reader.search(query, depth, filters=filters, nprobe=nprobe)[0]
        ranks, scored = _fused(sides, wanted)
        return self._pages([scored], k, ranking, [ranks])[0]

    def image_vector(self, image: PIL.Image.Image) -> np.ndarray:
        """The CLIP vector of one image, checked against an index that has image vectors."""
        self.reader.vector_set("image")
        return self._clip().encode_images([image])[0]

    def similar_image(
        self,
        image: PIL.Image.Image,
        k: int = 10,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        ranking: Ranking | None = None,
    ) -> list[Hit]:
        """Tweets whose images look like this one (CLIP image vectors)."""
        query = self.image_vector(image)[None]
        return self.similar_vectors(query, k, filters=filters, nprobe=nprobe, space="image", ranking=ranking)[0]

    def similar_to_tweet(
        self,
        tweet_id: int,
        k: int = 10,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        ranking: Ranking | None = None,
    ) -> list[Hit]:
        """Neighbours of an indexed tweet, the tweet itself left out."""
        tweet = self.reader.find_tweet(tweet_id)
        if tweet is None:
            raise RetrievalError(f"{self.reader.path}: no tweet with id {tweet_id}")
        if not tweet["content"]:
            raise RetrievalError(f"{self.reader.path}: tweet {tweet_id} has no text to search with")
        query = self.embedder.encode([tweet["content"]])
        exclude = {tweet["vec_id"]}
        return self.similar_vectors(query, k, filters=filters, nprobe=nprobe, exclude=exclude, ranking=ranking)[0]

    def similar_vectors(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
        space: str = "text",
        min_score: float | None = None,
        ranking: Ranking | None = None,
    ) -> list[list[Hit]]:
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        ranking = ranking or Ranking()
        found = self.reader.search(
            queries, ranking.depth(k), filters=filters, nprobe=nprobe, exclude=exclude, space=space, min_score=min_score
        )
        return self._pages(found, k, ranking)

    def _pages(
        self,
        found: list[list[tuple[int, float]]],
        k: int,
        ranking: Ranking,
        found_by: list[dict[int, dict[str, int]]] | None = None,
    ) -> list[list[Hit]]:
        """Per query, the page of k hits: candidates with their rows, folded and ordered by `ranking`."""
        wanted = sorted({i for hits in found for i, _ in hits})
        copies = self.reader.stored_copies(wanted)
        rows = {r["vec_id"]: r for r in self.reader.rows(sorted({*wanted, *(i for c in copies.values() for i in c)}))}
        pages = []
        for q, hits in enumerate(found):
            sides = found_by[q] if found_by else {}
            candidates = []
            for i, score in hits:
                if i in rows:
                    candidates.append(Candidate(i, score, rows[i], sides.get(i, {})))
                    candidates += [Candidate(c, score, rows[c], vector_of=i) for c in copies.get(i, []) if c in rows]
            ranked = rank(
                candidates, k, ranking, vectors=self.text_vectors, levels=self.levels, newest=self.reader.last_date
            )
            pages.append([Hit.of(position, r) for position, r in enumerate(ranked, 1)])
        return pages

    def levels(self) -> Levels:
        """Each account's usual likes over the whole index, read once per opened index."""
        if self._levels is None:
            stats = GroupStats.from_groups(self.reader.likes_by_group(), self.reader.account_companies())
            self._levels = Levels(stats)
        return self._levels

    def text_vectors(self, candidates: list[Candidate]) -> np.ndarray:
        """The text vectors of candidates (zeros for those without text; a near-copy left out of the
        vector set gets the one that stands for it): read back from the index, or embedded again
        where its type cannot give them back."""
        vectors = np.zeros((len(candidates), self.reader.sets["text"].dim), dtype=np.float32)
        placed = [i for i, c in enumerate(candidates) if c.tweet["has_vector"] or c.vector_of is not None]
        if not placed:
            return vectors
        if self.reader.text_vectors_readable:
            ids = [candidates[i].vec_id if candidates[i].vector_of is None else candidates[i].vector_of for i in placed]
            vectors[placed] = self.reader.text_vectors(np.array(ids, dtype=np.int64))
        else:
            vectors[placed] = self.embedder.encode([candidates[i].tweet["content"] for i in placed])
        return vectors

    def close(self) -> None:
        self.reader.close()


def _fused(
    sides: Mapping[str, list[tuple[int, float]]], k: int
) -> tuple[dict[int, dict[str, int]], list[tuple[int, float]]]:
    """Each tweet's rank per side, and the top k by reciprocal-rank fusion: each side adds
    1 / (RRF_K + rank) for every tweet it found, so a tweet both sides rank high comes first; with
    one side this is that side's order and scores."""
    ranks: dict[int, dict[str, int]] = {}
    for side, found in sides.items():
        for position, (vec_id, _) in enumerate(found, 1):
            ranks.setdefault(vec_id, {})[side] = position
    if len(sides) == 1:
        ((_, found),) = sides.items()
        return ranks, list(found[:k])
    fused = {vec_id: sum(1 / (RRF_K + r) for r in by.values()) for vec_id, by in ranks.items()}
    return ranks, sorted(fused.items(), key=lambda item: -item[1])[:k]
