"""An index opened for queries: filtered vector search over its shards plus metadata look-ups."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np

from retrieval import index as fx
from retrieval.errors import IndexCorrupt
from retrieval.store import COLUMNS, SELECT_COLUMNS, Filters, open_shards, read_manifest

log = logging.getLogger(__name__)


class IndexReader:
    """Read-only view of an index folder; cheap to open (shards are memory-mapped)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.shards = _to_gpu(open_shards(self.path, self.manifest))
        try:
            self.con = duckdb.connect(str(self.path / "meta.duckdb"), read_only=True)
        except duckdb.Error as e:
            raise IndexCorrupt(f"{self.path / 'meta.duckdb'}: cannot open ({e})") from None

    @property
    def embedder(self) -> dict[str, Any]:
        return self.manifest["embedder"]

    @property
    def nprobe(self) -> int:
        return int(self.manifest["nprobe"])

    @property
    def nlist(self) -> int:
        return max((fx.nlist_of_index(s.index) for s in self.shards), default=0)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def allowed_ids(self, filters: Filters | None) -> np.ndarray | None:
        """Sorted vec_ids that pass the filters, or None when nothing is filtered."""
        if filters is None or not filters.active():
            return None
        where, params = filters.where()
        found = self.con.execute(f"SELECT vec_id FROM tweets WHERE {where} ORDER BY vec_id", params).fetchnumpy()
        return np.asarray(found["vec_id"], dtype=np.int64)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[list[tuple[int, float]]]:
        """Per query, up to k (vec_id, score) pairs, best first.

        A filter that admits a fraction f of the vectors visits nprobe / f lists, so about as
        many admitted vectors are scanned as an unfiltered query scans (the tuned recall
        holds). One that still comes back short is repeated over every list, so it returns k
        results whenever k exist.
        """
        allowed = self.allowed_ids(filters)
        if allowed is not None and exclude:
            allowed = allowed[~np.isin(allowed, list(exclude))]
        nprobe = nprobe or self.nprobe
        if allowed is not None and self.nlist:
            fraction = max(len(allowed), 1) / max(sum(s.index.ntotal for s in self.shards), 1)
            nprobe = min(self.nlist, math.ceil(nprobe / fraction))
        asked = k + len(exclude)
        scores, ids = fx.search(self.shards, queries, asked, nprobe=nprobe, allowed=allowed)
        if allowed is not None and self.nlist > nprobe:
            wanted = min(k, len(allowed))
            short = (ids >= 0).sum(axis=1) < wanted
            if short.any():
                retry = fx.search(self.shards, queries[short], asked, nprobe=self.nlist, allowed=allowed)
                scores[short], ids[short] = retry
        return [
            [(int(i), float(s)) for s, i in zip(row_s, row_i) if i >= 0 and int(i) not in exclude][:k]
            for row_s, row_i in zip(scores, ids)
        ]

    def rows(self, vec_ids: list[int]) -> list[dict[str, Any]]:
        """Metadata rows in the order of vec_ids."""
        if not vec_ids:
            return []
        cursor = self.con.execute(
            f"SELECT {SELECT_COLUMNS} FROM tweets WHERE vec_id IN (SELECT unnest(?))",
            [list(vec_ids)],
        )
        by_id = {r[0]: dict(zip(COLUMNS, r)) for r in cursor.fetchall()}
        return [by_id[i] for i in vec_ids if i in by_id]

    def find_tweet(self, tweet_id: int) -> dict[str, Any] | None:
        """The row of a tweet by the id it had in its source file."""
        found = self.con.execute(
            "SELECT vec_id FROM tweets WHERE tweet_id = ? ORDER BY vec_id LIMIT 1", [tweet_id]
        ).fetchone()
        return self.rows([found[0]])[0] if found else None

    def known_tweet_ids(self, tweet_ids: list[int]) -> set[int]:
        """Which of these source ids the index already holds (to reject duplicates on add)."""
        found = self.con.execute("SELECT tweet_id FROM tweets WHERE tweet_id IN (SELECT unnest(?))", [tweet_ids])
        return {r[0] for r in found.fetchall()}

    def account_companies(self) -> dict[str, str]:
        """Each account's company (its most frequent; ties by name), both lower-cased, so the
        predictor and the generator fall back from an account to the same company."""
        rows = self.con.execute(
            "SELECT u, c FROM (SELECT lower(username) AS u, lower(company) AS c, count(*) AS n FROM tweets"
            " WHERE username IS NOT NULL AND company IS NOT NULL GROUP BY ALL)"
            " QUALIFY row_number() OVER (PARTITION BY u ORDER BY n DESC, c) = 1"
        ).fetchall()
        return dict(rows)

    def stats(self) -> dict[str, Any]:
        (rows, vectors, accounts, companies, first, last, with_likes) = self.con.execute(
            "SELECT count(*), count(*) FILTER (has_vector), count(DISTINCT username), count(DISTINCT company),"
            " min(date), max(date), count(likes) FROM tweets"
        ).fetchone()
        return {
            "rows": rows,
            "vectors": vectors,
            "metadata_only": rows - vectors,
            "accounts": accounts,
            "companies": companies,
            "first_date": first.isoformat() if first else None,
            "last_date": last.isoformat() if last else None,
            "rows_with_likes": with_likes,
        }


def _to_gpu(shards: list[fx.Shard]) -> list[fx.Shard]:
    """Move shards to the GPU when faiss-gpu sees one; types the GPU lacks stay on the CPU."""
    if faiss.get_num_gpus() == 0:
        return shards
    moved = []
    for shard in shards:
        try:
            moved.append(fx.Shard(faiss.index_cpu_to_all_gpus(shard.index), shard.first_id))
        except RuntimeError as e:
            log.info("shard stays on the CPU: %s", str(e).splitlines()[0])
            moved.append(shard)
    return moved
