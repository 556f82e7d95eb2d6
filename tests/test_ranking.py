"""Near-copy folding and engagement/recency ranking, on hand-made candidates and on real tweets."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from retrieval.apps.cli.main import cli
from retrieval.errors import RetrievalError
from retrieval.index.faiss_ops import near_copy_groups
from retrieval.query.levels import GroupStats
from retrieval.query.ranking import Candidate, Levels, Ranking, rank
from retrieval.query.search import Searcher
from retrieval.tasks.dedup import find_duplicates, write_members
from tests.conftest import BEHAVIOUR, LABELLED


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def test_near_copy_groups_chain_pairs_and_leave_empty_rows_alone() -> None:
    vectors = _unit([1, 0, 0], [1, 0.2, 0], [1, 0.45, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0])
    labels = near_copy_groups(vectors, 0.97)
    assert labels[0] == labels[1] == labels[2]  # 0~1 and 1~2 chain, though 0 and 2 are 0.91 apart
    assert len({labels[0], labels[3], labels[4], labels[5]}) == 4


def _levels(*accounts: tuple[str, int, float]) -> Levels:
    """Accounts with n tweets at a mean log1p(likes)."""
    groups = [(name, None, n, n * mean, n * mean**2) for name, n, mean in accounts]
    return Levels(GroupStats.from_groups(groups, {}))


def _candidate(vec_id: int, score: float, user: str, likes: int | None, day: int = 1) -> Candidate:
    tweet = {"vec_id": vec_id, "tweet_id": 100 + vec_id, "username": user, "company": None, "likes": likes}
    return Candidate(vec_id, score, tweet | {"date": dt.datetime(2020, 1, day), "has_vector": True})


SMALL, BIG = ("small", 200, math.log1p(30)), ("big", 200, math.log1p(10_000))


def _rank(candidates, ranking, vectors=None, levels=None, k=10):
    vectors = vectors if vectors is not None else np.eye(len(candidates), dtype=np.float32)
    return rank(
        candidates,
        k,
        ranking,
        vectors=lambda c: vectors,
        levels=lambda: levels or _levels(SMALL, BIG),
        newest=lambda: dt.datetime(2020, 1, 31),
    )


def test_engagement_ranks_likes_relative_to_the_account() -> None:
    """300 likes on an account that usually gets 30 beat 3,000 on one that usually gets 10,000."""
    found = _rank([_candidate(0, 0.9, "big", 3000), _candidate(1, 0.8, "small", 300)], Ranking("engagement"))
    assert [r.candidate.vec_id for r in found] == [1, 0]
    relative = [r.factors["relative_likes"] for r in found]
    assert relative[0] > 5 > 1 > relative[1]
    assert found[0].factors["typical_likes"] == pytest.approx(30, rel=0.05)


def test_collapse_shows_the_best_performer_with_its_near_copies() -> None:
    vectors = _unit([1, 0], [1, 0.01], [0, 1])
    found = _rank(
        [_candidate(0, 0.9, "small", 10), _candidate(1, 0.89, "small", 900), _candidate(2, 0.5, "big", 1)],
        Ranking(collapse=0.95),
        vectors,
    )
    assert [(r.candidate.vec_id, [c.vec_id for c in r.near_copies]) for r in found] == [(1, [0]), (2, [])]


def test_without_likes_the_best_ranked_copy_is_shown_and_engagement_is_refused() -> None:
    vectors = _unit([1, 0], [1, 0.01])
    empty = Levels(GroupStats.from_groups([], {}))
    found = _rank(
        [_candidate(0, 0.9, "a", None), _candidate(1, 0.8, "a", None)], Ranking(collapse=0.95), vectors, empty
    )
    assert [r.candidate.vec_id for r in found] == [0]
    with pytest.raises(RetrievalError, match="no likes"):
        _rank([_candidate(0, 0.9, "a", None)], Ranking("engagement"), levels=empty)


def test_blend_factors_are_bounded_and_decay_halves_per_half_life() -> None:
    candidates = [_candidate(0, 0.9, "big", 1, day=31), _candidate(1, 0.9, "small", 100_000, day=1)]
    found = _rank(candidates, Ranking("blend", half_life_days=30))
    by_id = {r.candidate.vec_id: r.factors for r in found}
    assert 0.8 <= by_id[0]["engagement"] < 1 < by_id[1]["engagement"] <= 1.2
    assert by_id[0]["decay"] == 1.0 and by_id[1]["decay"] == pytest.approx(0.5)
    for f, c in zip((by_id[0], by_id[1]), candidates):
        assert f["blended"] == pytest.approx(c.score * f["engagement"] * f["decay"])
    assert [r.candidate.vec_id for r in found] == [0, 1]


def test_recent_puts_the_newest_first() -> None:
    found = _rank([_candidate(i, 0.9 - i / 10, "a", 1, day=d) for i, d in enumerate((3, 9, 5))], Ranking("recent"))
    assert [r.candidate.vec_id for r in found] == [1, 2, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"order": "likes"}, "unknown rank"),
        ({"collapse": 1.5}, "cosine"),
        ({"order": "relevance", "half_life_days": 30}, "half-life"),
    ],
)
def test_bad_rankings_are_one_line_errors(kwargs, message) -> None:
    with pytest.raises(RetrievalError, match=message):
        Ranking(**kwargs)


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory: pytest.TempPathFactory, minilm) -> Path:
    """300 real labelled tweets (with likes) embedded with MiniLM."""
    from retrieval.pipeline.build import build_index

    folder = tmp_path_factory.mktemp("ranking")
    pq.write_table(pq.read_table(LABELLED).slice(0, 300), folder / "labelled.parquet")
    build_index(folder / "labelled.parquet", folder / "index", embedder=minilm, progress=False)
    return folder / "index"


@pytest.fixture(scope="module")
def copies_searcher(tmp_path_factory: pytest.TempPathFactory, minilm) -> Searcher:
    """Every real behaviour tweet whose text occurs more than once (61 texts, 127 tweets), plus
    the first 200 tweets, embedded with MiniLM."""
    import duckdb

    from retrieval.pipeline.build import build_index

    folder = tmp_path_factory.mktemp("copies")
    duckdb.sql(
        f"SELECT * FROM read_parquet('{BEHAVIOUR}') QUALIFY count(*) OVER (PARTITION BY content) > 1"
        f" OR row_number() OVER () <= 200"
    ).write_parquet(str(folder / "copies.parquet"))
    build_index(folder / "copies.parquet", folder / "index", embedder=minilm, progress=False)
    return Searcher.open(folder / "index", embedder=minilm)


@pytest.fixture(scope="module")
def labelled_searcher(labelled_index: Path, minilm) -> Searcher:
    return Searcher.open(labelled_index, embedder=minilm)


def test_collapsed_page_has_no_two_hits_within_the_threshold(copies_searcher: Searcher) -> None:
    searcher = copies_searcher
    query = "Collaborating with remote teams is different"  # the file holds this tweet three times
    plain = searcher.similar(query, k=10)
    folded = searcher.similar(query, k=10, ranking=Ranking(collapse=0.95))
    vectors = searcher.reader.text_vectors(np.array([h.tweet["vec_id"] for h in folded]))
    sims = vectors @ vectors.T
    assert (sims[np.triu_indices(len(folded), 1)] < 0.95).all()
    assert len(folded) == 10 and [h.rank for h in folded] == list(range(1, 11))
    copies = [h for h in folded if h.near_copies]
    assert copies and len(copies[0].near_copies) >= 2
    assert set(copies[0].near_copies) <= {h.tweet["tweet_id"] for h in plain} | set(copies[0].near_copies)
    assert "near_copies" in copies[0].to_json()


def test_engagement_ranked_page_is_in_descending_relative_likes(labelled_searcher: Searcher) -> None:
    hits = labelled_searcher.similar("new features for your creative work", k=10, ranking=Ranking("engagement"))
    relative = [h.factors["relative_likes"] for h in hits]
    assert len(relative) == 10 and relative == sorted(relative, reverse=True)
    levels = labelled_searcher.levels()
    for h in hits:
        assert h.factors["relative_likes"] == pytest.approx(levels.relative(h.tweet))


def test_min_score_still_holds_after_ranking(labelled_searcher: Searcher) -> None:
    ranking = Ranking("engagement", collapse=0.95)
    hits = labelled_searcher.similar("design tips", k=20, min_score=0.3, ranking=ranking)
    assert hits and all(h.score >= 0.3 for h in hits)


def test_dedup_groups_hold_every_verbatim_duplicate(copies_searcher: Searcher, tmp_path: Path) -> None:
    searcher = copies_searcher
    found = find_duplicates(searcher, 0.95, progress=False)
    copies = searcher.reader.verbatim_copies()
    assert found.verbatim_texts == len(copies) == 61
    assert found.verbatim_in_one_group == found.verbatim_texts
    members = found.members.to_pylist()
    group_of = {r["vec_id"]: r["group"] for r in members}
    for ids in copies:
        assert len({group_of[i] for i in ids}) == 1
    assert sum(r["best"] for r in members) == found.groups
    assert found.removable == found.in_groups - found.groups
    written = write_members(found, tmp_path / "groups.csv")
    assert pacsv.read_csv(written).num_rows == found.in_groups
    with pytest.raises(RetrievalError, match=".parquet or .csv"):
        write_members(found, tmp_path / "groups.txt")


def test_cli_similar_collapse_rank_and_dedup(labelled_index: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["similar", "creative work", "--index", str(labelled_index), "-k", "5"]
    shown = runner.invoke(cli, [*base, "--rank", "blend", "--half-life", "180d"])
    assert shown.exit_code == 0, shown.output
    assert "factors" in shown.output
    bad = runner.invoke(cli, [*base, "--half-life", "180d"])
    assert bad.exit_code == 2 and "--rank blend" in bad.output
    bad = runner.invoke(cli, [*base, "--rank", "blend", "--half-life", "soon"])
    assert bad.exit_code == 2 and "180d" in bad.output
    out = tmp_path / "groups.parquet"
    done = runner.invoke(cli, ["dedup", "--index", str(labelled_index), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "groups hold" in done.output and "verbatim duplicates" in done.output
    assert pq.read_table(out).column_names[:3] == ["group", "size", "vec_id"]


def test_a_folded_relevant_tweet_counts_for_the_hit_that_holds_it() -> None:
    from retrieval.evaluation.retrieval import _metrics

    mrr, recall, ndcg = _metrics([{5}, {1, 2}, {9}], {2, 3})
    assert (mrr, recall) == (0.5, 0.5)
    assert ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_a_large_pool_groups_like_a_small_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.index import faiss_ops

    rng = np.random.default_rng(0)
    base = _unit(*rng.standard_normal((40, 16)).tolist())
    vectors = np.vstack([base, _unit(*(base[:20] + 0.05 * rng.standard_normal((20, 16))).tolist())])
    small = near_copy_groups(vectors, 0.95)
    monkeypatch.setattr(faiss_ops, "SMALL_POOL", 10)
    assert (near_copy_groups(vectors, 0.95) == small).all()
    assert len(set(small.tolist())) < len(vectors)


@pytest.fixture(scope="module")
def deduped(copies_searcher: Searcher, minilm) -> tuple[Searcher, object]:
    """The same tweets built with --dedup 0.95: one vector per near-copy group."""
    from retrieval.pipeline.build import build_index

    source = copies_searcher.reader.path.parent / "copies.parquet"
    out = copies_searcher.reader.path.parent / "deduped"
    report = build_index(source, out, embedder=minilm, progress=False, dedup=0.95)
    return Searcher.open(out, embedder=minilm), report


def test_a_deduped_build_keeps_one_vector_per_group_and_every_row(copies_searcher: Searcher, deduped) -> None:
    from retrieval.index.verify import verify

    searcher, report = deduped
    full = find_duplicates(copies_searcher, 0.95, progress=False)
    assert report.near_copies == full.removable > 0
    assert "near-copies kept as rows" in report.summary()
    assert searcher.reader.sets["text"].ntotal == copies_searcher.reader.sets["text"].ntotal - full.removable
    assert searcher.reader.stats()["rows"] == copies_searcher.reader.stats()["rows"]
    again = find_duplicates(searcher, 0.95, progress=False)
    assert (again.groups, again.in_groups, again.verbatim_in_one_group) == (full.groups, full.in_groups, 61)
    assert verify(searcher.reader.path) == []


def test_a_deduped_index_shows_the_left_out_rows_as_near_copies(copies_searcher: Searcher, deduped) -> None:
    searcher, _ = deduped
    query = "Collaborating with remote teams is different"
    ranking = Ranking(collapse=0.95)
    (before, *_), (after, *_) = (s.similar(query, k=5, ranking=ranking) for s in (copies_searcher, searcher))
    assert {before.tweet["tweet_id"], *before.near_copies} == {after.tweet["tweet_id"], *after.near_copies}
    assert len(after.near_copies) == 2
