"""Evaluation: search quality against exact search, and likes prediction against baselines."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import spearmanr

from retrieval import index as fx
from retrieval.errors import RetrievalError
from retrieval.predict import ArrayHistory, IndexHistory, LikesPrediction, PredictConfig, Query, predict_likes
from retrieval.reader import IndexReader

log = logging.getLogger(__name__)


def _timed_ms(fn: Any, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def eval_search(reader: IndexReader, *, nprobe: int | None = None, single_queries: int = 200) -> dict[str, Any]:
    """Recall of the index against exact search over the same vectors, with latency and memory.

    The queries are the sample of indexed vectors whose exact top-10 was stored at build
    time (and kept exact through every `index add`), so no model is needed here.
    """
    queries = np.load(reader.path / "eval" / "queries.npy")
    truth = np.load(reader.path / "eval" / "truth_ids.npy")
    nprobe = nprobe or reader.nprobe
    k = min(10, truth.shape[1])
    _, found = fx.search(reader.shards, queries, k, nprobe=nprobe)
    batched_ms = _timed_ms(lambda: fx.search(reader.shards, queries, k, nprobe=nprobe), 3) / len(queries)
    few = queries[:single_queries]
    single_ms = _timed_ms(lambda: [fx.search(reader.shards, q[None], k, nprobe=nprobe) for q in few], 1) / len(few)
    vectors = sum(s.index.ntotal for s in reader.shards)
    return {
        "index": str(reader.path),
        "factory": reader.manifest["factory"],
        "shards": len(reader.shards),
        "vectors": int(vectors),
        "queries": int(len(queries)),
        "nprobe": int(nprobe),
        "nlist": reader.nlist,
        "recall_at_1": fx.recall_at_k(found[:, :1], truth[:, :1], 1),
        "recall_at_10": fx.recall_at_k(found, truth, k),
        "ms_per_query": round(single_ms, 4),
        "ms_per_query_batched": round(batched_ms, 4),
        "bytes_per_vector": reader.manifest["bytes_per_vector"],
        "bytes_per_vector_flat": 4 * reader.embedder["dim"],
    }


LIKES_METRICS = ("rmse_log1p", "rmse_raw", "mae_log1p", "spearman", "coverage_80")
BASELINES = ("global_median", "account_median", "gbm")


@dataclass(frozen=True)
class Estimates:
    """Point estimates and interval bounds on log1p(likes), one per scored tweet."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def stack(cls, parts: Sequence[Estimates]) -> Estimates:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("point", "low", "high")))


def likes_metrics(y: np.ndarray, found: Estimates) -> dict[str, float | None]:
    """RMSE and MAE on log1p(likes), RMSE on raw likes, Spearman, and 80% interval coverage."""
    assert y.shape == found.point.shape == found.low.shape == found.high.shape
    error = found.point - y
    rho = spearmanr(found.point, y).statistic if np.ptp(found.point) > 0 else float("nan")
    return {
        "rmse_log1p": round(float(np.sqrt(np.mean(error**2))), 4),
        "rmse_raw": round(float(np.sqrt(np.mean((np.expm1(found.point) - np.expm1(y)) ** 2))), 1),
        "mae_log1p": round(float(np.mean(np.abs(error))), 4),
        "spearman": None if math.isnan(rho) else round(float(rho), 4),
        "coverage_80": round(float(np.mean((y >= found.low) & (y <= found.high))), 4),
    }


def _from_predictions(predictions: Sequence[LikesPrediction]) -> Estimates:
    return Estimates(
        np.array([p.log_likes for p in predictions]),
        np.array([p.log_low for p in predictions]),
        np.array([p.log_high for p in predictions]),
    )


def _median_baselines(history: ArrayHistory, queries: Sequence[Query]) -> dict[str, Estimates]:
    """Global median, and the account's median (else its company's, else the global one), each
    with the 10th-90th percentile of the same likes as its interval; same time rule as the kNN."""
    rows: dict[str, list[np.ndarray]] = {"global_median": [], "account_median": []}
    for query in queries:
        seen = history.seen(query.date)
        everyone = history.values[seen]
        user = (query.username or "").strip().lower()
        company = (query.company or "").strip().lower() or history.account_company.get(user)
        group = everyone
        for codes, names, name in (
            (history.account_codes, history.account_names, user),
            (history.company_codes, history.company_names, company),
        ):
            if name in names and (mine := history.values[seen & (codes == names[name])]).size:
                group = mine
                break
        rows["global_median"].append(np.quantile(everyone, [0.5, 0.1, 0.9]))
        rows["account_median"].append(np.quantile(group, [0.5, 0.1, 0.9]))
    return {name: Estimates(*np.array(r).T) for name, r in rows.items()}


def _gbm_features(
    history: ArrayHistory, vectors: np.ndarray, queries: Sequence[Query], own: np.ndarray | None
) -> np.ndarray:
    """Embedding + shrunk account and company means (leave-one-out for training rows) + time."""
    config = PredictConfig()
    extra = []
    for i, query in enumerate(queries):
        stats = history.stats(None if own is not None else query.date)
        prior = stats.prior(query.username, query.company, stats.mean, config, None if own is None else own[i])
        when = query.date
        time = [when.year, when.month, when.weekday(), when.hour] if when else [np.nan] * 4
        extra.append([prior.value, math.log1p(prior.account_tweets), math.log1p(prior.company_tweets), *time])
    return np.hstack([vectors, np.array(extra, dtype=np.float32)])


def _gbm_baseline(history: ArrayHistory, train: np.ndarray, vectors: np.ndarray, queries: Sequence[Query]) -> Estimates:
    """HistGradientBoosting on embeddings + account + time; quantile fits give its interval.

    It trains once on every visible row with text, so unlike the kNN it does not redo its
    fit for each dated query (which can only flatter it).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    rows = history.vector_rows[train]
    train_queries = [_query_of(history.table, int(r)) for r in rows]
    x = _gbm_features(history, history.vectors[train], train_queries, history.values[rows])
    x_test = _gbm_features(history, vectors, queries, None)
    out = []
    for loss, q in (("squared_error", None), ("quantile", 0.1), ("quantile", 0.9)):
        model = HistGradientBoostingRegressor(loss=loss, quantile=q, max_iter=200, learning_rate=0.05, random_state=0)
        out.append(model.fit(x, history.values[rows]).predict(x_test))
    return Estimates(out[0], np.minimum(out[1], out[0]), np.maximum(out[2], out[0]))


def _query_of(table: pa.Table, row: int) -> Query:
    values = {name: table.column(name)[row].as_py() for name in ("username", "company", "date")}
    return Query(values["username"], values["company"], values["date"])


def _scorable(table: pa.Table) -> pa.Table:
    """Rows a likes evaluation can score: with text and likes."""
    keep = pc.and_(pc.is_valid(table.column("content")), pc.is_valid(table.column("likes")))
    if (dropped := table.num_rows - pc.sum(keep).as_py()) > 0:
        log.warning("%d rows without text or likes are not scored", dropped)
    return table.filter(keep)


def _report(
    y: np.ndarray, knn: Estimates, baselines: dict[str, list[Estimates]], info: dict[str, Any]
) -> dict[str, Any]:
    return {
        **info,
        **likes_metrics(y, knn),
        "baselines": {name: likes_metrics(y, Estimates.stack(parts)) for name, parts in baselines.items()},
    }


def _checked(history: ArrayHistory | IndexHistory, queries: list[Query]) -> np.ndarray:
    """Which queries have any past to predict from (a dated tweet older than all history has none)."""
    ok = []
    for query in queries:
        try:
            history.check(query)
            ok.append(True)
        except RetrievalError:
            ok.append(False)
    return np.array(ok, dtype=bool)


def cross_validate_likes(
    table: pa.Table,
    vectors: np.ndarray,
    *,
    extra: pa.Table | None = None,
    folds: int = 5,
    seed: int = 0,
    config: PredictConfig | None = None,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """k-fold CV inside one labelled file: a tweet never sees its own fold, nor (when dated) later tweets.

    `vectors` has one row per row of `table` with text. `extra` rows (likes without text, e.g.
    adobe_content_test_time) join every fold's history as metadata-only rows: priors, not neighbours.
    """
    config = config or PredictConfig()
    has_text = np.asarray(table.column("content").is_valid(), dtype=bool)
    keep = np.asarray(table.column("likes").is_valid(), dtype=bool)[has_text]
    table = _scorable(table)
    vectors = np.asarray(vectors, dtype=np.float32)[keep]
    if table.num_rows < folds:
        raise RetrievalError(f"{table.num_rows} tweets with text and likes: too few for {folds}-fold CV")
    n = table.num_rows
    reference = table
    if extra is not None:
        reference = pa.concat_tables(
            [
                table,
                extra.set_column(
                    extra.schema.get_field_index("content"), "content", pa.nulls(extra.num_rows, pa.string())
                ).filter(pc.is_valid(extra["likes"])),
            ]
        )
    history = ArrayHistory(reference, vectors)
    queries = [_query_of(table, i) for i in range(n)]
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    y_parts, knn, found = [], [], {name: [] for name in baselines}
    skipped = 0
    for f in range(folds):
        visible = np.ones(history.table.num_rows, bool)
        visible[:n] = fold_of != f
        fold = history.restrict(visible)
        test = np.flatnonzero(fold_of == f)
        fold_queries = [queries[i] for i in test]
        ok = _checked(fold, fold_queries)
        skipped += int((~ok).sum())
        test, fold_queries = test[ok], [q for q, good in zip(fold_queries, ok) if good]
        y_parts.append(history.values[test])
        knn.append(_from_predictions(predict_likes(fold, vectors[test], fold_queries, config)))
        _add_baselines(found, fold, visible[history.vector_rows], vectors[test], fold_queries)
        log.info("fold %d/%d: %d tweets", f + 1, folds, len(test))
    info = {
        "form": "cross-validation",
        "folds": folds,
        "seed": seed,
        "tweets": int(sum(map(len, y_parts))),
        "skipped_no_history": skipped,
        "extra_rows": history.table.num_rows - n,
        "config": asdict(config),
    }
    return _report(np.concatenate(y_parts), Estimates.stack(knn), found, info)


def _add_baselines(
    found: dict[str, list[Estimates]],
    history: ArrayHistory,
    train: np.ndarray,
    vectors: np.ndarray,
    queries: Sequence[Query],
) -> None:
    if {"global_median", "account_median"} & set(found):
        medians = _median_baselines(history, queries)
        for name in medians.keys() & found.keys():
            found[name].append(medians[name])
    if "gbm" in found:
        found["gbm"].append(_gbm_baseline(history, train, vectors, queries))


def evaluate_likes_on_index(
    reader: IndexReader,
    table: pa.Table,
    vectors: np.ndarray,
    *,
    config: PredictConfig | None = None,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """Predict every tweet of a test file from an index (the reference tweets) and score it.

    The kNN runs through FAISS and DuckDB exactly as `predict` does; the baselines see the
    same rows (read back from the index, vectors reconstructed from its shards).
    """
    config = config or PredictConfig()
    has_text = np.asarray(table.column("content").is_valid(), dtype=bool)
    keep = np.asarray(table.column("likes").is_valid(), dtype=bool)[has_text]
    table = _scorable(table)
    vectors = np.asarray(vectors, dtype=np.float32)[keep]
    history = IndexHistory(reader)
    queries = [_query_of(table, i) for i in range(table.num_rows)]
    ok = _checked(history, queries)
    queries = [q for q, good in zip(queries, ok) if good]
    vectors = vectors[ok]
    y = np.log1p(table.column("likes").to_numpy(zero_copy_only=False)[ok].astype(np.float64))
    knn = _from_predictions(predict_likes(history, vectors, queries, config))
    found: dict[str, list[Estimates]] = {name: [] for name in baselines}
    if found:
        arrays = _index_arrays(reader)
        _add_baselines(found, arrays, np.ones(len(arrays.vector_rows), bool), vectors, queries)
    info = {
        "form": "index",
        "index": str(reader.path),
        "tweets": len(queries),
        "skipped_no_history": int((~ok).sum()),
        "config": asdict(config),
    }
    return _report(y, knn, found, info)


def _index_arrays(reader: IndexReader) -> ArrayHistory:
    """The index's rows with likes as an ArrayHistory, vectors reconstructed from the shards."""
    table = reader.con.execute(
        "SELECT tweet_id, date, username, company, likes, CASE WHEN has_vector THEN content END AS content, vec_id"
        " FROM tweets WHERE likes IS NOT NULL ORDER BY vec_id"
    ).fetch_arrow_table()
    ids = table.column("vec_id").to_numpy()[np.asarray(table.column("content").is_valid(), dtype=bool)]
    shards = sorted(reader.shards, key=lambda s: s.first_id)
    firsts = np.array([s.first_id for s in shards])
    owner = np.searchsorted(firsts, ids, side="right") - 1
    vectors = np.zeros((len(ids), reader.embedder["dim"]), dtype=np.float32)
    for number, shard in enumerate(shards):
        rows = np.flatnonzero(owner == number)
        if len(rows) == 0:
            continue
        try:
            stored = shard.index.reconstruct_n(0, shard.index.ntotal)
        except RuntimeError as e:
            raise RetrievalError(f"{reader.path}: cannot read vectors back for the gbm baseline ({e})") from None
        vectors[rows] = stored[ids[rows] - shard.first_id]
    return ArrayHistory(table, vectors)
