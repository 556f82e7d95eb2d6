"""What a result page shows first: near-copies folded into one hit, then the candidates ordered by
similarity, by likes relative to their account's usual level, by date, or by a blend of the three."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.index.faiss_ops import near_copy_groups
from retrieval.query.levels import GroupStats

RANKS = ("relevance", "engagement", "recent", "blend")
DEFAULT_COLLAPSE = 0.95
"""Cosine at or above which two hits are near-copies: on the real tweets, pairs above it are one
tweet with a word changed, pairs just below are templates carrying different facts
(docs/benchmarks.md, "Steering search")."""
CANDIDATES = 50
"""Candidates re-ranked or collapsed per query (at least 4 x k): deep enough that a page of k
survives folding, shallow enough that every candidate is still on topic."""
ENGAGEMENT_WEIGHT = 0.2
"""blend: the engagement factor is 1 + 0.2 tanh(log relative likes), so within [0.8, 1.2]: a
tweet that did far better than its account's usual gains at most a fifth of its similarity."""


@dataclass(frozen=True)
class Ranking:
    """How to order and fold a result page; the default is plain similarity, nothing folded."""

    order: str = "relevance"
    collapse: float | None = None
    """Fold hits whose text vectors are at or above this cosine; None keeps every hit."""
    half_life_days: float | None = None
    """blend only: a tweet this many days older than the newest in the index counts half."""

    def __post_init__(self) -> None:
        if self.order not in RANKS:
            raise RetrievalError(f"unknown rank {self.order!r}; use one of {', '.join(RANKS)}")
        if self.collapse is not None and not 0 < self.collapse <= 1:
            raise RetrievalError(f"the collapse threshold is a cosine in (0, 1], got {self.collapse}")
        if self.half_life_days is not None and (self.order != "blend" or self.half_life_days <= 0):
            raise RetrievalError("a half-life is a positive number of days, and goes with rank blend")

    @property
    def plain(self) -> bool:
        return self.order == "relevance" and self.collapse is None

    def depth(self, k: int) -> int:
        """Candidates to fetch for a page of k."""
        return k if self.plain else max(CANDIDATES, 4 * k)


@dataclass(frozen=True)
class Candidate:
    """One tweet found by a search, before folding and ordering."""

    vec_id: int
    score: float
    tweet: dict[str, Any]
    found_by: dict[str, int] = field(default_factory=dict)
    vector_of: int | None = None
    """A near-copy left out of the vector set (`index build --dedup`): the vec_id whose vector, and
    score, stand for it."""


@dataclass(frozen=True)
class Ranked:
    """A candidate as shown: its near-copies and the factors that placed it."""

    candidate: Candidate
    near_copies: tuple[Candidate, ...]
    factors: dict[str, float]


class Levels:
    """Each account's usual likes (the likes predictor's account prior, over the whole index), so
    a hit's likes can be read relative to it: 300 on an account that usually gets 30 is x10."""

    def __init__(self, stats: GroupStats) -> None:
        self.stats = stats

    def typical(self, tweet: dict[str, Any]) -> float:
        """The likes an account usually gets (exp of its shrunk mean log1p, minus one)."""
        return math.expm1(self.stats.prior(tweet.get("username"), tweet.get("company"), self.stats.mean).value)

    def relative(self, tweet: dict[str, Any]) -> float | None:
        """(1 + likes) / (1 + typical likes); None without likes."""
        if tweet.get("likes") is None:
            return None
        return (1 + tweet["likes"]) / (1 + self.typical(tweet))


def rank(
    candidates: Sequence[Candidate],
    k: int,
    ranking: Ranking,
    *,
    vectors: Callable[[Sequence[Candidate]], np.ndarray],
    levels: Callable[[], Levels],
    newest: Callable[[], dt.datetime | None],
) -> list[Ranked]:
    """The page of k: candidates (best first by similarity) folded by `ranking.collapse` and
    ordered by `ranking.order`. `vectors`, `levels` and `newest` are only called when needed."""
    if ranking.plain:
        return [Ranked(c, (), {}) for c in candidates[:k]]
    needs_levels = ranking.collapse is not None or ranking.order in ("engagement", "blend")
    lv = levels() if needs_levels else None
    if ranking.order == "engagement" and lv is not None and lv.stats.count == 0:
        raise RetrievalError("the index holds no likes: rank by engagement needs them")
    groups = _groups(candidates, ranking.collapse, vectors, lv)
    factors = [_factors(shown, ranking, lv, newest) for shown, _ in groups]
    order = sorted(range(len(groups)), key=lambda i: _sort_key(ranking.order, groups[i][0], factors[i], i))
    return [Ranked(groups[i][0], groups[i][1], factors[i]) for i in order[:k]]


def _groups(
    candidates: Sequence[Candidate],
    threshold: float | None,
    vectors: Callable[[Sequence[Candidate]], np.ndarray],
    levels: Levels | None,
) -> list[tuple[Candidate, tuple[Candidate, ...]]]:
    """(shown, near-copies) per group, by the group's best similarity rank; the shown one is the
    member with the highest relative likes (the best-ranked when none has likes)."""
    if threshold is None or len(candidates) < 2:
        return [(c, ()) for c in candidates]
    labels = near_copy_groups(vectors(candidates), threshold)
    members: dict[int, list[Candidate]] = {}
    for label, c in zip(labels, candidates):
        members.setdefault(int(label), []).append(c)
    out = []
    for group in members.values():
        scored = [(levels.relative(c.tweet) if levels else None, -i, c) for i, c in enumerate(group)]
        best = max(scored, key=lambda s: (s[0] is not None, s[0] or 0.0, s[1]))[2]
        out.append((best, tuple(c for c in group if c is not best)))
    return out


def _factors(
    c: Candidate, ranking: Ranking, levels: Levels | None, newest: Callable[[], dt.datetime | None]
) -> dict[str, float]:
    if ranking.order in ("relevance", "recent"):
        return {}
    relative = levels.relative(c.tweet) if levels else None
    out = {} if relative is None else {"relative_likes": relative, "typical_likes": levels.typical(c.tweet)}
    if ranking.order == "engagement":
        return out
    engagement = 1.0 if relative is None else 1 + ENGAGEMENT_WEIGHT * math.tanh(math.log(relative))
    decay = 1.0
    if ranking.half_life_days is not None and c.tweet.get("date") is not None:
        last = newest() or c.tweet["date"]
        age_days = max((last - c.tweet["date"]).total_seconds() / 86_400, 0.0)
        decay = 0.5 ** (age_days / ranking.half_life_days)
        out["age_days"] = round(age_days, 1)
    return out | {"engagement": engagement, "decay": decay, "blended": c.score * engagement * decay}


def _sort_key(order: str, c: Candidate, factors: dict[str, float], position: int) -> tuple:
    """Ascending keys; ties (and hits without likes or a date, which go last) keep similarity order."""
    if order == "engagement":
        relative = factors.get("relative_likes")
        return (relative is None, -(relative or 0.0), position)
    if order == "recent":
        when = c.tweet.get("date")
        return (when is None, -when.timestamp() if when else 0.0, position)
    if order == "blend":
        return (-factors["blended"], position)
    return (position,)


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: each pick maximises (1 - d) relevance - d (similarity to the
    closest item already picked), so k picks are not k rewordings of one tweet. `vectors` are
    unit rows; returns up to k indices, in the order picked."""
    picked: list[int] = []
    closest = np.full(len(relevance), -np.inf)
    left = np.ones(len(relevance), bool)
    for _ in range(min(k, len(relevance))):
        gain = (1 - diversity) * relevance - diversity * np.where(np.isfinite(closest), closest, 0.0)
        i = int(np.argmax(np.where(left, gain, -np.inf)))
        picked.append(i)
        left[i] = False
        closest = np.maximum(closest, np.einsum("id,d->i", vectors, vectors[i]))
    return picked
