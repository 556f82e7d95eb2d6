"""The JSON contract of /v1/: request and response bodies, built from the library's own results."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Space = Literal["text", "image"]
INT64 = 2**63 - 1
"""Ids, counts and seeds are 64-bit in the index: larger numbers are refused as invalid."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersIn(Strict):
    username: str | None = None
    company: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = Field(None, description="Inclusive; a date without a time means the whole day.")
    min_likes: int | None = Field(None, ge=0, le=INT64)


class SimilarIn(Strict):
    index: str = Field(description="An index's name: its folder's name (indexes/adobe -> adobe).")
    text: str | None = Field(None, max_length=10_000)
    id: int | None = Field(None, ge=-INT64, le=INT64, description="A stored tweet's id: its neighbours, not itself.")
    image: str | None = Field(None, description="An image as base64 (a data: URL prefix is accepted).")
    space: Space = "text"
    mode: Literal["vector", "keyword", "hybrid"] = Field(
        "vector", description="vector: by meaning; keyword: BM25 over the words; hybrid: both, fused by rank."
    )
    k: int = Field(10, ge=1, le=100)
    filters: FiltersIn = FiltersIn()
    min_score: float | None = Field(
        None, ge=-1, le=1, description="Text queries, mode vector: only hits at or above this cosine (up to k)."
    )
    collapse: float | None = Field(
        0.95, gt=0, le=1, description="Fold hits within this cosine of each other into one; null shows every copy."
    )
    rank: Literal["relevance", "engagement", "recent", "blend"] = Field(
        "relevance",
        description="relevance: similarity; engagement: likes relative to the account's usual; recent: newest "
        "first; blend: similarity x engagement factor (x half-life decay).",
    )
    half_life_days: float | None = Field(None, gt=0, description="rank blend: age at which a tweet counts half.")
    explain: bool = Field(False, description="Say which search path ran and why.")


class Medium(BaseModel):
    kind: str
    url: str | None = None
    thumbnail: str | None = None


class Tweet(BaseModel):
    id: int | None = Field(description="The tweet's id in its source file.")
    vec_id: int = Field(description="Its row in the index.")
    date: dt.datetime | None
    username: str | None
    company: str | None
    likes: int | None
    content: str | None
    media: list[Medium]

    @classmethod
    def of(cls, row: dict[str, Any]) -> Tweet:
        from retrieval.schema import stored_media

        fields = {k: row.get(k) for k in ("vec_id", "date", "username", "company", "likes", "content")}
        return cls(id=row.get("tweet_id"), media=stored_media(row.get("media")), **fields)


class HitOut(Tweet):
    rank: int
    score: float
    found_by: dict[str, int] = Field(default_factory=dict, description="Keyword and hybrid: each side's rank.")
    near_copies: list[int] = Field(default_factory=list, description="Ids of the near-copies folded into this hit.")
    factors: dict[str, float] = Field(
        default_factory=dict, description="rank engagement/blend: relative_likes, typical_likes, engagement, decay."
    )


class PlanOut(BaseModel):
    space: str
    path: Literal["exact", "exact_rows", "ivf"]
    admitted: int
    total: int
    nprobe: int
    reason: str


class SimilarOut(BaseModel):
    index: str
    version: int = Field(description="The index version that answered (it goes up with every `index add`).")
    hits: list[HitOut]
    explain: PlanOut | None = None


class PredictIn(Strict):
    index: str
    text: str = Field(min_length=1, max_length=10_000)
    username: str = Field(min_length=1)
    company: str | None = None
    date: dt.datetime | None = Field(None, description="When it will be posted: only earlier tweets are used.")
    image: str | None = Field(None, description="The tweet's image as base64.")


class NeighbourOut(BaseModel):
    vec_id: int
    weight: float
    score: float
    likes: int
    residual_log1p: float
    same_account: bool
    space: str
    date: dt.datetime | None
    username: str | None
    content: str | None


class PriorOut(BaseModel):
    log1p_likes: float
    source: Literal["account", "company", "base"]
    account_tweets: int
    company: str | None
    company_tweets: int


class PredictOut(BaseModel):
    index: str
    likes: float
    interval_80: tuple[float, float]
    log1p_likes: float
    log1p_interval: tuple[float, float]
    prior: PriorOut
    adjustment_log1p: float
    neighbours: list[NeighbourOut]


class GenerateIn(Strict):
    index: str
    username: str = Field(min_length=1)
    company: str | None = None
    date: dt.datetime | None = None
    media: str = Field("", max_length=500, description="What the picture or video shows, in words.")
    topic: str | None = Field(None, max_length=500)
    likes: int | None = Field(None, ge=0, le=INT64)
    candidates: int = Field(4, ge=1, le=8, description="Drafts to write and rank; the first is the best.")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    diversity: float = Field(0.0, ge=0, le=1, description="Exemplars unlike each other (MMR): more original drafts.")
    temperature: float = Field(0.5, ge=0, le=2)
    max_tokens: int = Field(96, ge=16, le=256)
    min_tokens: int = Field(32, ge=0, le=256, description="Tokens before a draft may end (base models end early).")
    exemplars: int = Field(5, ge=0, le=20)
    grammar: bool = Field(False, description="Sample one paragraph with at most 3 emoji in a row (slower).")
    original: bool = Field(False, description="Generate a near-copy of a past tweet (cosine >= 0.95) again.")
    rank: Literal["consensus", "voice", "likes"] = Field(
        "consensus",
        description="Order candidates by consensus (what drafts and exemplars share), brand voice or predicted likes.",
    )
    stream: bool = Field(False, description="Stream tokens as server-sent events, then the result.")


class ProfileIn(Strict):
    index: str
    name: str = Field(min_length=1, max_length=200)
    liked: list[int] = Field(default_factory=list, max_length=10_000, description="Tweet ids (the input file's id).")
    texts: list[str] = Field(default_factory=list, max_length=100)


class Interest(BaseModel):
    phrase: str
    weight: float


class ProfileOut(BaseModel):
    name: str
    liked: list[int]
    texts: list[str]
    interests: list[Interest]
    created_at: str
    updated_at: str


class RecommendIn(Strict):
    index: str
    name: str = Field(description="A profile of this index.")
    k: int = Field(10, ge=1, le=100)
    filters: FiltersIn = FiltersIn()
    diversity: float = Field(0.3, ge=0, le=1, description="Weight of variety in maximal marginal relevance.")


class RecommendationOut(BaseModel):
    rank: int
    relevance: float
    engagement: float
    id: int | None
    date: str | None
    username: str | None
    likes: int | None
    content: str | None
    because: str = Field(description="The liked tweet or text it matches best.")
    interests: list[str]


class RecommendOut(BaseModel):
    index: str
    profile: str
    recommendations: list[RecommendationOut]


class AudienceIn(Strict):
    index: str
    text: str | None = Field(None, max_length=10_000)
    id: int | None = Field(None, ge=-INT64, le=INT64)
    k: int = Field(10, ge=1, le=100)


class FitOut(BaseModel):
    profile: str
    score: float
    closest: str
    interests: list[str]


class AudienceOut(BaseModel):
    index: str
    fits: list[FitOut]


class IndexOut(BaseModel):
    name: str
    version: int
    rows: int
    vectors: int
    spaces: list[str]
    text_model: str | None
    factory: str | None
    nprobe: int
    recall_at_10: float | None
    built_at: str | None
    updated_at: str | None
    table: dict[str, Any]


class ErrorOut(BaseModel):
    error: str
    detail: Any = None
