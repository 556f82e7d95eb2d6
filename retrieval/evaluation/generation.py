"""Generation quality: each test tweet rewritten from its metadata alone, scored against the real text.

Three systems from the same retrieval, so they differ only in what they do with it:
`retrieval_only` copies the best exemplar, `llm_only` prompts the model with the brief and no
exemplars, `rag` is what `generate` gives a user: its first candidate, with the same settings
(candidates drafted and ranked, the originality guard when asked). The tweet itself (every indexed copy of its
text) and, for a dated tweet, everything from its date on are hidden from retrieval.
BLEU is sacrebleu's corpus BLEU (13a tokenizer) with n-gram orders 1..4; ROUGE-L is
rouge-score's F-measure, averaged over tweets. Beside them, what a user sees: the share of drafts
that are near-copies of a past tweet (cosine >= 0.95 to the nearest tweet from before the brief,
the tweet itself hidden), novelty (1 - cosine to the nearest of the retrieved exemplars) and brand
voice (cosine to the account's centroid), each averaged over tweets.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.tasks.generate.originality import account_centroid, brand_voice, nearest_past, novelty
from retrieval.tasks.generate.postprocess import postprocess as clean
from retrieval.tasks.generate.rag import (
    Brief,
    GenerateConfig,
    Generator,
    describe_media,
    find_exemplars,
    fit_messages,
    generate,
)

if TYPE_CHECKING:
    from retrieval.query.search import Searcher

log = logging.getLogger(__name__)

SYSTEMS = ("retrieval_only", "llm_only", "rag")


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (0..1) and mean ROUGE-L F1 of hypotheses against one reference each."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references (need one each, and some)")
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    out = {}
    for n in range(1, 5):
        bleu = BLEU(max_ngram_order=n, effective_order=True)
        out[f"bleu{n}"] = bleu.corpus_score(list(hypotheses), [list(references)]).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]
    out["rougeL"] = sum(rouge) / len(rouge)
    return {k: round(v, 4) for k, v in out.items()}


def eval_generation(
    searcher: Searcher,
    generator: Generator,
    rows: Sequence[dict[str, Any]],
    config: GenerateConfig | None = None,
    *,
    candidates: int = 1,
    rank: str = "consensus",
    original: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Scores of the three systems on rows (dicts with content, username, company, date, media);
    candidates, rank and original are `generate`'s, for the rag system."""
    config = config or GenerateConfig()
    rows = [r for r in rows if (r.get("content") or "").strip() and r.get("username")]
    if not rows:
        raise RetrievalError("no tweets with text and an account to evaluate on")
    budget = generator.context_limit() - config.max_tokens - 32
    outputs: dict[str, list[str]] = {s: [] for s in SYSTEMS}
    tokens = {"llm_only": 0, "rag": 0}
    rag_decoding = 0.0
    """Seconds rag's drafts spent in the model (its wall time also holds embedding and ranking)."""
    seconds = {"llm_only": 0.0, "rag": 0.0, "retrieval": 0.0}
    """Wall time per system: rag's is the retrieval and the `generate` call (drafts, ranking)."""
    no_exemplar = 0
    found: list[tuple[frozenset[int], list[str]]] = []
    briefs = [
        Brief(
            username=row["username"],
            company=row.get("company"),
            date=row.get("date"),
            media=describe_media(row.get("media")),
            likes=row.get("likes"),
        )
        for row in rows
    ]
    start = time.perf_counter()
    queries = sorted({b.query_text() for b in briefs})  # few distinct texts: media kinds and companies
    vectors = dict(zip(queries, searcher.embedder.encode(queries)))
    seconds["retrieval"] += time.perf_counter() - start
    for done, (row, brief) in enumerate(zip(rows, briefs), 1):
        start = time.perf_counter()
        hidden = searcher.reader.vec_ids_with_text(row["content"])
        exemplars = find_exemplars(searcher, brief, config, vector=vectors[brief.query_text()][None], exclude=hidden)
        seconds["retrieval"] += time.perf_counter() - start
        found.append((hidden, [e.content for e in exemplars]))
        no_exemplar += not exemplars
        outputs["retrieval_only"].append(exemplars[0].content if exemplars else "")
        messages, _, _ = fit_messages(brief, [], generator.count_tokens, budget)
        raw, n, secs = generator.complete(messages, config=config, seed=config.seed)
        outputs["llm_only"].append(clean(raw, []))
        tokens["llm_only"] += n
        seconds["llm_only"] += secs
        start = time.perf_counter()
        drafts, _ = generate(
            searcher,
            generator,
            brief,
            config,
            candidates=candidates,
            rank=rank,
            original=original,
            exemplars=exemplars,
            exclude=hidden,
        )
        seconds["rag"] += time.perf_counter() - start
        outputs["rag"].append(drafts[0].text)
        tokens["rag"] += sum(d.tokens for d in drafts)
        rag_decoding += sum(d.seconds for d in drafts)
        if progress:
            progress(done, len(rows))
    references = [r["content"] for r in rows]
    seen = _judged_against(searcher, rows, found)
    decoding = seconds["llm_only"] + rag_decoding
    return {
        "tweets": len(rows),
        "model": generator.name,
        "index": str(searcher.reader.path),
        "embedder": searcher.reader.embedder["name"],
        "without_exemplars": no_exemplar,
        **{
            s: {**text_scores(outputs[s], references), **originality(searcher, outputs[s], rows, seen)} for s in SYSTEMS
        },
        "tokens_per_s": round(sum(tokens.values()) / decoding, 1) if decoding else None,
        "seconds_per_tweet": {
            "retrieval": round(seconds["retrieval"] / len(rows), 3),
            "llm_only": round(seconds["llm_only"] / len(rows), 3),
            "rag": round((seconds["retrieval"] + seconds["rag"]) / len(rows), 3),
        },
        "config": {**dataclasses.asdict(config), "candidates": candidates, "rank": rank, "original": original},
        "examples": [
            {"reference": references[i], "exemplar": (found[i][1] or [None])[0], **{s: outputs[s][i] for s in SYSTEMS}}
            for i in range(min(10, len(rows)))
        ],
    }


@dataclass(frozen=True)
class _Seen:
    """What every system's drafts for one tweet are judged against, computed once for all three."""

    hidden: frozenset[int]
    exemplars: np.ndarray
    """The retrieved exemplars' vectors (empty when none were found)."""
    centroid: np.ndarray | None


def _judged_against(
    searcher: Searcher, rows: Sequence[dict[str, Any]], found: Sequence[tuple[frozenset[int], list[str]]]
) -> list[_Seen]:
    centroids: dict[str, np.ndarray | None] = {}
    seen = []
    for row, (hidden, exemplars) in zip(rows, found):
        user = row["username"]
        if user not in centroids:
            centroids[user] = account_centroid(searcher, user)
        shown = searcher.embedder.encode(exemplars) if exemplars else np.zeros((0, searcher.embedder.dim), "float32")
        seen.append(_Seen(hidden, shown, centroids[user]))
    return seen


def originality(
    searcher: Searcher, drafts: Sequence[str], rows: Sequence[dict[str, Any]], seen: Sequence[_Seen]
) -> dict[str, float | None]:
    """near_copy_share, novelty and brand_voice of one system's drafts (see the module's docstring)."""
    vectors = searcher.embedder.encode([d or " " for d in drafts])
    copies, novel, voice = [], [], []
    for vector, row, judged in zip(vectors, rows, seen):
        (nearest,) = nearest_past(searcher, vector[None], before=row.get("date"), exclude=judged.hidden)
        copies.append(nearest is not None and nearest.near_copy)
        novel += [v for v in novelty(vector[None], list(judged.exemplars)) if v is not None]
        voice += [v for v in brand_voice(vector[None], judged.centroid) if v is not None]
    return {
        "near_copy_share": round(float(np.mean(copies)), 4),
        "novelty": round(float(np.mean(novel)), 4) if novel else None,
        "brand_voice": round(float(np.mean(voice)), 4) if voice else None,
    }


def load_rows(path: str | Path, limit: int | None = None, *, offset: int = 0) -> list[dict[str, Any]]:
    """`limit` tweets of a file from row `offset` on, as dicts (tune on one slice, report another)."""
    from retrieval.io.tweets import load_tweets

    return load_tweets(path).table.slice(offset, limit).to_pylist()
