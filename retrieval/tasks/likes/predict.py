"""Likes prediction: the account's own history, corrected by a weighted kNN over similar past tweets.

Public work on this data found that the account matters more than the words, so the
estimate starts from the account and lets the text move it. On y = log1p(likes):

    company prior  m_c = (S_c + lc * b) / (n_c + lc)        b: global mean, pulled towards
    account prior  m_a = (S_a + la * m_c) / (n_a + la)         the raw level of the neighbours
    weights        w_j = softmax(cos_j / T + log(boost) * [account_j == account])
    residuals      r_j = y_j - m_{a_j, -j}                     (neighbour's own prior, itself left out)
    estimate       y^ = m_a + blend * sum_j w_j r_j
    80% interval   y^ + scale * (Q_w(r, 0.1) - sum_j w_j r_j,  Q_w(r, 0.9) - sum_j w_j r_j)
                   widened, for an account with no tweets, by z_0.9 * (std of its company's account
                   means) in quadrature: the level it borrows is uncertain too

S and n are sums of y and counts over every tweet with likes the history may see,
metadata-only rows (likes without text) included, so those feed the priors without
being neighbours. A residual is measured against the neighbour's own account, so CNN's
thousands of likes say "this kind of text does well for its account", not "expect
thousands". A new account falls back to its company, then to the level of tweets like
it. Time: a dated query sees only tweets dated strictly before it (undated tweets are
left out, since nothing proves they came earlier); an undated query sees every tweet.

A `History` gives the neighbours and the sums: `IndexHistory` here (FAISS + DuckDB), and
`ArrayHistory` (numpy, for cross-validation), both in `history.py`; `combine` does the rest for both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.query.levels import ACCOUNT_SHRINK, COMPANY_SHRINK, GroupStats, Prior, account_key
from retrieval.schema import account

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictConfig:
    """Predictor settings; the defaults were tuned by 5-fold CV on adobe_labelled (docs/likes.md)."""

    k: int = 100
    """Content neighbours from all accounts."""
    k_account: int = 50
    """Extra neighbours from the query's own account (the account matters more than the words)."""
    temperature: float = 0.5
    """Softmax temperature over cosine similarities; CV found no gain below 0.5 (docs/likes.md)."""
    account_boost: float = 10.0
    """Weight multiplier for neighbours from the query's own account."""
    blend: float = 0.75
    """Share of the neighbours' mean residual added to the account prior."""
    account_shrink: float = ACCOUNT_SHRINK
    """Pseudo-count pulling an account's mean towards its company's."""
    company_shrink: float = COMPANY_SHRINK
    """Pseudo-count pulling a company's mean towards the base level."""
    content_level: float = 1.0
    """How far the base level moves from the global mean towards the neighbours' raw mean."""
    interval_scale: float = 1.05
    """Residual-scale factor of the interval, tuned so 80% intervals cover about 80%."""
    level: float = 0.8
    """Nominal coverage of the interval."""
    image_weight: float = 0.5
    """Share of the neighbour weight given to image neighbours when the tweet has an image (CLIP
    space); the rest goes to text neighbours. Not tuned: no CLIP weights or images were available
    offline to tune it on (docs/images.md)."""

    @property
    def shrink(self) -> tuple[float, float]:
        """The account and company pseudo-counts, as the account level takes them."""
        return self.account_shrink, self.company_shrink

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, str]) -> PredictConfig:
        """The defaults with NAME -> VALUE text overrides (from a command line or a query string),
        each cast to the type of its field's default."""
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for raw_name, value in overrides.items():
            name = raw_name.strip().replace("-", "_")
            if name not in known:
                raise RetrievalError(f"{raw_name!r}: not a predictor setting; one of {', '.join(sorted(known))}")
            try:
                changes[name] = type(getattr(defaults, name))(value)
            except ValueError:
                raise RetrievalError(f"{raw_name}={value!r}: not a number") from None
        return dataclasses.replace(defaults, **changes)

    def __post_init__(self) -> None:
        if self.k < 1 or self.k_account < 0:
            raise RetrievalError(f"k must be >= 1 and k_account >= 0, got {self.k} and {self.k_account}")
        if self.temperature <= 0 or self.account_boost <= 0 or self.interval_scale <= 0:
            raise RetrievalError("temperature, account_boost and interval_scale must be positive")
        if not 0 < self.level < 1:
            raise RetrievalError(f"level must be in (0, 1), got {self.level}")
        if not 0 <= self.image_weight <= 1:
            raise RetrievalError(f"image_weight must be in [0, 1], got {self.image_weight}")


@dataclass(frozen=True)
class Query:
    """What is known about the tweet besides its text."""

    username: str | None
    company: str | None = None
    date: dt.datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "username", account(self.username))


@dataclass(frozen=True)
class Found:
    """Neighbours of one query: ids, cosines, log1p(likes), accounts; rows when the history has them."""

    ids: np.ndarray
    scores: np.ndarray
    values: np.ndarray
    usernames: list[str | None]
    companies: list[str | None]
    rows: list[dict[str, Any]] | None = None
    spaces: list[str] | None = None
    """text or image per neighbour; None when all are text neighbours."""


def neighbour_weights(found: Found, same: np.ndarray, config: PredictConfig) -> np.ndarray:
    """Softmax of similarity (own-account neighbours boosted), taken within each space.

    Cosines of MPNet and CLIP are on different scales, so text and image neighbours are never
    in one softmax: each space's weights sum to its share (image_weight for images).
    """
    logits = found.scores / config.temperature + np.where(same, math.log(config.account_boost), 0.0)
    spaces = np.array(found.spaces or ["text"] * len(found.ids))
    present = sorted(set(spaces.tolist()))
    weights = np.zeros(len(found.ids))
    for space in present:
        part = spaces == space
        w = np.exp(logits[part] - logits[part].max())
        share = 1.0 if len(present) == 1 else config.image_weight if space == "image" else 1 - config.image_weight
        weights[part] = share * w / w.sum()
    return weights / weights.sum()


@dataclass(frozen=True)
class Neighbour:
    """One tweet that drove a prediction: its weight (all weights sum to 1) and what it implies."""

    vec_id: int
    score: float
    weight: float
    likes: int
    residual: float
    same_account: bool
    tweet: dict[str, Any] = field(default_factory=dict)
    space: str = "text"

    def to_json(self) -> dict[str, Any]:
        date = self.tweet.get("date")
        return {
            "vec_id": self.vec_id,
            "weight": round(self.weight, 4),
            "score": round(self.score, 4),
            "likes": self.likes,
            "residual_log1p": round(self.residual, 4),
            "same_account": self.same_account,
            "space": self.space,
            "date": date.isoformat() if date else None,
            "username": self.tweet.get("username"),
            "content": self.tweet.get("content"),
        }


@dataclass(frozen=True)
class LikesPrediction:
    """Point estimate and interval on log1p(likes), the prior behind them and the neighbours."""

    log_likes: float
    log_low: float
    log_high: float
    prior: Prior
    adjustment: float
    neighbours: list[Neighbour]

    @property
    def likes(self) -> float:
        return math.expm1(self.log_likes)

    @property
    def low(self) -> float:
        return math.expm1(self.log_low)

    @property
    def high(self) -> float:
        return math.expm1(self.log_high)

    def to_json(self) -> dict[str, Any]:
        return {
            "likes": round(self.likes, 1),
            "interval_80": [round(self.low, 1), round(self.high, 1)],
            "log1p_likes": round(self.log_likes, 4),
            "log1p_interval": [round(self.log_low, 4), round(self.log_high, 4)],
            "prior": {
                "log1p_likes": round(self.prior.value, 4),
                "source": self.prior.source,
                "account_tweets": self.prior.account_tweets,
                "company": self.prior.company,
                "company_tweets": self.prior.company_tweets,
            },
            "adjustment_log1p": round(self.adjustment, 4),
            "neighbours": [n.to_json() for n in self.neighbours],
        }


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Quantiles of a weighted sample, interpolated between weight midpoints (smooth in q)."""
    if values.shape != weights.shape or not (weights > 0).any():
        raise ValueError("weighted_quantile needs one weight per value, some of them positive")
    order = np.argsort(values, kind="stable")
    order = order[weights[order] > 0]
    v, w = values[order], weights[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.asarray(q, dtype=float), cdf, v)


def combine(found: Found, stats: GroupStats, query: Query, config: PredictConfig) -> LikesPrediction:
    """The estimate, interval and explanation from one query's neighbours and visible sums.

    Both histories end here, so cross-validation measures exactly what `predict` answers.
    """
    user = account_key(query.username)
    same = np.array([account_key(u) == user and user is not None for u in found.usernames], dtype=bool)
    tail = (1 - config.level) / 2
    if len(found.ids):
        weights = neighbour_weights(found, same, config)
        own = [
            stats.prior(u, c, stats.mean, config.shrink, leave_out=float(y)).value
            for u, c, y in zip(found.usernames, found.companies, found.values)
        ]
        residuals = found.values - np.array(own)
        shift = float(weights @ residuals)
        base = stats.mean + config.content_level * (float(weights @ found.values) - stats.mean)
    else:
        weights = residuals = np.zeros(0)
        shift, base = 0.0, stats.mean
    prior = stats.prior(query.username, query.company, base, config.shrink)
    point = prior.value + config.blend * shift
    if len(found.ids) >= 2:
        low, high = (weighted_quantile(residuals, weights, [tail, 1 - tail]) - shift) * config.interval_scale
    else:  # too few neighbours for quantiles: a normal interval with the visible spread
        z = NormalDist().inv_cdf(1 - tail) * stats.std * config.interval_scale
        low, high = -z, z
    if prior.source != "account":  # a new account: where its level falls among its company's is unknown too
        spread = NormalDist().inv_cdf(1 - tail) * stats.account_spread(prior.company)
        low, high = -math.hypot(min(float(low), 0.0), spread), math.hypot(max(float(high), 0.0), spread)
    rows = found.rows or [{} for _ in found.ids]
    spaces = found.spaces or ["text"] * len(found.ids)
    neighbours = [
        Neighbour(int(i), float(s), float(w), int(round(math.expm1(y))), float(r), bool(o), row, space)
        for i, s, w, y, r, o, row, space in zip(
            found.ids, found.scores, weights, found.values, residuals, same, rows, spaces
        )
    ]
    neighbours.sort(key=lambda n: -n.weight)
    return LikesPrediction(
        log_likes=max(point, 0.0),
        log_low=max(point + min(float(low), 0.0), 0.0),
        log_high=max(point + max(float(high), 0.0), 0.0),
        prior=prior,
        adjustment=config.blend * shift,
        neighbours=neighbours,
    )


class History(Protocol):
    """Where past tweets come from: their neighbours by text, and sums by account and company."""

    def check(self, query: Query) -> None: ...

    def neighbours(
        self, vector: np.ndarray, query: Query, config: PredictConfig, image: np.ndarray | None = None
    ) -> Found: ...

    def stats(self, cutoff: dt.datetime | None) -> GroupStats: ...


def predict_likes(
    history: History,
    vectors: np.ndarray,
    queries: Sequence[Query],
    config: PredictConfig | None = None,
    *,
    images: Sequence[np.ndarray | None] | None = None,
) -> list[LikesPrediction]:
    """One prediction per (vector, query) pair: vectors are L2-normalised text embeddings; `images`,
    when given, holds each tweet's CLIP image vector (or None), whose neighbours join the text ones."""
    config = config or PredictConfig()
    if len(vectors) != len(queries) or (images is not None and len(images) != len(queries)):
        raise RetrievalError(f"{len(vectors)} vectors for {len(queries)} queries")
    out = []
    for n, (vector, query) in enumerate(zip(np.asarray(vectors, dtype=np.float32), queries)):
        history.check(query)
        found = history.neighbours(vector, query, config, images[n] if images is not None else None)
        out.append(combine(found, history.stats(query.date), query, config))
    return out
