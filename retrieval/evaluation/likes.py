"""Likes prediction against baselines: cross-validation on a file, or an index predicting a test file."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import spearmanr

from retrieval.embed.text import Embedder
from retrieval.errors import RetrievalError
from retrieval.index.reader import IndexReader
from retrieval.io.tweets import load_tweets
from retrieval.query.levels import key
from retrieval.tasks.likes.history import ArrayHistory, IndexHistory, queries_of
from retrieval.tasks.likes.predict import (
    LikesPrediction,
    PredictConfig,
    Query,
    predict_likes,
)

log = logging.getLogger(__name__)


LIKES_METRICS = ("rmse_log1p", "rmse_raw", "mae_log1p", "spearman", "coverage_80")
BASELINES = ("global_median", "account_median", "gbm")
GBM_COMPONENTS = 16
"""The gbm baseline sees the embeddings through PCA: with 1,600 training tweets more
dimensions add noise (CV RMSE 1.061 with 16 components, 1.068 with 64, 1.094 with all 768)."""


@dataclass(frozen=True)
class Estimates:
    """Point estimates and interval bounds on log1p(likes), one per scored tweet."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def stack(cls, parts: Sequence[Estimates]) -> Estimates:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("point", "low", "high")))

    @classmethod
    def of(cls, predictions: Sequence[LikesPrediction]) -> Estimates:
        return cls(*(np.array([getattr(p, f) for p in predictions]) for f in ("log_likes", "log_low", "log_high")))


def likes_metrics(y: np.ndarray, found: Estimates) -> dict[str, float | None]:
    """RMSE and MAE on log1p(likes), RMSE on raw likes, Spearman, and 80% interval coverage."""
    if not y.shape == found.point.shape == found.low.shape == found.high.shape:
        raise ValueError(f"{y.shape[0]} targets for {found.point.shape[0]} estimates")
    error = found.point - y
    rho = spearmanr(found.point, y).statistic if np.ptp(found.point) > 0 else float("nan")
    return {
        "rmse_log1p": round(float(np.sqrt(np.mean(error**2))), 4),
        "rmse_raw": round(float(np.sqrt(np.mean((np.expm1(found.point) - np.expm1(y)) ** 2))), 1),
        "mae_log1p": round(float(np.mean(np.abs(error))), 4),
        "spearman": None if math.isnan(rho) else round(float(rho), 4),
        "coverage_80": round(float(np.mean((y >= found.low) & (y <= found.high))), 4),
    }


def _median_baselines(history: ArrayHistory, queries: Sequence[Query]) -> dict[str, Estimates]:
    """Global median, and the account's median (else its company's, else the global one), each
    with the 10th-90th percentile of the same likes as its interval; same time rule as the kNN."""
    rows: dict[str, list[np.ndarray]] = {"global_median": [], "account_median": []}
    for query in queries:
        seen = history.seen(query.date)
        group = everyone = history.values[seen]
        user = key(query.username)
        company = key(query.company) or history.account_company.get(user or "")
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
        prior = stats.prior(query.username, query.company, stats.mean, config.shrink, None if own is None else own[i])
        when = query.date
        time = [when.year, when.month, when.weekday(), when.hour] if when else [np.nan] * 4
        extra.append([prior.value, math.log1p(prior.account_tweets), math.log1p(prior.company_tweets), *time])
    return np.hstack([vectors, np.array(extra, dtype=np.float32)])


def _gbm_baseline(history: ArrayHistory, train: np.ndarray, vectors: np.ndarray, queries: Sequence[Query]) -> Estimates:
    """HistGradientBoosting on embeddings + account + time; quantile fits give its interval.

    It trains once on every visible row with text, so unlike the kNN it does not redo its
    fit for each dated query (which can only flatter it).
    """
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingRegressor

    rows = history.vector_rows[train]
    pca = PCA(n_components=min(GBM_COMPONENTS, *history.vectors[train].shape), random_state=0)
    x = _gbm_features(
        history, pca.fit_transform(history.vectors[train]), [history.queries[r] for r in rows], history.values[rows]
    )
    x_test = _gbm_features(history, pca.transform(vectors), queries, None)
    out = []
    for loss, q in (("squared_error", None), ("quantile", 0.1), ("quantile", 0.9)):
        model = HistGradientBoostingRegressor(loss=loss, quantile=q, max_iter=200, learning_rate=0.05, random_state=0)
        out.append(model.fit(x, history.values[rows]).predict(x_test))
    return Estimates(out[0], np.minimum(out[1], out[0]), np.maximum(out[2], out[0]))


def _add_baselines(
    found: dict[str, list[Estimates]],
    history: ArrayHistory,
    train: np.ndarray,
    vectors: np.ndarray,
    queries: list[Query],
) -> None:
    medians = _median_baselines(history, queries) if {"global_median", "account_median"} & set(found) else {}
    for name in medians.keys() & found.keys():
        found[name].append(medians[name])
    if "gbm" in found:
        found["gbm"].append(_gbm_baseline(history, train, vectors, queries))


def scorable(table: pa.Table, source: str = "the input") -> pa.Table:
    """The rows a likes evaluation can score, with text and likes (checked before embedding)."""
    keep = pc.and_(pc.is_valid(table.column("content")), pc.is_valid(table.column("likes")))
    if not pc.any(keep).as_py():
        raise RetrievalError(f"{source}: no rows with both text and likes to score")
    if dropped := table.num_rows - pc.sum(keep).as_py():
        log.warning("%d rows without text or likes are not scored", dropped)
    return table.filter(keep)


def _scorable(table: pa.Table, vectors: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """`scorable` with the vectors (one per row with text) kept in step."""
    likes = np.asarray(table.column("likes").is_valid(), dtype=bool)
    with_text = np.asarray(table.column("content").is_valid(), dtype=bool)
    return scorable(table), np.asarray(vectors, dtype=np.float32)[likes[with_text]]


def _with_history(history: ArrayHistory | IndexHistory, queries: list[Query]) -> np.ndarray:
    """Which queries have any past to predict from (a dated tweet older than all history has none)."""
    ok = np.ones(len(queries), dtype=bool)
    for i, query in enumerate(queries):
        try:
            history.check(query)
        except RetrievalError:
            ok[i] = False
    return ok


def _report(y: np.ndarray, knn: Estimates, baselines: dict[str, list[Estimates]], **info: Any) -> dict[str, Any]:
    if len(y) == 0:
        raise RetrievalError("no tweet has earlier history to predict from (all are dated before the references)")
    metrics = {name: likes_metrics(y, Estimates.stack(parts)) for name, parts in baselines.items()}
    return {**info, "tweets": len(y), **likes_metrics(y, knn), "baselines": metrics}


def cross_validate_likes(
    table: pa.Table,
    vectors: np.ndarray,
    *,
    extra: pa.Table | None = None,
    folds: int = 5,
    seed: int = 0,
    split: str = "tweets",
    config: PredictConfig | None = None,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """k-fold CV inside one labelled file: a tweet never sees its own fold, nor (when dated) later tweets.

    `vectors` has one row per row of `table` with text. `extra` rows (likes; their text is
    ignored) join every fold's history as metadata-only rows: priors, never neighbours.
    `split="accounts"` puts all tweets of an account in one fold, so each is predicted as a
    brand the history never saw (its company's level, or the level of tweets like it): the
    new-account regime, which tweet folds mix in with the known accounts. Extra rows of a
    held-out account are hidden with it.
    """
    config = config or PredictConfig()
    table, vectors = _scorable(table, vectors)
    n = table.num_rows
    if n < folds:
        raise RetrievalError(f"{n} tweets with text and likes: too few for {folds}-fold CV")
    if extra is not None:
        no_text = extra.set_column(
            extra.schema.get_field_index("content"), "content", pa.nulls(len(extra), pa.string())
        )
        table = pa.concat_tables([table, no_text])
    history = ArrayHistory(table, vectors)
    fold_of = _folds(history, n, folds, seed, split)
    y, knn, found = [], [], {name: [] for name in baselines}
    skipped = 0
    for f in range(folds):
        visible = fold_of != f
        fold = history.restrict(visible)
        test = np.flatnonzero(fold_of[:n] == f)
        ok = _with_history(fold, [history.queries[i] for i in test])
        skipped += int((~ok).sum())
        test = test[ok]
        queries = [history.queries[i] for i in test]
        y.append(history.values[test])
        knn.append(Estimates.of(predict_likes(fold, vectors[test], queries, config)))
        _add_baselines(found, fold, visible[history.vector_rows], vectors[test], queries)
        log.info("fold %d/%d: %d tweets", f + 1, folds, len(test))
    return _report(
        np.concatenate(y),
        Estimates.stack(knn),
        found,
        form="cross-validation",
        folds=folds,
        split=split,
        seed=seed,
        skipped_no_history=skipped,
        extra_rows=len(history.values) - n,
        config=asdict(config),
    )


SPLITS = ("tweets", "accounts")


def _folds(history: ArrayHistory, n: int, folds: int, seed: int, split: str) -> np.ndarray:
    """The fold of each history row: the first n (the scored tweets) by tweet or by account (a
    tweet without an account by itself); extra rows share their account's fold when folds are by
    account, and are always visible otherwise (-1)."""
    if split == "tweets":
        extra = np.full(len(history.values) - n, -1)
        return np.concatenate([np.random.default_rng(seed).permutation(n) % folds, extra])
    if split != "accounts":
        raise RetrievalError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    accounts = sorted({u for u in history.usernames[:n] if u is not None})
    if len(accounts) < folds:
        raise RetrievalError(f"{len(accounts)} accounts: too few for {folds} folds by account")
    rng = np.random.default_rng(seed)
    fold_of_account = dict(zip(accounts, rng.permutation(len(accounts)) % folds))
    fold_of = np.array([fold_of_account.get(u, -1) if u is not None else -1 for u in history.usernames])
    alone = np.array([u is None for u in history.usernames[:n]], dtype=bool)
    fold_of[:n][alone] = (rng.permutation(n) % folds)[alone]
    return fold_of


def likes_cv_on_file(
    path: str | Path,
    embedder: Embedder,
    *,
    extra: str | Path | None = None,
    folds: int = 5,
    seed: int = 0,
    split: str = "tweets",
    config: PredictConfig | None = None,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """`cross_validate_likes` on a labelled file as a user gives it: its scorable rows embedded,
    `extra` a file of likes-only rows for the priors."""
    table = scorable(load_tweets(path).table, str(path))
    extra_rows = load_tweets(extra, require_text=False).table if extra else None
    vectors = embedder.encode(table.column("content").to_pylist())
    result = cross_validate_likes(
        table, vectors, extra=extra_rows, folds=folds, seed=seed, split=split, config=config, baselines=baselines
    )
    return {**result, "input": str(path)}


def likes_on_index_file(
    index: str | Path, test: str | Path, *, config: PredictConfig | None = None, baselines: Sequence[str] = BASELINES
) -> dict[str, Any]:
    """`evaluate_likes_on_index` for a test file, embedded with the index's own model."""
    from retrieval.query.search import Searcher

    table = scorable(load_tweets(test).table, str(test))
    searcher = Searcher.open(index)
    vectors = searcher.embedder.encode(table.column("content").to_pylist())
    result = evaluate_likes_on_index(searcher.reader, table, vectors, config=config, baselines=baselines)
    return {**result, "test": str(test)}


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
    table, vectors = _scorable(table, vectors)
    history = IndexHistory(reader)
    queries = queries_of(table)
    ok = _with_history(history, queries)
    queries, vectors = [q for q, good in zip(queries, ok) if good], vectors[ok]
    y = np.log1p(table.column("likes").to_numpy(zero_copy_only=False)[ok].astype(np.float64))
    knn = Estimates.of(predict_likes(history, vectors, queries, config))
    found: dict[str, list[Estimates]] = {name: [] for name in baselines}
    if found:
        arrays = _index_arrays(reader)
        _add_baselines(found, arrays, np.ones(len(arrays.vector_rows), bool), vectors, queries)
    return _report(
        y,
        knn,
        found,
        form="index",
        index=str(reader.path),
        skipped_no_history=int((~ok).sum()),
        config=asdict(config),
    )


def _index_arrays(reader: IndexReader) -> ArrayHistory:
    """The index's rows with likes as an ArrayHistory, vectors reconstructed from the shards."""
    table = reader.rows_with_likes()
    ids = table.column("vec_id").to_numpy()[np.asarray(table.column("content").is_valid(), dtype=bool)]
    return ArrayHistory(table, reader.text_vectors(ids))
