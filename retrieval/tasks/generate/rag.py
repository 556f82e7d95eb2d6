"""Offline tweet generation: retrieve the brand's own well-liked tweets, prompt a local GGUF model.

The pieces that decide what the model sees are pure functions, tested without a model:
`rerank` (similarity plus a likes bonus), `build_messages` (the chat prompt), `fit_messages`
(drop exemplars, least relevant first, until the prompt fits the context) and, in its own
module, `postprocess` (one tweet, at most 280 characters, the dataset's placeholders).
`Generator` wraps llama_cpp.Llama; `generate` ties retrieval, generation and ranking together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.index.filters import Filters
from retrieval.query.levels import account_key
from retrieval.schema import account, stored_media
from retrieval.tasks.generate.llm import Generator, Messages
from retrieval.tasks.generate.originality import Nearest, account_centroid, brand_voice, nearest_past
from retrieval.tasks.generate.postprocess import HYPERLINK, MAX_CHARS, MENTION, postprocess

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.query.search import Hit, Searcher

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = 4
"""Drafts `generate` writes and ranks: on the tuning rows 200-299 (never scored), best of 4 by
consensus scored BLEU-1 0.279 / ROUGE-L 0.165 against 0.271 / 0.160 for 3 and 0.277 / 0.166 for 5,
at 2.4 s a tweet against 2.1 and 3.2 (docs/generation.md). The CLI and the API repeat it."""

ORIGINAL_TRIES = 3
"""Drafts made for one candidate with `original` before a near-copy is kept, flagged."""

__all__ = ["Brief", "Candidate", "Exemplar", "GenerateConfig", "Generator", "generate", "postprocess"]


@dataclass(frozen=True)
class Brief:
    """What the user knows before the tweet exists."""

    username: str
    company: str | None = None
    date: dt.datetime | None = None
    media: str = ""
    likes: int | None = None
    topic: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "username", account(self.username) or self.username)

    def query_text(self) -> str:
        """The text embedded to find exemplars: what the tweet is about, then whose it is."""
        parts = [self.media.strip(), (self.topic or "").strip(), (self.company or "").strip()]
        return ". ".join(p for p in parts if p) or f"a tweet by {self.username}"


@dataclass(frozen=True)
class GenerateConfig:
    """Generation settings: exemplars in the prompt, sampling, context limits."""

    exemplars: int = 5
    """Past tweets in the prompt (fewer when they do not fit the context)."""
    pool: int = 30
    """Neighbours retrieved per level before re-ranking by likes."""
    likes_weight: float = 0.05
    """Similarity bonus per standard deviation of log1p(likes) above the pool's mean."""
    diversity: float = 0.0
    """Maximal marginal relevance: the weight, against relevance, of an exemplar's cosine to the
    ones already chosen (0: relevance and likes only). 0.3 on rows 200-299: novelty 0.41 and no
    near-copy, against 0.32 and 3%, but BLEU-1 0.262 / ROUGE-L 0.160 against 0.279 / 0.165; so
    it is for a user who wants drafts further from the past, off by default."""
    max_tokens: int = 96
    temperature: float = 0.5
    top_p: float = 0.9
    repeat_penalty: float = 1.1
    """Small models loop (emoji runs) without it; 1.3 also held back the end-of-turn token (the
    template's own, among the last 64 tokens), so replies rambled: BLEU-1 0.21 against 0.24."""
    stop: tuple[str, ...] = ("\n\n",)
    """Exemplars are one paragraph each, so a blank line starts text post-processing drops."""
    max_chars: int = MAX_CHARS + 20
    """Generation stops once the reply is this long: post-processing cuts it to 280 characters at
    a word boundary, and the margin keeps the word that the stop interrupts out of the tweet."""
    grammar: bool = False
    """Sample under TWEET_GRAMMAR (one paragraph, at most three emoji in a row)."""
    min_tokens: int = 32
    """Tokens before the reply may end: Gemma 3 270M, a base model, otherwise ends its line early
    (16.7 words a draft against 24 in the real tweets; BLEU's brevity penalty charges it). 32
    over 24 on the tuning rows: BLEU-1 +0.007, ROUGE-L -0.004 (docs/generation.md)."""
    seed: int = 0
    max_ctx: int = 4096
    """Upper bound on n_ctx; the model's own training context bounds it too."""


@dataclass(frozen=True)
class Exemplar:
    """A past tweet the prompt was built from, and why: its similarity and retrieval level."""

    vec_id: int
    tweet_id: int | None
    username: str | None
    company: str | None
    likes: int | None
    date: dt.datetime | None
    content: str
    score: float
    level: str
    """account, company or all: the narrowest filter that found it."""
    media: str = ""
    """Its media in words ('a photo'), so its prompt turn reads like the brief's."""

    def to_json(self) -> dict[str, Any]:
        return {
            "vec_id": self.vec_id,
            "tweet_id": self.tweet_id,
            "username": self.username,
            "likes": self.likes,
            "date": self.date.isoformat() if self.date else None,
            "score": round(self.score, 4),
            "level": self.level,
            "content": self.content,
        }


@dataclass(frozen=True)
class Candidate:
    """One generated tweet, what it was built from, and its predicted likes when available."""

    text: str
    raw: str
    seed: int
    tokens: int
    seconds: float
    """Its share, by tokens, of the decoding time: the drafts of a brief are written together."""
    exemplars: list[Exemplar] = field(default_factory=list)
    predicted_likes: float | None = None
    rank_score: float | None = None
    nearest: Nearest | None = None
    """The past tweet closest to the draft: a near-copy when their cosine reaches NEAR_COPY."""
    brand_voice: float | None = None
    """Cosine to the account's centroid: how much it sounds like the account's own tweets."""

    @property
    def near_copy(self) -> bool:
        return self.nearest is not None and self.nearest.near_copy

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "seed": self.seed,
            "near_copy": self.near_copy,
            "nearest": self.nearest.to_json() if self.nearest else None,
            "brand_voice": None if self.brand_voice is None else round(self.brand_voice, 4),
            "predicted_likes": None if self.predicted_likes is None else round(self.predicted_likes, 1),
            "rank_score": None if self.rank_score is None else round(self.rank_score, 4),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "exemplars": [e.to_json() for e in self.exemplars],
        }


def describe_media(media: str | Sequence[dict[str, Any]] | None) -> str:
    """'a photo', '2 photos and a video', ... from the index's media JSON (URLs are dead offline)."""
    items = stored_media(media) if isinstance(media, str) else list(media or [])
    counts: dict[str, int] = {}
    for item in items:
        kind = {"gif": "GIF"}.get(str(item.get("kind")), str(item.get("kind")))
        counts[kind] = counts.get(kind, 0) + 1
    return " and ".join(f"a {k}" if n == 1 else f"{n} {k}s" for k, n in counts.items())


def relevance(hits: Sequence[tuple[float, int | None]], likes_weight: float) -> np.ndarray:
    """Similarity plus a bonus for likes above the pool's mean, per (similarity, likes) pair.

    Likes count on the log1p scale, standardised within the pool; a missing value, or a pool
    without likes, gets no bonus.
    """
    logs = np.array([math.log1p(max(lk, 0)) if lk is not None else np.nan for _, lk in hits], dtype=float)
    known = logs[~np.isnan(logs)]
    bonus = np.zeros(len(hits))
    if len(known) >= 2 and known.std() > 0:
        bonus = np.nan_to_num((logs - known.mean()) / known.std()) * likes_weight
    return np.array([score for score, _ in hits], dtype=float) + bonus


def rerank(hits: Sequence[tuple[float, int | None]], likes_weight: float) -> list[int]:
    """Order of (similarity, likes) pairs by `relevance`, best first."""
    keys = relevance(hits, likes_weight)
    return sorted(range(len(hits)), key=lambda i: -keys[i])


def account_company(searcher: Searcher, username: str) -> str | None:
    """The company the index knows for an account (its most frequent), or None."""
    return searcher.reader.account_companies().get(account_key(username) or "")


def find_exemplars(
    searcher: Searcher,
    brief: Brief,
    config: GenerateConfig,
    *,
    vector: np.ndarray | None = None,
    image: np.ndarray | None = None,
    exclude: frozenset[int] = frozenset(),
) -> list[Exemplar]:
    """Up to config.exemplars past tweets: the account's first, then its company's, then anyone's.

    A dated brief sees only tweets from before its date. Within each level the pool is
    re-ranked by similarity plus a likes bonus, so well-liked tweets come first. With `image`
    (the CLIP vector of the brief's picture, for an index with image vectors) the tweets whose
    images are nearest form a second pool, taken in turn with the text pool: the two spaces'
    cosines are not comparable, so neither ranking is merged into the other.
    """
    if config.exemplars < 1:
        return []
    if vector is None:
        vector = searcher.embedder.encode([brief.query_text()])
    until = brief.date - dt.timedelta(microseconds=1) if brief.date else None
    company = brief.company or account_company(searcher, brief.username)
    levels = [("account", Filters(username=brief.username, until=until))]
    if company:
        levels.append(("company", Filters(company=company, until=until)))
    levels.append(("all", Filters(until=until)))
    chosen: list[Exemplar] = []
    seen = set(exclude)
    for level, filters in levels:
        pools = [_pool(searcher, vector, filters, frozenset(seen), config, "text")]
        if image is not None:
            pools.append(_pool(searcher, image[None], filters, frozenset(seen), config, "image"))
        for hit in _take_in_turn(pools, config.exemplars - len(chosen)):
            t = hit.tweet
            seen.add(t["vec_id"])
            chosen.append(
                Exemplar(
                    t["vec_id"],
                    t.get("tweet_id"),
                    t.get("username"),
                    t.get("company"),
                    t.get("likes"),
                    t.get("date"),
                    t["content"],
                    hit.score,
                    level,
                    describe_media(t.get("media")),
                )  # fmt: skip
            )
        if len(chosen) >= config.exemplars:
            break
    if not chosen:
        log.warning("no past tweets to learn from: generating from the brief alone")
    elif chosen[0].level != "account":
        where = "its company's tweets" if chosen[0].level == "company" else "every account's tweets"
        log.warning("%s has no earlier tweets in the index: exemplars come from %s", brief.username, where)
    return chosen


def _pool(
    searcher: Searcher,
    query: np.ndarray,
    filters: Filters,
    exclude: frozenset[int],
    config: GenerateConfig,
    space: str,
) -> list[Hit]:
    """Neighbours with text in one space, best first by similarity plus the likes bonus."""
    hits = searcher.similar_vectors(query, config.pool, filters=filters, exclude=exclude, space=space)[0]
    hits = [h for h in hits if h.tweet.get("content")]
    pairs = [(h.score, h.tweet.get("likes")) for h in hits]
    if config.diversity > 0 and space == "text" and len(hits) > 1 and searcher.reader.text_vectors_readable:
        from retrieval.query.ranking import mmr  # imports faiss: not before `generate` starts loading the model

        vectors = searcher.reader.text_vectors(np.array([h.tweet["vec_id"] for h in hits], dtype=np.int64))
        order = mmr(relevance(pairs, config.likes_weight), vectors, len(hits), config.diversity)
    else:
        order = rerank(pairs, config.likes_weight)
    return [hits[i] for i in order]


def _take_in_turn(pools: Sequence[list[Hit]], n: int) -> list[Hit]:
    """Up to n hits, one from each pool in turn, each tweet once."""
    taken: dict[int, Hit] = {}
    for row in itertools.zip_longest(*pools):
        for hit in row:
            if hit is not None and len(taken) < n:
                taken.setdefault(hit.tweet["vec_id"], hit)
    return list(taken.values())


def build_messages(brief: Brief, exemplars: Sequence[Exemplar]) -> Messages:
    """The chat prompt as a few-shot conversation: each exemplar is a request for its own media
    answered by the real tweet, the most relevant last (nearest the new request), then the brief.

    A small model copies a demonstrated format (length, hashtags, trailing links) far better
    than it follows a description of it: on rows 1000-1029 of the behaviour file this took
    RAG's BLEU-1 from 0.19 (exemplars listed in one message) to 0.25.
    """
    system = (
        f"You write the tweets of {brief.username}" + (f", a {brief.company} account" if brief.company else "") + "."
        f" Reply with one tweet only, under 280 characters. Write {HYPERLINK} where a link goes"
        f" and {MENTION} where an account is tagged."
    )
    messages = [{"role": "system", "content": system}]
    for e in reversed(exemplars):
        messages.append({"role": "user", "content": _ask(e.media, likes=e.likes if brief.likes is not None else None)})
        messages.append({"role": "assistant", "content": " ".join(e.content.split())})
    messages.append({"role": "user", "content": _ask(brief.media, topic=brief.topic, likes=brief.likes)})
    return messages


def _ask(media: str, *, topic: str | None = None, likes: int | None = None) -> str:
    ask = "Write a tweet" + (f" to go with {media.strip()}" if media.strip() else "") + "."
    if topic and topic.strip():
        ask += f" Topic: {topic.strip()}."
    if likes is not None:
        ask += f" It should get about {likes} likes."
    return ask


MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds per message (role markers); counted generously."""


def fit_messages(
    brief: Brief,
    exemplars: Sequence[Exemplar],
    count_tokens: Callable[[str], int],
    budget: int,
) -> tuple[Messages, list[Exemplar], int]:
    """The prompt with as many exemplars as fit in `budget` tokens, dropping the least relevant.

    Returns the messages, the exemplars kept and the prompt's estimated token count. Never
    raises: with no exemplar left the brief alone is sent, even if over budget (callers then
    clip max_tokens).
    """
    kept = list(exemplars)
    while True:
        messages = build_messages(brief, kept)
        tokens = sum(count_tokens(m["content"]) + MESSAGE_OVERHEAD for m in messages)
        if tokens <= budget or not kept:
            if len(kept) < len(exemplars):
                log.info("prompt fits %d of %d exemplars in %d tokens", len(kept), len(exemplars), budget)
            return messages, kept, tokens
        kept.pop()


RANKINGS = ("consensus", "voice", "likes")
"""How candidates are ordered: consensus (minimum Bayes risk: the draft sharing most with the
other drafts and the exemplars), voice (brand-voice score) or likes (the kNN likes predictor).
On tuning rows 1000-1059, the best of 3 by consensus scored BLEU-1 0.283 / ROUGE-L 0.167, by
voice 0.274 / 0.157, the first draft 0.265 / 0.154 (docs/generation.md, "Choosing the draft")."""


def rank_candidates(
    searcher: Searcher,
    brief: Brief,
    candidates: list[Candidate],
    *,
    by: str = "consensus",
    image: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
) -> tuple[list[Candidate], str | None]:
    """Best first: near-copies of a past tweet last, then by `by`; by similarity to the exemplars
    when that score is missing (no account history, or no likes before the brief's date).

    Returns the list and the method (consensus, brand_voice, predicted_likes, similarity), or None, in the
    order generated, for one candidate or nothing to rank by. Each candidate gets its predicted
    likes whenever the index can predict them. `vectors`: the drafts' embeddings when the caller
    has them (else they are embedded here, only if a score needs them).
    """
    if by not in RANKINGS:
        raise RetrievalError(f"rank by {by!r}: use one of {', '.join(RANKINGS)}")
    candidates = _with_predicted_likes(searcher, brief, candidates, image, vectors)
    if len(candidates) == 1:
        return candidates, None
    if by == "consensus" and (len(candidates) > 2 or candidates[0].exemplars):  # two alone agree symmetrically
        scored, method = _by_consensus(candidates), "consensus"
    elif by == "likes" and all(c.predicted_likes is not None for c in candidates):
        scored, method = candidates, "predicted_likes"
    elif by == "voice" and all(c.brand_voice is not None for c in candidates):
        scored, method = [dataclasses.replace(c, rank_score=c.brand_voice) for c in candidates], "brand_voice"
    elif candidates[0].exemplars:
        scored, method = _by_similarity(searcher, candidates, vectors), "similarity"
    else:
        return candidates, None
    return sorted(scored, key=lambda c: (c.near_copy, -(c.rank_score or 0.0))), method


def _with_predicted_likes(
    searcher: Searcher, brief: Brief, candidates: list[Candidate], image: np.ndarray | None, vectors: np.ndarray | None
) -> list[Candidate]:
    from retrieval.tasks.likes.history import IndexHistory
    from retrieval.tasks.likes.predict import Query, predict_likes

    query = Query(brief.username, brief.company, brief.date)
    try:
        history = IndexHistory(searcher.reader)
        history.check(query)
    except RetrievalError as e:
        log.info("no likes prediction for the drafts: %s", e)
        return candidates
    if vectors is None:
        vectors = searcher.embedder.encode([c.text or " " for c in candidates])
    found = predict_likes(history, vectors, [query] * len(candidates), images=[image] * len(candidates))
    return [dataclasses.replace(c, predicted_likes=p.likes, rank_score=p.log_likes) for c, p in zip(candidates, found)]


def _by_consensus(candidates: list[Candidate]) -> list[Candidate]:
    """Mean ROUGE-L F1 of each draft against the other drafts and the exemplars it was written from:
    the sample nearest the centre of what the model and the brand would write, which BLEU and
    ROUGE reward and an odd draft (a rambling or an off-topic one) does not reach."""
    from rouge_score.tokenize import tokenize

    def words(text: str) -> list[str]:
        return tokenize(text, None)

    scores = []
    for i, c in enumerate(candidates):
        others = [o.text for j, o in enumerate(candidates) if j != i] + [e.content for e in c.exemplars]
        mine = words(c.text)
        scores.append(float(np.mean([rouge_l(words(o), mine) for o in others])) if others else 0.0)
    return [dataclasses.replace(c, rank_score=s) for c, s in zip(candidates, scores)]


def rouge_l(reference: list[str], hypothesis: list[str]) -> float:
    """ROUGE-L F1 of two token lists, as rouge-score computes it; rouge-score's scorer itself
    imports nltk and scipy (2 s), which a CLI call that ranks three drafts should not pay."""
    if not reference or not hypothesis:
        return 0.0
    previous = [0] * (len(hypothesis) + 1)
    for r in reference:
        current = [0]
        for j, h in enumerate(hypothesis):
            current.append(previous[j] + 1 if r == h else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hypothesis), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def _by_similarity(searcher: Searcher, candidates: list[Candidate], mine: np.ndarray | None) -> list[Candidate]:
    """Mean cosine similarity to the exemplars; the candidates share them, so one encode call."""
    exemplars = candidates[0].exemplars
    drafts = [] if mine is not None else [c.text or " " for c in candidates]
    vectors = searcher.embedder.encode(drafts + [e.content for e in exemplars])
    mine = vectors[: len(candidates)] if mine is None else mine
    scores = (mine @ vectors[len(drafts) :].T).mean(axis=1)
    return [dataclasses.replace(c, rank_score=float(s)) for c, s in zip(candidates, scores)]


def generate(
    searcher: Searcher,
    generator: Generator,
    brief: Brief,
    config: GenerateConfig | None = None,
    *,
    candidates: int = 1,
    rank: str = "consensus",
    on_token: Callable[[int, str], None] | None = None,
    image: np.ndarray | None = None,
    original: bool = False,
    exemplars: list[Exemplar] | None = None,
    exclude: frozenset[int] = frozenset(),
) -> tuple[list[Candidate], str | None]:
    """Tweets for the brief, best first by `rank`, and how they were ranked (see rank_candidates).

    `image` is the CLIP vector of the brief's picture: its neighbours join the exemplars and the
    likes prediction that ranks the candidates. Every draft carries its nearest past tweet (from
    before the brief's date) and its brand-voice score; with `original` a near-copy is generated
    again with another seed, up to ORIGINAL_TRIES times, and stays flagged if it still is one.
    `exemplars`, when the caller has found them (find_exemplars), are used as they are;
    `exclude` hides index rows from the near-copy check (and from the exemplars found here): an
    evaluation hides the tweet it rewrites."""
    config = config or GenerateConfig()
    if candidates < 1:
        raise RetrievalError(f"candidates must be at least 1, got {candidates}")
    brief = brief if brief.company else _with_company(searcher, brief)
    if exemplars is None:
        exemplars = find_exemplars(searcher, brief, config, image=image, exclude=exclude)
    budget = generator.context_limit() - config.max_tokens - 32
    messages, kept, _ = fit_messages(brief, exemplars, generator.count_tokens, budget)
    centroid = account_centroid(searcher, brief.username)

    def drafts(seeds: list[int], numbers: list[int]) -> list[tuple[Candidate, np.ndarray]]:
        """Drafts written together, one per seed; `numbers` are the candidates they stand for."""
        sink = (lambda i, piece: on_token(numbers[i], piece)) if on_token else None
        written = generator.complete_many(messages, config=config, seeds=seeds, on_token=sink)
        texts = [postprocess(raw, kept) for raw, _, _ in written]
        drafted = searcher.embedder.encode([text or " " for text in texts])
        nearest = nearest_past(searcher, drafted, before=brief.date, exclude=exclude)
        voices = brand_voice(drafted, centroid)
        return [
            (Candidate(text, raw, seed, tokens, seconds, kept, nearest=near, brand_voice=voice), vector)
            for text, (raw, tokens, seconds), seed, near, voice, vector in zip(
                texts, written, seeds, nearest, voices, drafted
            )
        ]

    out = drafts([config.seed + n for n in range(candidates)], list(range(candidates)))
    for retry in range(1, ORIGINAL_TRIES if original else 1):
        again = [n for n, (found, _) in enumerate(out) if found.near_copy]
        if not again:
            break
        for n in again:
            log.info("draft %d is a near-copy of tweet %s: generating again", n + 1, out[n][0].nearest.tweet_id)
        for n, redone in zip(again, drafts([config.seed + n + retry * candidates for n in again], again)):
            out[n] = redone
    found = [c for c, _ in out]
    return rank_candidates(searcher, brief, found, by=rank, image=image, vectors=np.stack([v for _, v in out]))


def _with_company(searcher: Searcher, brief: Brief) -> Brief:
    return dataclasses.replace(brief, company=account_company(searcher, brief.username))


def image_for_brief(searcher: Searcher, picture: Image.Image, media: str = "") -> tuple[str, np.ndarray | None]:
    """The picture in words (CLIP zero-shot labels) unless `media` already says it, and its CLIP
    vector when the index has image vectors to find exemplars with."""
    from retrieval.embed.describe import MediaDescriber

    if searcher.clip is None:
        raise RetrievalError("describing an image needs the CLIP model", hint="clip_checkpoint")
    if not media.strip():
        media = MediaDescriber(searcher.clip).describe(picture)
    vector = searcher.image_vector(picture) if searcher.reader.has_vectors("image") else None
    return media, vector
