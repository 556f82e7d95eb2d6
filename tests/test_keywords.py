"""Keyword (BM25) and hybrid search over real tweets, through the library and the CLI."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import BEHAVIOUR, HashEmbedder

from retrieval import Filters, RetrievalError, add_to_index, build_index, open_index, verify
from retrieval.apps.cli import cli
from retrieval.index import keywords
from retrieval.index.folder import file_entries
from retrieval.index.keywords import tokenize
from retrieval.index.manifest import read_manifest
from retrieval.io.tweets import load_tweets


@pytest.fixture(scope="module")
def tweets() -> list[dict]:
    """The first 600 tweets as the index holds them (HTML entities decoded, ids as `tweet_id`)."""
    return load_tweets(BEHAVIOUR).table.slice(0, 600).to_pylist()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kw")
    pq.write_table(pq.read_table(BEHAVIOUR).slice(0, 600), folder / "first.parquet")
    build_index(folder / "first.parquet", folder / "idx", embedder=HashEmbedder(), progress=False)
    return folder / "idx"


def _hashtags(tweets: list[dict]) -> Counter[str]:
    return Counter(h.lower() for t in tweets if t["content"] for h in set(re.findall(r"#\w+", t["content"])))


def test_tokens_keep_hashtags_and_handles_and_drop_placeholders() -> None:
    tokens = tokenize("We are HIRING engineers! #NPD @Tesla <hyperlink> <mention> running")
    assert tokens == ["we", "hire", "engin", "#npd", "@tesla", "run"]
    assert tokenize("!!! ... <hyperlink>") == []


def test_a_rare_hashtag_finds_its_tweet_first(index: Path, tweets: list[dict]) -> None:
    tag = next(h for h, n in _hashtags(tweets).items() if n == 1)
    owner = next(t for t in tweets if t["content"] and tag in t["content"].lower())
    searcher = open_index(index, embedder=HashEmbedder())
    (first, *rest) = searcher.similar(tag, k=5, mode="keyword")
    assert first.tweet["tweet_id"] == owner["tweet_id"] and first.found_by == {"keyword": 1}
    assert all(tag not in (h.tweet["content"] or "").lower() for h in rest), "no other tweet has the tag"


def test_keyword_filters_are_bound_values(index: Path, tweets: list[dict]) -> None:
    tag, _ = _hashtags(tweets).most_common(1)[0]
    searcher = open_index(index, embedder=HashEmbedder())
    everyone = searcher.similar(tag, k=20, mode="keyword")
    account = everyone[0].tweet["username"]
    mine = searcher.similar(tag, k=20, mode="keyword", filters=Filters(username=account))
    assert mine and all(h.tweet["username"] == account for h in mine)
    for mode in ("keyword", "hybrid"):
        assert searcher.similar(tag, k=5, mode=mode, filters=Filters(username="x' OR 1=1 --")) == []
    assert verify(index) == []


def test_a_query_without_words_is_one_line_error(index: Path) -> None:
    searcher = open_index(index, embedder=HashEmbedder())
    for mode in ("keyword", "hybrid"):
        with pytest.raises(RetrievalError, match="no words to search for by keyword"):
            searcher.similar("!!! ...", k=5, mode=mode)
    with pytest.raises(RetrievalError, match="unknown mode"):
        searcher.similar("news", k=5, mode="magic")


def test_hybrid_fuses_both_sides_by_rank(index: Path, tweets: list[dict]) -> None:
    text = next(t["content"] for t in tweets if t["content"] and len(tokenize(t["content"])) > 6)
    searcher = open_index(index, embedder=HashEmbedder())
    hits = searcher.similar(text, k=10, mode="hybrid")
    assert hits[0].tweet["content"] == text and hits[0].found_by == {"keyword": 1, "vector": 1}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == pytest.approx(2 / 61)
    assert any(set(h.found_by) == {"keyword"} for h in hits), "words alone bring tweets the vectors miss"


def test_an_add_extends_the_keyword_index(tmp_path: Path, index: Path) -> None:
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    more = pq.read_table(BEHAVIOUR).slice(600, 200)
    pq.write_table(more, tmp_path / "more.parquet")
    before = _hashtags(pq.read_table(BEHAVIOUR).slice(0, 600).to_pylist())
    tag = next(h for h, n in _hashtags(more.to_pylist()).items() if h not in before)
    segments = {f.name: f.stat().st_ino for f in (copy / "keywords").iterdir() if f.suffix == ".idx"}
    add_to_index(tmp_path / "more.parquet", copy, embedder=HashEmbedder(), progress=False)
    (first, *_) = open_index(copy, embedder=HashEmbedder()).similar(tag, k=3, mode="keyword")
    assert tag in first.tweet["content"].lower() and first.tweet["vec_id"] >= 600
    after = {f.name: f.stat().st_ino for f in (copy / "keywords").iterdir() if f.suffix == ".idx"}
    assert segments.items() < after.items(), "the old segments are kept as they were, the new rows added beside"
    assert verify(copy) == []


@pytest.mark.parametrize("before", ["none", "bm25s"])
def test_an_add_to_an_index_without_keywords_indexes_every_row(tmp_path: Path, index: Path, before: str) -> None:
    """An index from before the keyword index (or with bm25s's) says so and gets a whole one at its next add."""
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    shutil.rmtree(copy / "keywords")
    if before == "bm25s":
        (copy / "keywords").mkdir()
        np.save(copy / "keywords" / "vec_ids.npy", np.arange(600))
    manifest = read_manifest(copy)
    manifest.replace(files=file_entries(copy)).write(copy)
    searcher = open_index(copy, embedder=HashEmbedder())
    assert searcher.similar("coffee", k=3), "vector search works"
    message = "no keyword index" if before == "none" else r"keywords: the keyword index is in an older format \(bm25s\)"
    with pytest.raises(RetrievalError, match=message):
        searcher.similar("coffee", mode="keyword")
    old = pq.read_table(BEHAVIOUR).slice(0, 600).to_pylist()
    tag, _ = _hashtags(old).most_common(1)[0]
    pq.write_table(pq.read_table(BEHAVIOUR).slice(600, 50), tmp_path / "more.parquet")
    add_to_index(tmp_path / "more.parquet", copy, embedder=HashEmbedder(), progress=False)
    hits = open_index(copy, embedder=HashEmbedder()).similar(tag, k=3, mode="keyword")
    assert hits and all(tag in h.tweet["content"].lower() for h in hits)
    assert verify(copy) == []


def test_cli_keyword_mode_shows_which_side_found_each_tweet(index: Path, tweets: list[dict]) -> None:
    """Keyword search needs no model, so it runs even on an index built with the fake embedder."""
    tag = next(h for h, n in _hashtags(tweets).items() if n == 1)
    result = CliRunner().invoke(cli, ["similar", tag, "--index", str(index), "--mode", "keyword", "-k", "3"])
    assert result.exit_code == 0, result.output
    header, first = result.stdout.splitlines()[:2]
    assert "found by" in header and first.split()[3] == "k1"
    empty = CliRunner().invoke(cli, ["similar", "?!", "--index", str(index), "--mode", "keyword"])
    assert empty.exit_code == 1 and "no words to search for" in empty.output and "Traceback" not in empty.output


def test_eval_retrieval_scores_each_mode_on_judgments(index: Path, tweets: list[dict], tmp_path: Path) -> None:
    import json

    from retrieval.evaluation.retrieval import eval_retrieval, load_queries

    chosen = [t for t in tweets if t["content"] and len(tokenize(t["content"])) > 8][:20]
    lines = [json.dumps({"query": t["content"], "relevant": [t["tweet_id"]]}) for t in chosen]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    report = eval_retrieval(open_index(index, embedder=HashEmbedder()), load_queries(tmp_path / "q.jsonl"))
    assert report["queries"] == 20
    assert report["vector"]["mrr_at_10"] == 1.0, "the fake embedder finds an exact text first"
    assert report["keyword"]["recall_at_10"] >= 0.9 and 0 < report["hybrid"]["ndcg_at_10"] <= 1.0
    assert set(report["by_collapse"]) == {"0.95", "off"} and report["vector"] == report["by_collapse"]["0.95"]["vector"]
    (tmp_path / "bad.jsonl").write_text('{"query": "x", "relevant": [1]}\n{"query": 3}\n')
    with pytest.raises(RetrievalError, match=r"bad.jsonl: line 2: needs a query text"):
        load_queries(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("deepest", [0, 5000], ids=["filter in the query", "filter over a deeper ranking"])
def test_a_filtered_keyword_search_is_the_filtered_ranking(tmp_path: Path, tweets: list[dict], monkeypatch, deepest):
    """Both ways of applying a filter give the unfiltered ranking's admitted rows, scores unchanged."""
    monkeypatch.setattr(keywords, "DEEPEST", deepest)
    texts = [t["content"] for t in tweets]
    keywords.write(tmp_path, [(np.arange(len(texts)), texts)])
    index = keywords.KeywordIndex.open(tmp_path)
    word = Counter(w for t in texts if t for w in set(tokenize(t))).most_common(3)[2][0]
    everything = index.search(word, len(texts))
    assert len(everything) > 40
    rng = np.random.default_rng(0)
    for share in (0.02, 0.3, 0.95):
        allowed = np.sort(rng.choice(len(texts), int(len(texts) * share), replace=False))
        truth = [(v, s) for v, s in everything if v in set(allowed.tolist())][:10]
        found = index.search(word, 10, allowed)
        assert len(truth) >= 1 and [v for v, _ in found] == [v for v, _ in truth]
        assert [s for _, s in found] == pytest.approx([s for _, s in truth])
    assert index.search(word, 10, np.array([], np.int64)) == []


def test_a_keyword_index_that_cannot_open_leaves_vector_search_working(index: Path, monkeypatch) -> None:
    """tantivy opens nothing it cannot lock (a folder the user may only read); say so, and search by vector."""

    def refuse(path: str) -> None:
        raise ValueError('Failed to acquire Lockfile: IoError(Os { code: 13, kind: PermissionDenied, message: "x" })')

    monkeypatch.setattr(keywords.tantivy.Index, "open", refuse)
    searcher = open_index(index, embedder=HashEmbedder())
    assert searcher.similar("coffee", k=3)
    with pytest.raises(RetrievalError, match=r"keywords: cannot open the keyword index: tantivy must be able to write"):
        searcher.similar("coffee", mode="keyword")
