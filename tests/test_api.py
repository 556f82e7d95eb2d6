"""The public Python API (`import retrieval`), as the README shows it, on real tweets and the fake
embedder: everything here goes through the top-level names only."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import BEHAVIOUR, HashEmbedder

import retrieval


def test_build_open_search_add_verify_through_the_public_names(tmp_path: Path) -> None:
    tweets = pq.read_table(BEHAVIOUR).slice(0, 300)
    pq.write_table(tweets.slice(0, 200), tmp_path / "first.parquet")
    pq.write_table(tweets.slice(200), tmp_path / "more.parquet")
    report = retrieval.build_index(
        tmp_path / "first.parquet", tmp_path / "idx", embedder=HashEmbedder(), progress=False
    )
    assert isinstance(report, retrieval.BuildReport) and report.indexed == 200

    searcher = retrieval.open_index(tmp_path / "idx", embedder=HashEmbedder())
    text = tweets.column("content")[7].as_py()
    (first, *_) = searcher.similar(text, k=3)
    assert isinstance(first, retrieval.Hit) and first.tweet["content"] == text and first.score > 0.999

    account = tweets.column("username")[7].as_py()
    hits = searcher.similar(text, k=5, filters=retrieval.Filters(username=account))
    assert hits and all(h.tweet["username"] == account for h in hits)

    retrieval.add_to_index(tmp_path / "more.parquet", tmp_path / "idx", embedder=HashEmbedder(), progress=False)
    assert retrieval.verify(tmp_path / "idx") == []
    later = tweets.column("content")[250].as_py()
    assert (
        retrieval.open_index(tmp_path / "idx", embedder=HashEmbedder()).similar(later, k=1)[0].tweet["content"] == later
    )


def test_errors_and_unknown_names() -> None:
    with pytest.raises(retrieval.RetrievalError, match="not an index"):
        retrieval.open_index("no/such/index")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        retrieval.nothing  # noqa: B018
    assert set(retrieval.__all__) >= {"build_index", "open_index", "Searcher", "Filters", "predict_likes", "generate"}


def test_likes_predictor_opens_once_and_answers_from_earlier_tweets(tmp_path: Path) -> None:
    from conftest import LABELLED

    retrieval.build_index(LABELLED, tmp_path / "idx", embedder=HashEmbedder(), progress=False)
    manifest = retrieval.read_manifest(tmp_path / "idx")
    assert isinstance(manifest, retrieval.Manifest) and manifest.version == 1 and manifest.has_text
    predictor = retrieval.LikesPredictor(retrieval.open_index(tmp_path / "idx", embedder=HashEmbedder()))
    tweets = pq.read_table(LABELLED).slice(0, 50).to_pylist()
    account = next(t["username"] for t in tweets if t["username"])
    found = predictor.predict("big news for our fans today", account)
    assert isinstance(found, retrieval.LikesPrediction)
    assert found.low <= found.likes <= found.high and found.prior.source == "account"
    assert abs(sum(n.weight for n in found.neighbours) - 1) < 1e-6
    first = min(t["date"] for t in pq.read_table(LABELLED).to_pylist() if t["date"])
    with pytest.raises(retrieval.RetrievalError, match="no tweets with likes before") as info:
        predictor.predict("big news", account, date=first)
    assert info.value.hint == "date"
