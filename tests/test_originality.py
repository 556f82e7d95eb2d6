"""The originality guard: every draft carries its nearest past tweet; --original makes a near-copy again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from retrieval.query.search import Searcher
from retrieval.tasks.generate.originality import NEAR_COPY, account_centroid, nearest_past, novelty
from retrieval.tasks.generate.rag import Brief, GenerateConfig, generate


class Scripted:
    """A generator that answers from a script, by seed: no model, so the guard is what is tested."""

    name = "scripted"

    def __init__(self, by_seed: dict[int, str]) -> None:
        self.by_seed = by_seed
        self.seeds: list[int] = []

    def context_limit(self) -> int:
        return 4096

    def count_tokens(self, messages) -> int:
        return 100

    def complete_many(self, messages, *, config, seeds, on_token=None):
        self.seeds += seeds
        fresh = "Something nobody has posted: a sandwich that sings opera"
        return [(self.by_seed.get(s, fresh), 10, 0.01) for s in seeds]


def _account_and_tweet(sample: Path) -> tuple[str, str]:
    rows = pq.read_table(sample).to_pylist()
    user = max({r["username"] for r in rows}, key=lambda u: sum(r["username"] == u for r in rows))
    return user, next(r["content"] for r in rows if r["username"] == user)


def test_a_draft_that_repeats_a_past_tweet_is_flagged_and_original_makes_another(
    minilm_index: Path, minilm, sample_parquet: Path
) -> None:
    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    user, past = _account_and_tweet(sample_parquet)
    config = GenerateConfig(exemplars=2, seed=0)
    flagged, _ = generate(searcher, Scripted({0: past}), Brief(user, media="a photo"), config)
    assert flagged[0].near_copy and flagged[0].nearest.similarity >= NEAR_COPY
    assert flagged[0].nearest.content == past and flagged[0].to_json()["near_copy"] is True
    script = Scripted({0: past})
    kept, _ = generate(searcher, script, Brief(user, media="a photo"), config, original=True)
    assert script.seeds == [0, 1] and not kept[0].near_copy and "opera" in kept[0].text
    assert kept[0].nearest is not None and kept[0].nearest.similarity < NEAR_COPY
    assert kept[0].brand_voice is not None and kept[0].brand_voice < flagged[0].brand_voice


def test_nearest_past_respects_the_date_and_hidden_rows(minilm_index: Path, minilm, sample_parquet: Path) -> None:
    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    user, past = _account_and_tweet(sample_parquet)
    vector = minilm.encode([past])
    (found,) = nearest_past(searcher, vector)
    assert found.content == past and found.near_copy
    hidden = searcher.reader.vec_ids_with_text(past)
    (other,) = nearest_past(searcher, vector, exclude=hidden)
    assert other.content != past
    centre = account_centroid(searcher, user)
    assert centre is not None and abs(float(np.linalg.norm(centre)) - 1) < 1e-5
    assert account_centroid(searcher, "nobody-at-all") is None
    assert novelty(vector, [vector[0]])[0] < 1e-5 and novelty(vector, []) == [None]
