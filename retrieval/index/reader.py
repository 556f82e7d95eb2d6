"""An index opened for queries: filtered vector search over its shards plus metadata look-ups."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import pyarrow as pa

from retrieval.errors import IndexCorrupt, RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.index import keywords, store
from retrieval.index.filters import Filters
from retrieval.index.manifest import Manifest, read_manifest
from retrieval.index.store import COLUMNS, SELECT_COLUMNS, open_shards
from retrieval.index.vector_search import SearchPlan, VectorSet, plan_search, vector_search
from retrieval.schema import ACCOUNT_SQL

log = logging.getLogger(__name__)

OPEN_ATTEMPTS = 3
"""Opens tried while writers keep publishing, before a mismatch is reported as damage."""


NEAR_PAIRS_K = 64
"""Neighbours looked at per vector for near-copies where an index type has no range search."""

SPACES = ("text", "image")
"""The vector sets an index can hold: text (MPNet or MiniLM) and image (CLIP)."""


class IndexReader:
    """Read-only view of an index folder; cheap to open (shards are memory-mapped)."""

    def __init__(self, path: str | Path, *, check: bool = False) -> None:
        """`check` hashes every file; without it only files whose size or mtime changed are hashed.

        A writer may publish while this opens: then the files are the next version's and do not
        match the manifest read first. That is not damage, and the open starts over on the new one."""
        self.path = Path(path)
        for attempt in range(OPEN_ATTEMPTS):
            manifest = read_manifest(self.path)
            try:
                self._open(manifest, check)
                return
            except IndexCorrupt:
                if attempt == OPEN_ATTEMPTS - 1 or read_manifest(self.path) == manifest:
                    raise
                log.info("%s was published again while it opened; opening the new version", self.path)

    def _open(self, manifest: Manifest, check: bool) -> None:
        self.manifest = manifest
        store.check(self.path, self.manifest, full=check)
        try:
            self._con = store.open_meta(self.path)
        except duckdb.Error as e:
            raise IndexCorrupt(f"{self.path / 'meta.duckdb'}: cannot open ({e})") from None
        try:  # with the files just checked, not later
            self._keywords = keywords.KeywordIndex.open(self.path)
            self._no_keywords = f"{self.path}: no keyword index (built before there was one); rebuild the index"
        except RetrievalError as e:  # searches by vector need not fail with it
            self._keywords, self._no_keywords = None, f"{e}; searches by vector still work"
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursor_lock = threading.Lock()
        self._has_copies = bool(
            self._con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'meta' AND table_name = 'copies'"
            ).fetchone()[0]
        )
        self.sets = {"text": VectorSet("text", manifest.text, _to_gpu(open_shards(self.path, manifest.text)))}
        if manifest.image is not None:
            owners = self.con.execute("SELECT vec_id FROM image_vectors ORDER BY pos").fetchnumpy()["vec_id"]
            shards = _to_gpu(open_shards(self.path, manifest.image))
            self.sets["image"] = VectorSet("image", manifest.image, shards, np.asarray(owners, dtype=np.int64))

    @property
    def shards(self) -> list[fx.Shard]:
        return self.sets["text"].shards

    @property
    def embedder(self) -> Mapping[str, Any]:
        return self.manifest.text.embedder

    @property
    def nprobe(self) -> int:
        return self.sets["text"].nprobe

    @property
    def nlist(self) -> int:
        return self.sets["text"].nlist

    def has_vectors(self, space: str) -> bool:
        """Whether the index holds any vectors in this space (an image set may be empty: all media missing)."""
        return bool(space in self.sets and self.sets[space].shards)

    def vector_set(self, space: str) -> VectorSet:
        """The named vector set, or a one-line error saying how to get it."""
        found = self.sets.get(space)
        if found is None or not found.shards:
            how = "build it with a CLIP model and media" if space == "image" else "build it from tweets with text"
            hint = "clip_checkpoint" if space == "image" else None
            raise RetrievalError(f"{self.path}: the index holds no {space} vectors; {how}", hint=hint)
        return found

    def recall_sample(self, space: str = "text") -> tuple[np.ndarray, np.ndarray]:
        """The queries kept at build time and their exact top-10 ids, to measure recall without the
        raw vectors."""
        self.vector_set(space)
        folder = store.eval_folder(self.path, space)
        return np.load(folder / "queries.npy"), np.load(folder / "truth_ids.npy")

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The metadata connection of this thread: a DuckDB connection must not be shared by
        threads at once, so a server's request threads each get a cursor of their own."""
        if threading.get_ident() == self._owner:
            return self._con
        cursor = getattr(self._local, "con", None)
        if cursor is None:
            cursor = self._con.cursor()
            cursor.execute("USE meta")
            self._local.con = cursor
            with self._cursor_lock:
                self._cursors.append(cursor)
        return cursor

    def close(self) -> None:
        with self._cursor_lock:
            for cursor in self._cursors:
                cursor.close()
        self._con.close()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def allowed_positions(self, filters: Filters | None, space: str = "text") -> np.ndarray | None:
        """Sorted positions in a vector set whose tweets pass the filters, or None when nothing is filtered."""
        if filters is None or not filters.active():
            return None
        where, params = filters.where()
        if space == "text":
            sql = f"SELECT vec_id AS pos FROM tweets WHERE has_vector AND {where} ORDER BY vec_id"
        else:
            sql = f"SELECT i.pos FROM image_vectors i JOIN tweets USING (vec_id) WHERE {where} ORDER BY i.pos"
        return np.asarray(self.con.execute(sql, params).fetchnumpy()["pos"], dtype=np.int64)

    def why_nothing(self, filters: Filters, space: str = "text") -> str | None:
        """For a search that found nothing: the filter no tweet with a vector in `space` passes
        on its own, in words, or that only their combination leaves none; None without filters."""
        if not filters.active():
            return None
        if filters.since and filters.until and filters.since > filters.until:
            return "the date range is empty: since is after until"
        images = space == "image" and self.has_vectors("image")
        searched = "vec_id IN (SELECT vec_id FROM image_vectors)" if images else "has_vector"

        def count(where: str, params: list[Any]) -> int:
            return self.con.execute(f"SELECT count(*) FROM tweets WHERE {searched} AND {where}", params).fetchone()[0]

        for name in ("username", "company", "since", "until", "min_likes"):
            value = getattr(filters, name)
            if value is None or count(*Filters(**{name: value}).where()):
                continue
            if name == "min_likes":
                known = count("likes IS NOT NULL", [])
                return f"no tweets with {value} likes or more (likes known for {known} tweets)"
            if name in ("since", "until"):
                return f"no tweets dated {value:%Y-%m-%d} or {'later' if name == 'since' else 'earlier'}"
            return f"no tweets {'by' if name == 'username' else 'of the company'} {value} in this index"
        return "no tweet passes all the filters together"

    def keyword_search(self, query: str, k: int, *, filters: Filters | None = None) -> list[tuple[int, float]]:
        """Up to k (vec_id, BM25 score) pairs for the words of `query`, best first, filtered like
        vector search (the same bound SQL)."""
        if self._keywords is None:
            raise RetrievalError(self._no_keywords)
        return self._keywords.search(query, k, self.allowed_positions(filters, "text"))

    def plan(
        self,
        filters: Filters | None = None,
        *,
        nprobe: int | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
        space: str = "text",
    ) -> SearchPlan:
        """How a vector search with these filters runs, and why (`--explain`)."""
        vset = self.vector_set(space)
        allowed = self.allowed_positions(filters, space)
        if allowed is not None and exclude:
            owned = allowed if vset.owners is None else vset.owners[allowed]
            allowed = allowed[~np.isin(owned, list(exclude))]
        return plan_search(vset, allowed, nprobe or vset.nprobe)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filters: Filters | None = None,
        nprobe: int | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
        space: str = "text",
        min_score: float | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Per query, up to k (vec_id, score) pairs, best first, one per tweet; `min_score` keeps
        only hits at or above it. `vector_search` says how filters are searched."""
        plan = self.plan(filters, nprobe=nprobe, exclude=exclude, space=space)
        return vector_search(self.sets[space], plan, np.atleast_2d(queries), k, exclude, min_score)

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
            f"SELECT u, c FROM (SELECT {ACCOUNT_SQL} AS u, lower(company) AS c, count(*) AS n FROM tweets"
            " WHERE username IS NOT NULL AND company IS NOT NULL GROUP BY ALL)"
            " QUALIFY row_number() OVER (PARTITION BY u ORDER BY n DESC, c) = 1"
        ).fetchall()
        return dict(rows)

    def likes_span(self) -> tuple[int, dt.datetime | None, dt.datetime | None]:
        """How many rows have likes, and the first and last date among them."""
        (count, first, last) = self.con.execute(
            "SELECT count(likes), min(date) FILTER (likes IS NOT NULL), max(date) FILTER (likes IS NOT NULL)"
            " FROM tweets"
        ).fetchone()
        return int(count), first, last

    def likes_by_group(self, before: dt.datetime | None = None) -> list[tuple[Any, ...]]:
        """(account, company, n, sum of log1p(likes), sum of its squares) per lower-cased account
        and company, over rows with likes dated before `before` (all when None)."""
        where, params = ("AND date < ?", [before]) if before else ("", [])
        return self.con.execute(
            f"SELECT {ACCOUNT_SQL}, lower(company), count(*), sum(ln(1 + likes)), sum(ln(1 + likes) ^ 2)"
            f" FROM tweets WHERE likes IS NOT NULL {where} GROUP BY 1, 2",
            params,
        ).fetchall()

    def rows_with_likes(self) -> pa.Table:
        """date, username, company, likes, content (null for metadata-only rows) and vec_id of
        every row with likes, by vec_id."""
        return self.con.sql(
            "SELECT date, username, company, likes, CASE WHEN has_vector THEN content END AS content, vec_id"
            " FROM tweets WHERE likes IS NOT NULL ORDER BY vec_id"
        ).to_arrow_table()

    def vec_ids_with_text(self, content: str) -> frozenset[int]:
        """The rows whose text is exactly `content`."""
        found = self.con.execute("SELECT vec_id FROM tweets WHERE content = ?", [content]).fetchall()
        return frozenset(r[0] for r in found)

    @property
    def text_vectors_readable(self) -> bool:
        """Whether `text_vectors` can read this index's vectors back (not fast-scan or OPQ codes)."""
        return all(fx.can_reconstruct(s.index) for s in self.shards)

    def last_date(self) -> dt.datetime | None:
        """The newest tweet's date: the "now" of an archive, which recency is measured from."""
        return self.con.execute("SELECT max(date) FROM tweets").fetchone()[0]

    def dated_tweets(self) -> list[tuple[int, int | None, str, dt.datetime]]:
        """(vec_id, tweet id, account, date) of every tweet with a text vector, an account and a date, by date."""
        return self.con.execute(
            "SELECT vec_id, tweet_id, username, date FROM tweets"
            " WHERE has_vector AND username IS NOT NULL AND date IS NOT NULL ORDER BY date, vec_id"
        ).fetchall()

    def top_vec_ids(self, by: str, n: int) -> list[int]:
        """The n tweets with text vectors with the most likes (`by` likes) or the newest (`by` date)."""
        column = {"likes": "likes", "date": "date"}[by]
        found = self.con.execute(
            f"SELECT vec_id FROM tweets WHERE has_vector ORDER BY {column} DESC NULLS LAST, vec_id LIMIT ?", [n]
        )
        return [r[0] for r in found.fetchall()]

    def stored_copies(self, vec_ids: list[int] | None = None) -> dict[int, list[int]]:
        """The rows `index build --dedup` left out of the vector set, by the vec_id that stands for
        them (only those standing for `vec_ids` when given); empty for an index built without it."""
        if not self._has_copies:
            return {}
        where, params = ("WHERE copy_of IN (SELECT unnest(?))", [list(vec_ids)]) if vec_ids is not None else ("", [])
        found = self.con.execute(
            f"SELECT copy_of, list(vec_id ORDER BY vec_id) FROM copies {where} GROUP BY copy_of", params
        ).fetchall()
        return {rep: ids for rep, ids in found}

    def verbatim_copies(self) -> list[list[int]]:
        """The vec_ids of each text that is indexed more than once, word for word (rows with a
        vector, and near-copies left out of the vector set)."""
        left_out = "OR vec_id IN (SELECT vec_id FROM copies)" if self._has_copies else ""
        found = self.con.execute(
            f"SELECT list(vec_id ORDER BY vec_id) FROM tweets WHERE (has_vector {left_out}) AND content IS NOT NULL"
            " GROUP BY content HAVING count(*) > 1 ORDER BY min(vec_id)"
        ).fetchall()
        return [ids for (ids,) in found]

    def near_pairs(
        self, ids: np.ndarray, min_score: float, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(id, other id, cosine) of the stored text vectors at or above min_score of the vectors of
        `ids`, each pair once (other id > id): a FAISS range search over nprobe lists, or a top-64
        where the index type has none."""
        shards, nprobe = self.shards, nprobe or self.nprobe
        queries = self.text_vectors(ids)
        found = fx.range_pairs(shards, queries, min_score, nprobe=nprobe)
        if found is None:
            scores, others = fx.search(shards, queries, NEAR_PAIRS_K, nprobe=nprobe)
            rows = np.repeat(np.arange(len(ids)), NEAR_PAIRS_K)
            found = (rows, others.ravel(), scores.ravel())
        rows, others, scores = found
        mine = np.asarray(ids, dtype=np.int64)[rows]
        keep = (others > mine) & (scores >= min_score)
        return mine[keep], others[keep], scores[keep]

    def text_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored text vectors of `ids` (decoded codes for a compressed index)."""
        vectors = fx.reconstruct(self.shards, ids)
        if vectors is None:
            raise RetrievalError(f"{self.path}: its index type ({self.manifest.text.factory}) cannot give vectors back")
        return vectors

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
            **self._image_stats(),
        }

    def missing_media(self) -> list[tuple[int, str, str]]:
        """(vec_id, source, why) of every medium that could not be embedded: those tweets are
        searchable by text only."""
        if "image" not in self.sets:
            return []
        return self.con.execute("SELECT vec_id, source, problem FROM missing_media ORDER BY vec_id").fetchall()

    def _image_stats(self) -> dict[str, Any]:
        if "image" not in self.sets:
            return {}
        (images, tweets) = self.con.execute("SELECT count(*), count(DISTINCT vec_id) FROM image_vectors").fetchone()
        missing = self.sets["image"].info.missing_media
        return {"image_vectors": images, "tweets_with_images": tweets, "missing_media": sum(missing.values())}


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
