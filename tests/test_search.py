"""Similar past tweets on real tweets with a real (small) model."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from retrieval.errors import RetrievalError
from retrieval.index.filters import Filters
from retrieval.query.search import Searcher


@pytest.fixture(scope="module")
def searcher(minilm_index: Path, minilm) -> Searcher:
    return Searcher.open(minilm_index, embedder=minilm)


def test_text_query_finds_the_tweet_it_paraphrases(searcher: Searcher, sample_parquet: Path) -> None:
    original = pq.read_table(sample_parquet).column("content")[42].as_py()
    hits = searcher.similar(original.replace("&amp;", "&"), k=3)
    assert hits[0].tweet["tweet_id"] == 43
    assert hits[0].score > 0.95
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_username_filter_returns_only_that_account(searcher: Searcher) -> None:
    hits = searcher.similar("a new store opening", k=5, filters=Filters(username="walmartworld"))
    assert len(hits) >= 3
    assert {h.tweet["username"] for h in hits} == {"WalmartWorld"}


def test_query_by_id_leaves_the_tweet_out(searcher: Searcher) -> None:
    hits = searcher.similar_to_tweet(7, k=5)
    assert len(hits) == 5
    assert 7 not in {h.tweet["tweet_id"] for h in hits}


def test_bad_queries_are_one_line_errors(searcher: Searcher) -> None:
    with pytest.raises(RetrievalError, match="empty"):
        searcher.similar("   ")
    with pytest.raises(RetrievalError, match="no tweet with id 999999"):
        searcher.similar_to_tweet(999999)


def test_hit_json_is_plain_data(searcher: Searcher) -> None:
    hit = searcher.similar("coffee", k=1)[0].to_json()
    assert set(hit) >= {"rank", "score", "tweet_id", "date", "username", "company", "likes", "content", "media"}
    assert isinstance(hit["media"], list) and isinstance(hit["date"], str)


def test_min_score_returns_only_hits_at_or_above_it(searcher: Searcher) -> None:
    top = searcher.similar("coffee and donuts", k=50)
    cut = top[9].score
    hits = searcher.similar("coffee and donuts", k=1000, min_score=cut)
    assert hits and all(h.score >= cut for h in hits)
    assert {h.tweet["vec_id"] for h in top[:9]} <= {h.tweet["vec_id"] for h in hits}
    with pytest.raises(RetrievalError, match="cosine similarity"):
        searcher.similar("coffee", mode="keyword", min_score=0.5)


def test_early_text_model_is_the_one_the_index_was_built_with(
    minilm_index: Path, searcher: Searcher, tmp_path: Path
) -> None:
    from retrieval.query.early import load_text_model

    loading = load_text_model(minilm_index)
    assert loading is not None
    fresh = Searcher.open(minilm_index, loading)
    assert fresh.embedder.name == searcher.embedder.name == "minilm"
    hits = fresh.similar("new coffee", k=3)
    assert [h.tweet["vec_id"] for h in hits] == [h.tweet["vec_id"] for h in searcher.similar("new coffee", k=3)]
    assert load_text_model(tmp_path) is None, "not an index: Searcher.open says so, in its words"
