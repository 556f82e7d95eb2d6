"""What to show a person, and whom to show a post: profiles matched against the index's tweets.

A profile is several vectors (one per liked tweet or written text), searched as several queries
and fused by each candidate's best match, so a person who likes two different things gets both
rather than the blur of their mean. Candidates are then weighed by how well they did for their
account (the engagement factor of `--rank blend`) and picked by maximal marginal relevance, so
the page is varied; near-copies of each other or of what the person liked are left out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.index.faiss_ops import near_copy_groups
from retrieval.index.filters import Filters
from retrieval.index.profiles import Profile, ProfileStore
from retrieval.query.ranking import DEFAULT_COLLAPSE, ENGAGEMENT_WEIGHT, Candidate, mmr
from retrieval.query.search import Searcher
from retrieval.tasks.recommend.interests import interests, matching

if TYPE_CHECKING:
    import PIL.Image

IMAGE_LABELS = 5
"""Zero-shot labels kept per profile image."""
DEPTH = 50
"""Candidates fetched per profile vector."""
MAX_QUERIES = 50
"""Profile vectors searched: the most recent liked tweets and texts beyond this add little."""


@dataclass(frozen=True)
class ProfileVectors:
    vectors: np.ndarray
    labels: list[str]
    """What each vector is: "liked #ID" or "text 'first words'"."""
    vec_ids: frozenset[int]
    """The liked tweets' rows, never recommended back."""


@dataclass(frozen=True)
class Recommendation:
    rank: int
    relevance: float
    """Cosine of the tweet with the profile vector it matches best."""
    engagement: float
    """1 + 0.2 tanh(log relative likes); 1 without likes."""
    tweet: dict[str, Any]
    because: str
    """The liked tweet or text it matches best."""
    interests: list[str]

    def to_json(self) -> dict[str, Any]:
        t = self.tweet
        return {
            "rank": self.rank,
            "relevance": round(self.relevance, 4),
            "engagement": round(self.engagement, 4),
            "id": t.get("tweet_id"),
            "date": t["date"].isoformat() if t.get("date") else None,
            "username": t.get("username"),
            "likes": t.get("likes"),
            "content": t.get("content"),
            "because": self.because,
            "interests": self.interests,
        }


def profile_vectors(searcher: Searcher, profile: Profile) -> ProfileVectors:
    """The vectors of a profile's liked tweets (read back from the index) and texts (embedded)."""
    if not profile.liked and not profile.texts and not profile.images:
        raise RetrievalError(f"profile {profile.name!r} is empty: add liked tweets (--liked), texts or images")
    rows = []
    for tweet_id in profile.liked[-MAX_QUERIES:]:
        row = searcher.reader.find_tweet(tweet_id)
        if row is None:
            raise RetrievalError(f"profile {profile.name!r}: tweet id {tweet_id} is not in {searcher.reader.path}")
        if row["content"]:
            rows.append(row)
    texts = list(profile.texts[-MAX_QUERIES:])
    pictures = [(source, image_text(labels)) for source, labels in profile.images[-MAX_QUERIES:]]
    parts, labels = [], []
    if rows:
        parts.append(searcher.text_vectors([Candidate(r["vec_id"], 0.0, r) for r in rows]))
        labels += [f"liked #{r['tweet_id']}" for r in rows]
    if texts or pictures:
        parts.append(searcher.embedder.encode([*texts, *(words for _, words in pictures)]))
        labels += [f"text {' '.join(t.split()[:5])!r}" for t in texts]
        labels += [f"image {Path(source).name} ({words})" for source, words in pictures]
    if not parts:
        raise RetrievalError(f"profile {profile.name!r}: its liked tweets have no text to match")
    return ProfileVectors(np.vstack(parts).astype(np.float32), labels, frozenset(r["vec_id"] for r in rows))


def recommend(
    searcher: Searcher,
    profile: Profile,
    k: int = 10,
    *,
    filters: Filters | None = None,
    diversity: float = 0.3,
    exclude: frozenset[int] = frozenset(),
) -> list[Recommendation]:
    """Up to k tweets the person has not liked, best first: max-similarity fusion over the
    profile's vectors, x engagement, then MMR with weight `diversity` on novelty (0: none)."""
    if not 0 <= diversity <= 1:
        raise RetrievalError(f"diversity is a weight in [0, 1], got {diversity}")
    pv = profile_vectors(searcher, profile)
    skip = pv.vec_ids | exclude
    found = searcher.reader.search(pv.vectors, DEPTH, filters=filters, exclude=set(skip))
    best: dict[int, tuple[float, int]] = {}
    for query, hits in enumerate(found):
        for vec_id, score in hits:
            if vec_id not in best or score > best[vec_id][0]:
                best[vec_id] = (score, query)
    if not best:
        return []
    ids = sorted(best, key=lambda i: -best[i][0])
    rows = {r["vec_id"]: r for r in searcher.reader.rows(sorted(ids))}
    candidates = [Candidate(i, best[i][0], rows[i]) for i in ids if i in rows]
    vectors = searcher.text_vectors(candidates)
    fresh = _not_copies(vectors, pv.vectors)
    candidates, vectors = [c for c, keep in zip(candidates, fresh) if keep], vectors[fresh]
    levels = searcher.levels()
    boost = [_engagement(levels.relative(c.tweet)) for c in candidates]
    chosen = mmr(np.array([c.score * b for c, b in zip(candidates, boost)]), vectors, k, diversity)
    return [
        Recommendation(
            position,
            candidates[i].score,
            boost[i],
            candidates[i].tweet,
            pv.labels[best[candidates[i].vec_id][1]],
            matching(profile.interests, candidates[i].tweet.get("content")),
        )
        for position, i in enumerate(chosen, 1)
    ]


def _not_copies(vectors: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Which candidates (best first) to keep: not a near-copy of what the person already liked or
    wrote, and not a near-copy of a better candidate (the collapse threshold of `similar`)."""
    if len(vectors) == 0:
        return np.zeros(0, bool)
    liked = np.einsum("id,jd->ij", vectors, profile).max(axis=1) >= DEFAULT_COLLAPSE
    labels = near_copy_groups(vectors, DEFAULT_COLLAPSE)
    first = np.zeros(len(vectors), bool)
    first[np.unique(labels, return_index=True)[1]] = True
    return first & ~liked


def _engagement(relative: float | None) -> float:
    return 1.0 if relative is None else 1 + ENGAGEMENT_WEIGHT * math.tanh(math.log(relative))


@dataclass(frozen=True)
class Fit:
    """How well a post fits one profile: its best cosine with the profile's vectors."""

    profile: str
    score: float
    closest: str
    interests: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "score": round(self.score, 4),
            "closest": self.closest,
            "interests": self.interests,
        }


def audience(searcher: Searcher, profiles: Sequence[Profile], text: str, k: int = 10) -> list[Fit]:
    """The profiles a post fits best (empty profiles are skipped), with the interests it touches."""
    if not text or not text.strip():
        raise RetrievalError("the post text is empty")
    if not profiles:
        raise RetrievalError(f"{searcher.reader.path}: no profiles yet; add one with `profile add`")
    query = searcher.embedder.encode([text.strip()])[0]
    fits = []
    for profile in profiles:
        if not profile.liked and not profile.texts and not profile.images:
            continue
        pv = profile_vectors(searcher, profile)
        sims = pv.vectors @ query
        best = int(np.argmax(sims))
        fits.append(Fit(profile.name, float(sims[best]), pv.labels[best], matching(profile.interests, text)))
    return sorted(fits, key=lambda f: -f.score)[:k]


def add_to_profile(
    searcher: Searcher,
    store: ProfileStore,
    name: str,
    liked: Sequence[int] = (),
    texts: Sequence[str] = (),
    images: Sequence[tuple[str, PIL.Image.Image]] = (),
) -> Profile:
    """Create or extend a profile: its liked ids must be in the index; images (source, picture) are
    described by the searcher's CLIP model. Its interests are found again from every liked text,
    written text and image; the file is written whole, atomically."""
    if not name or not name.strip():
        raise RetrievalError("a profile needs a name")
    texts = [t.strip() for t in texts if t and t.strip()]
    if not liked and not texts and not images:
        raise RetrievalError(f"profile {name!r}: nothing to add; give --liked IDS, --text TEXT or --image PATH")
    missing = sorted(set(liked) - searcher.reader.known_tweet_ids(list(liked)))
    if missing:
        raise RetrievalError(f"{searcher.reader.path}: no tweet with id {missing[0]} (of {len(missing)} unknown ids)")
    described = []
    if images:
        from retrieval.embed.describe import MediaDescriber

        if searcher.clip is None:
            raise RetrievalError("describing images needs a CLIP model", hint="clip_checkpoint")
        ranked = MediaDescriber(searcher.clip).top_labels([picture for _, picture in images], IMAGE_LABELS)
        described = [(source, tuple(labels)) for (source, _), labels in zip(images, ranked)]
    profile = (store.find(name) or Profile(name.strip())).extended(list(liked), texts, described)
    liked_texts = [row["content"] for row in map(searcher.reader.find_tweet, profile.liked) if row and row["content"]]
    profile = replace(profile, interests=interests([*liked_texts, *profile.texts]) + _image_interests(profile))
    store.put(profile)
    return profile


def _image_interests(profile: Profile) -> tuple[tuple[str, float], ...]:
    """The images' labels, each once, weighted by its best probability relative to the best label's."""
    best: dict[str, float] = {}
    for _, labels in profile.images:
        for label, weight in labels:
            best[label] = max(best.get(label, 0.0), weight)
    top = max(best.values(), default=1.0) or 1.0
    return tuple((label, round(w / top, 4)) for label, w in sorted(best.items(), key=lambda item: -item[1]))


def image_text(labels: Sequence[tuple[str, float]]) -> str:
    """An image as the text model reads it: the describer's words ("photo of a burger, a tray")."""
    return "photo of " + ", ".join(label for label, _ in labels)
