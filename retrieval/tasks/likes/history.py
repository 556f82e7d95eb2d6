"""Where the likes predictor finds past tweets: an index (`IndexHistory`), or arrays in memory
(`ArrayHistory`, for cross-validation folds, which need no index of their own)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from retrieval.errors import RetrievalError
from retrieval.index.filters import Filters
from retrieval.index.reader import IndexReader
from retrieval.query.levels import GroupStats, account_key, key
from retrieval.tasks.likes.predict import Found, PredictConfig, Query

log = logging.getLogger(__name__)

_STATS_CACHE = 64
"""Cutoffs whose account and company sums an IndexHistory keeps."""


class IndexHistory:
    """Past tweets from an index: neighbours through FAISS (time filter as an id selector),
    sums by SQL over every row with likes, metadata-only rows included."""

    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        (count, first, last) = reader.likes_span()
        if not count:
            raise RetrievalError(f"{reader.path}: the index holds no tweets with likes, so it cannot predict them")
        self.first_date: dt.datetime | None = first
        self.last_date: dt.datetime | None = last
        self.account_company = reader.account_companies()
        self._stats: dict[dt.datetime | None, GroupStats] = {}

    def check(self, query: Query) -> None:
        if query.date is not None and (self.first_date is None or query.date <= self.first_date):
            since = f"its first dated tweet is from {self.first_date:%Y-%m-%d}" if self.first_date else "none is dated"
            raise RetrievalError(
                f"{self.reader.path}: no tweets with likes before {query.date:%Y-%m-%d %H:%M} ({since})",
                hint="date",
            )
        if query.date is not None and self.last_date is not None and query.date > self.last_date:
            log.info("%s is after the last dated tweet (%s): all dated history is used", query.date, self.last_date)

    def neighbours(
        self, vector: np.ndarray, query: Query, config: PredictConfig, image: np.ndarray | None = None
    ) -> Found:
        """Text neighbours and, for a tweet with an image in an index with image vectors, image
        neighbours too (each space searched with the same filters, weighted apart in `combine`)."""
        found = [(i, s, "text") for i, s in self._search(vector, query, config, "text")]
        if image is not None and self.reader.has_vectors("image"):
            found += [(i, s, "image") for i, s in self._search(image, query, config, "image")]
        by_id = {r["vec_id"]: r for r in self.reader.rows(sorted({i for i, _, _ in found}))}
        found = [f for f in found if f[0] in by_id]
        rows = [by_id[i] for i, _, _ in found]
        return Found(
            ids=np.array([i for i, _, _ in found], dtype=np.int64),
            scores=np.array([s for _, s, _ in found], dtype=np.float64),
            values=np.log1p(np.array([r["likes"] for r in rows], dtype=np.float64)),
            usernames=[r["username"] for r in rows],
            companies=[r["company"] for r in rows],
            rows=rows,
            spaces=[space for _, _, space in found],
        )

    def _search(self, vector: np.ndarray, query: Query, config: PredictConfig, space: str) -> list[tuple[int, float]]:
        """k neighbours with likes from before the query, plus k_account more from its own account."""
        until = query.date - dt.timedelta(microseconds=1) if query.date else None
        found = self.reader.search(vector[None], config.k, filters=Filters(until=until, min_likes=0), space=space)[0]
        if config.k_account and account_key(query.username):
            own = Filters(username=query.username, until=until, min_likes=0)
            seen = {i for i, _ in found}
            more = self.reader.search(vector[None], config.k_account, filters=own, space=space)[0]
            found += [h for h in more if h[0] not in seen]
        return found

    def stats(self, cutoff: dt.datetime | None) -> GroupStats:
        if cutoff not in self._stats:
            groups = self.reader.likes_by_group(cutoff)
            if len(self._stats) >= _STATS_CACHE:
                self._stats.clear()
            self._stats[cutoff] = GroupStats.from_groups(groups, self.account_company)
        return self._stats[cutoff]


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
        self.queries = queries_of(self.table)
        self.values = np.log1p(self.table.column("likes").to_numpy(zero_copy_only=False).astype(np.float64))
        self.vectors = np.ascontiguousarray(vectors[keep[has_vector]], dtype=np.float32)
        self.vector_rows = np.flatnonzero(has_vector[keep])
        self.dates = self.table.column("date").to_numpy(zero_copy_only=False).astype("datetime64[us]")
        self.usernames = [account_key(q.username) for q in self.queries]
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
        user = account_key(query.username)
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


def queries_of(table: pa.Table) -> list[Query]:
    """The (username, company, date) of each row, as the predictor asks."""
    columns = [table.column(name).to_pylist() for name in ("username", "company", "date")]
    return [Query(*values) for values in zip(*columns)]
