"""Evaluation: search quality against exact search, and likes prediction against baselines."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import spearmanr

from retrieval.embed.text import Embedder
from retrieval.errors import RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.index import store
from retrieval.index.reader import IndexReader
from retrieval.io.tweets import load_tweets
from retrieval.tasks.likes.predict import (
    Found,
    GroupStats,
    IndexHistory,
    LikesPrediction,
    PredictConfig,
    Query,
    key,
    predict_likes,
)

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


def eval_search(
    reader: IndexReader, *, nprobe: int | None = None, single_queries: int = 200, space: str = "text"
) -> dict[str, Any]:
    """Recall of one vector set against exact search over the same vectors, with latency and memory.

    The queries are the sample of indexed vectors whose exact top-10 was stored at build
    time (and kept exact through every `index add`), so no model is needed here.
    """
    vset = reader.vector_set(space)
    folder = reader.path / ("" if space == "text" else store.IMAGE_PREFIX) / "eval"
    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth_ids.npy")
    nprobe = nprobe or vset.nprobe
    k = min(10, truth.shape[1])
    _, found = fx.search(vset.shards, queries, k, nprobe=nprobe)
    batched_ms = _timed_ms(lambda: fx.search(vset.shards, queries, k, nprobe=nprobe), 3) / len(queries)
    few = queries[:single_queries]
    single_ms = _timed_ms(lambda: [fx.search(vset.shards, q[None], k, nprobe=nprobe) for q in few], 1) / len(few)
    return {
        "index": str(reader.path),
        "space": space,
        "factory": vset.section["factory"],
        "shards": len(vset.shards),
        "vectors": vset.ntotal,
        "queries": int(len(queries)),
        "nprobe": int(nprobe),
        "nlist": vset.nlist,
        "recall_at_1": fx.recall_at_k(found[:, :1], truth[:, :1], 1),
        "recall_at_10": fx.recall_at_k(found, truth, k),
        "ms_per_query": round(single_ms, 4),
        "ms_per_query_batched": round(batched_ms, 4),
        "bytes_per_vector": vset.section["bytes_per_vector"],
        "bytes_per_vector_flat": 4 * vset.embedder["dim"],
    }


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


class ArrayHistory:
    """Past tweets held in memory with exact kNN, so CV folds need no index of their own.

    `visible` hides rows (a fold's own tweets); rows without likes are dropped on the way in.
    """

    def __init__(self, table: pa.Table, vectors: np.ndarray) -> None:
        """`table` has TWEET_SCHEMA columns; `vectors` holds one row per table row with content."""
        has_vector = np.asarray(table.column("content").is_valid(), dtype=bool)
        if len(vectors) != has_vector.sum():
            raise RetrievalError(f"{len(vectors)} vectors for {int(has_vector.sum())} rows with text")
        keep = np.asarray(table.column("likes").is_valid(), dtype=bool)
        self.table = table.filter(pa.array(keep))
        self.queries = _queries(self.table)
        self.values = np.log1p(self.table.column("likes").to_numpy(zero_copy_only=False).astype(np.float64))
        self.vectors = np.ascontiguousarray(vectors[keep[has_vector]], dtype=np.float32)
        self.vector_rows = np.flatnonzero(has_vector[keep])
        self.dates = self.table.column("date").to_numpy(zero_copy_only=False).astype("datetime64[us]")
        self.usernames = [key(q.username) for q in self.queries]
        self.companies = [key(q.company) for q in self.queries]
        self.account_names, self.account_codes = _codes(self.usernames)
        self.company_names, self.company_codes = _codes(self.companies)
        pairs: dict[str, dict[str, int]] = {}
        for u, c in zip(self.usernames, self.companies):
            if u and c:
                pairs.setdefault(u, {})[c] = pairs.get(u, {}).get(c, 0) + 1
        self.account_company = {u: max(counts, key=counts.__getitem__) for u, counts in pairs.items()}
        self.visible = np.ones(len(self.values), bool)
        self._stats: dict[dt.datetime | None, GroupStats] = {}

    def restrict(self, visible: np.ndarray) -> ArrayHistory:
        """The same history with only `visible` rows (a boolean mask over its rows) seen."""
        other = object.__new__(ArrayHistory)
        other.__dict__.update(self.__dict__, visible=self.visible & visible, _stats={})
        return other

    def seen(self, cutoff: dt.datetime | None) -> np.ndarray:
        """Rows a query at `cutoff` may use: visible, and dated before it when it is dated."""
        if cutoff is None:
            return self.visible
        return self.visible & (self.dates < np.datetime64(cutoff, "us"))

    def check(self, query: Query) -> None:
        if not self.seen(query.date).any():
            raise RetrievalError(f"no tweets with likes before {query.date}")

    def neighbours(
        self, vector: np.ndarray, query: Query, config: PredictConfig, image: np.ndarray | None = None
    ) -> Found:
        """Text neighbours only: cross-validation arrays hold no image vectors, so `image` is unused."""
        scores = np.where(self.seen(query.date)[self.vector_rows], self.vectors @ vector, -np.inf)
        picked = list(_top(scores, config.k))
        user = key(query.username)
        if config.k_account and user in self.account_names:
            own = np.where(self.account_codes[self.vector_rows] == self.account_names[user], scores, -np.inf)
            taken = set(picked)
            picked += [i for i in _top(own, config.k_account) if i not in taken]
        rows = self.vector_rows[picked]
        return Found(
            ids=rows.astype(np.int64),
            scores=scores[picked].astype(np.float64),
            values=self.values[rows],
            usernames=[self.usernames[r] for r in rows],
            companies=[self.companies[r] for r in rows],
        )

    def stats(self, cutoff: dt.datetime | None) -> GroupStats:
        if cutoff not in self._stats:
            seen = self.seen(cutoff)
            y = self.values[seen]
            accounts = _sums(self.account_names, self.account_codes[seen], y)
            companies = _sums(self.company_names, self.company_codes[seen], y)
            total, total_sq = float(y.sum()), float((y**2).sum())
            self._stats[cutoff] = GroupStats(accounts, companies, self.account_company, len(y), total, total_sq)
        return self._stats[cutoff]


def _codes(names: list[str | None]) -> tuple[dict[str, int], np.ndarray]:
    mapping: dict[str, int] = {}
    codes = np.array([-1 if n is None else mapping.setdefault(n, len(mapping)) for n in names], dtype=np.int64)
    return mapping, codes


def _sums(names: Mapping[str, int], codes: np.ndarray, y: np.ndarray) -> dict[str, tuple[int, float]]:
    known = codes >= 0
    counts = np.bincount(codes[known], minlength=len(names))
    totals = np.bincount(codes[known], weights=y[known], minlength=len(names))
    return {name: (int(counts[i]), float(totals[i])) for name, i in names.items() if counts[i]}


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best finite scores, best first."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _queries(table: pa.Table) -> list[Query]:
    columns = [table.column(name).to_pylist() for name in ("username", "company", "date")]
    return [Query(*values) for values in zip(*columns)]


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
    config: PredictConfig | None = None,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """k-fold CV inside one labelled file: a tweet never sees its own fold, nor (when dated) later tweets.

    `vectors` has one row per row of `table` with text. `extra` rows (likes; their text is
    ignored) join every fold's history as metadata-only rows: priors, never neighbours.
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
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    y, knn, found = [], [], {name: [] for name in baselines}
    skipped = 0
    for f in range(folds):
        visible = np.ones(len(history.values), bool)
        visible[:n] = fold_of != f
        fold = history.restrict(visible)
        test = np.flatnonzero(fold_of == f)
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
        seed=seed,
        skipped_no_history=skipped,
        extra_rows=len(history.values) - n,
        config=asdict(config),
    )


def likes_cv_on_file(
    path: str | Path,
    embedder: Embedder,
    *,
    extra: str | Path | None = None,
    folds: int = 5,
    seed: int = 0,
    config: PredictConfig | None = None,
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """`cross_validate_likes` on a labelled file as a user gives it: its scorable rows embedded,
    `extra` a file of likes-only rows for the priors."""
    table = scorable(load_tweets(path).table, str(path))
    extra_rows = load_tweets(extra, require_text=False).table if extra else None
    vectors = embedder.encode(table.column("content").to_pylist())
    result = cross_validate_likes(
        table, vectors, extra=extra_rows, folds=folds, seed=seed, config=config, baselines=baselines
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
    queries = _queries(table)
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
