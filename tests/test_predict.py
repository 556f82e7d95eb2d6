"""Likes prediction on real labelled tweets: priors, time rule, explanation, evaluation, CLI."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from retrieval.apps.cli import cli
from retrieval.errors import RetrievalError
from retrieval.evaluation.likes import LIKES_METRICS, cross_validate_likes, evaluate_likes_on_index
from retrieval.index import store
from retrieval.index.reader import IndexReader
from retrieval.io.tweets import load_tweets
from retrieval.query.levels import GroupStats
from retrieval.tasks.likes.history import IndexHistory
from retrieval.tasks.likes.predict import (
    Found,
    PredictConfig,
    Query,
    combine,
    predict_likes,
    weighted_quantile,
)
from tests.conftest import CONTENT, LABELLED

SAMPLE = 240  # labelled tweets in the fixtures: every dated one, then undated ones
EXTRA = 1500  # likes-only rows from adobe_content_test_time


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The gbm baseline's OpenMP threads crawl when another process holds a core (CI runners).
    scikit-learn loads its OpenMP runtime on import, and only a loaded runtime can be limited."""
    import sklearn.ensemble  # noqa: F401

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def labelled() -> pa.Table:
    table = load_tweets(LABELLED).table
    dated = pc.is_valid(table.column("date"))
    undated = table.filter(pc.invert(dated))
    return pa.concat_tables([table.filter(dated), undated.slice(0, SAMPLE - pc.sum(dated).as_py())])


@pytest.fixture(scope="module")
def extra() -> pa.Table:
    return load_tweets(CONTENT, require_text=False).table.slice(0, EXTRA)


@pytest.fixture(scope="module")
def vectors(labelled: pa.Table, minilm) -> np.ndarray:
    return minilm.encode(labelled.column("content").to_pylist())


@pytest.fixture(scope="module")
def likes_index(tmp_path_factory: pytest.TempPathFactory, labelled: pa.Table, extra: pa.Table, vectors) -> Path:
    """The labelled sample with MiniLM vectors plus likes-only rows (has_vector false)."""
    out = tmp_path_factory.mktemp("likes") / "index"
    table = pa.concat_tables([labelled, extra])
    has_vector = np.asarray(table.column("content").is_valid(), dtype=bool)
    store.build(out, vectors, table, has_vector, embedder={"name": "minilm", "dim": 384})
    return out


@pytest.fixture(scope="module")
def history(likes_index: Path) -> IndexHistory:
    return IndexHistory(IndexReader(likes_index))


def _stats(groups: list[tuple[str, str, int, float, float]]) -> GroupStats:
    return GroupStats.from_groups(groups, {u: c for u, c, *_ in groups})


def test_weighted_quantile() -> None:
    values = np.array([3.0, 1.0, 2.0])
    assert weighted_quantile(values, np.ones(3), [0.5])[0] == pytest.approx(2.0)
    assert weighted_quantile(values, np.array([0.0, 0.0, 1.0]), [0.1, 0.9]).tolist() == [2.0, 2.0]


def test_prior_falls_back_from_account_to_company_to_base() -> None:
    stats = _stats([("cnn", "cnn", 100, 700.0, 4900.0), ("tiny", "acme", 4, 4.0, 4.0), ("other", "acme", 6, 12.0, 24)])
    config = PredictConfig(account_shrink=1.0, company_shrink=1.0)
    cnn = stats.prior("CNN", None, stats.mean, config.shrink)
    assert cnn.source == "account" and cnn.company == "cnn" and cnn.value == pytest.approx(7.0, abs=0.01)
    newcomer = stats.prior("brand_new", "Acme", 5.0, config.shrink)
    assert newcomer.source == "company" and newcomer.account_tweets == 0
    assert newcomer.value == pytest.approx((4 + 12 + 5.0) / (10 + 1))  # acme's sum, one pseudo-tweet at base
    tiny = stats.prior("tiny", None, 5.0, config.shrink, leave_out=1.0)
    assert tiny.account_tweets == 3 and tiny.company_tweets == 9
    nobody = stats.prior("brand_new", None, 5.0, config.shrink)
    assert nobody.source == "base" and nobody.value == 5.0


def test_a_known_account_is_not_drowned_by_a_big_account() -> None:
    """Neighbours from CNN are measured against CNN's level: they move a small account little."""
    stats = _stats([("cnn", "cnn", 200, 1400.0, 9800.0), ("shop", "shop", 20, 20.0, 30.0)])
    found = Found(
        ids=np.arange(5),
        scores=np.array([0.9, 0.85, 0.8, 0.7, 0.6]),
        values=np.array([7.2, 6.9, 7.1, 1.1, 0.9]),
        usernames=["CNN", "CNN", "CNN", "shop", "shop"],
        companies=["cnn", "cnn", "cnn", "shop", "shop"],
    )
    p = combine(found, stats, Query("shop"), PredictConfig())
    assert abs(p.log_likes - 1.0) < 0.3
    assert sum(n.weight for n in p.neighbours) == pytest.approx(1.0)
    assert p.log_low <= p.log_likes <= p.log_high
    assert [n.weight for n in p.neighbours] == sorted((n.weight for n in p.neighbours), reverse=True)


def test_no_future_tweets_in_neighbours_or_priors(
    history: IndexHistory, labelled: pa.Table, extra: pa.Table, vectors
) -> None:
    dates = [d for d in labelled.column("date").to_pylist() if d]
    when = sorted(dates)[len(dates) // 2]
    query = Query("CNN", date=when)
    p = predict_likes(history, vectors[:1], [query])[0]
    assert p.neighbours and all(n.tweet["date"] is not None and n.tweet["date"] < when for n in p.neighbours)
    rows = pa.concat_tables([labelled, extra])  # what the index was built from
    dated = [d for d, likes in zip(rows["date"].to_pylist(), rows["likes"].to_pylist()) if likes is not None and d]
    before = sum(d < when for d in dated)
    assert history.stats(when).count == before < history.stats(None).count


def test_likes_only_rows_feed_priors_but_are_never_neighbours(
    history: IndexHistory, extra: pa.Table, labelled: pa.Table, vectors
) -> None:
    known = {u.lower() for u in labelled.column("username").to_pylist()}
    only_extra = next(u for u in extra.column("username").to_pylist() if u.lower() not in known)
    p = predict_likes(history, vectors[:1], [Query(only_extra)])[0]
    count = sum(u == only_extra for u in extra.column("username").to_pylist())
    assert p.prior.source == "account" and p.prior.account_tweets == count
    assert all(n.tweet["has_vector"] for n in p.neighbours)
    assert sum(n.weight for n in p.neighbours) == pytest.approx(1.0)


def test_unknown_account_falls_back_to_company_then_base(history: IndexHistory, vectors) -> None:
    by_company, alone = predict_likes(history, vectors[:2], [Query("nobody_at_all", "CNN"), Query("nobody_at_all")])
    assert by_company.prior.source == "company" and by_company.prior.company_tweets > 0
    assert alone.prior.source == "base" and 0 < alone.log_likes < 15
    # a new account's interval holds the spread of its company's accounts, which residuals do not
    z, stats = NormalDist().inv_cdf(0.9), history.stats(None)
    assert stats.account_spread("CNN") > 0.1
    assert by_company.log_high - by_company.log_likes >= z * stats.account_spread("CNN") - 1e-9
    assert alone.log_high - alone.log_likes >= z * stats.account_spread(None) - 1e-9


def test_account_spread_is_within_the_company_else_among_all_accounts() -> None:
    from retrieval.query.levels import GroupStats

    accounts = {"a": (2, 2.0), "b": (1, 3.0), "c": (4, 20.0)}  # means 1, 3 and 5
    stats = GroupStats(accounts, {}, {"a": "x", "b": "x", "c": "y"}, 7, 25.0, 0.0)
    assert stats.account_spread("X") == pytest.approx(1.0)  # case-insensitive, as companies match
    assert stats.account_spread("y") == pytest.approx(math.sqrt(8 / 3))  # one account: all of them
    assert stats.account_spread(None) == pytest.approx(math.sqrt(8 / 3))


def test_bad_input_is_a_retrieval_error(
    history: IndexHistory, tmp_path: Path, labelled: pa.Table, vectors: np.ndarray
) -> None:
    with pytest.raises(RetrievalError, match="no tweets with likes before 2001-01-01"):
        predict_likes(history, vectors[:1], [Query("CNN", date=dt.datetime(2001, 1, 1))])
    no_likes = labelled.set_column(labelled.schema.get_field_index("likes"), "likes", pa.nulls(SAMPLE, pa.int64()))
    store.build(tmp_path / "nl", vectors, no_likes, np.ones(SAMPLE, bool), embedder={"name": "minilm", "dim": 384})
    with pytest.raises(RetrievalError, match="holds no tweets with likes"):
        IndexHistory(IndexReader(tmp_path / "nl"))
    with pytest.raises(RetrievalError, match="temperature"):
        PredictConfig(temperature=0)


def test_cross_validation_beats_the_global_median(labelled: pa.Table, extra: pa.Table, vectors) -> None:
    plain = cross_validate_likes(labelled, vectors, baselines=("global_median", "account_median"))
    assert plain["tweets"] + plain["skipped_no_history"] == SAMPLE
    assert plain["rmse_log1p"] < 0.7 * plain["baselines"]["global_median"]["rmse_log1p"]
    assert 0.6 <= plain["coverage_80"] <= 0.95 and plain["spearman"] > 0.5
    with_extra = cross_validate_likes(labelled, vectors, extra=extra, baselines=())
    assert with_extra["extra_rows"] == EXTRA and set(with_extra) >= set(LIKES_METRICS)
    new = cross_validate_likes(labelled, vectors, split="accounts", baselines=("account_median",))
    assert new["split"] == "accounts" and new["tweets"] + new["skipped_no_history"] == SAMPLE
    # a brand never seen is harder: its level is only its company's, or that of tweets like it
    assert (
        new["rmse_log1p"] > plain["rmse_log1p"]
        and new["baselines"]["account_median"]["rmse_log1p"] > (plain["baselines"]["account_median"]["rmse_log1p"])
    )
    users = labelled.column("username").to_pylist()
    anonymous = labelled.set_column(
        labelled.schema.get_field_index("username"), "username", pa.array([None] * 10 + users[10:], pa.string())
    )
    counted = cross_validate_likes(anonymous, vectors, split="accounts", baselines=())
    assert counted["tweets"] + counted["skipped_no_history"] == SAMPLE, "a tweet without an account is scored too"
    with pytest.raises(RetrievalError, match="split 'brands'"):
        cross_validate_likes(labelled, vectors, split="brands")


def test_index_form_scores_held_out_tweets(tmp_path: Path, labelled: pa.Table, vectors) -> None:
    out = tmp_path / "ref"
    reference, test = labelled.slice(0, 180), labelled.slice(180)
    store.build(out, vectors[:180], reference, np.ones(180, bool), embedder={"name": "minilm", "dim": 384})
    with IndexReader(out) as reader:
        result = evaluate_likes_on_index(reader, test, vectors[180:])
    assert result["tweets"] == 60 and set(result["baselines"]) == {"global_median", "account_median", "gbm"}
    assert result["rmse_log1p"] < result["baselines"]["global_median"]["rmse_log1p"]
    assert all(set(m) == set(LIKES_METRICS) for m in result["baselines"].values())


def test_cli_predict(likes_index: Path) -> None:
    runner = CliRunner()
    args = ["predict", "Breaking news tonight", "--index", str(likes_index), "--username", "CNN"]
    shown = runner.invoke(cli, [*args, "--show", "3"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("likes") and "80% interval" in lines[0] and "account CNN" in lines[1]
    assert lines[2].split()[:6] == ["weight", "score", "space", "date", "account", "likes"] and len(lines) == 7
    answer = json.loads(runner.invoke(cli, [*args, "--json", "--date", "2020-06-01"]).stdout)
    assert math.isclose(sum(n["weight"] for n in answer["neighbours"]), 1.0, abs_tol=1e-3)
    assert all(n["date"] < "2020-06-01" for n in answer["neighbours"])
    assert answer["interval_80"][0] <= answer["likes"] <= answer["interval_80"][1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "  ", "--username", "CNN"], "text is empty"),
        (["predict", "hello", "--username", "CNN", "--date", "1999-01-01"], "no tweets with likes before"),
        (["predict", "hello", "--username", "CNN", "--param", "k=0"], "k must be"),
        (["predict", "hello", "--username", "CNN", "--param", "kk=3"], "'kk': not a predictor setting; one of"),
        (["predict", "hello", "--username", "CNN", "--param", "k=many"], "k='many': not a number"),
    ],
)
def test_cli_predict_bad_input_is_one_line(likes_index: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [*args, "--index", str(likes_index)])
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]


def test_cli_eval_likes_cross_validation(tmp_path: Path, labelled: pa.Table) -> None:
    path = tmp_path / "small.parquet"
    pq.write_table(labelled.slice(100, 80), path)
    args = ["eval", "likes", "--input", str(path), "--model", "minilm", "--folds", "2"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {*LIKES_METRICS, "baselines"} and report["tweets"] + report["skipped_no_history"] == 80
    assert set(report["baselines"]) == {"global_median", "account_median", "gbm"}
    table = CliRunner().invoke(cli, [*args, "--baselines", "global_median"]).stdout.splitlines()
    assert table[1].split() == ["method", *LIKES_METRICS] and table[3].startswith("global_median")
    usage = CliRunner().invoke(cli, ["eval", "likes", "--input", str(path), "--test", str(path)])
    assert usage.exit_code == 2


def test_cli_eval_likes_on_an_index(tmp_path: Path, likes_index: Path) -> None:
    """Held-out labelled tweets (the fixture index holds the first undated ones, not these)."""
    path = tmp_path / "held_out.parquet"
    pq.write_table(pq.read_table(LABELLED).slice(1500, 40), path)
    args = ["eval", "likes", "--index", str(likes_index), "--test", str(path), "--baselines", "account_median"]
    report = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert report["form"] == "index" and report["tweets"] == 40
    assert report["coverage_80"] >= 0.5, "an 80% interval that misses most held-out tweets is wrong"
    assert list(report["baselines"]) == ["account_median"]
    no_likes = CliRunner().invoke(cli, ["eval", "likes", "--index", str(likes_index), "--test", str(CONTENT)])
    assert no_likes.exit_code == 1 and "no rows with both text and likes" in no_likes.output
