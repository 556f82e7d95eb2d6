"""An index on disk: manifest.json, meta.duckdb, trained.faiss, shards/*.faiss, eval/*.npy.

This module knows FAISS and DuckDB and nothing about models: vectors come in as arrays,
metadata as a pyarrow table. Every write builds a complete folder beside the target and
renames it into place, so a killed build leaves the old index or none, never a broken one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import pyarrow as pa

from retrieval import index as fx
from retrieval.errors import IndexCorrupt, IndexNotFound, RetrievalError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EVAL_QUERIES = 1000
TRUTH_K = 10

TABLE_SQL = """
CREATE TABLE tweets (
    vec_id BIGINT PRIMARY KEY,
    has_vector BOOLEAN NOT NULL,
    tweet_id BIGINT,
    date TIMESTAMP,
    username VARCHAR,
    company VARCHAR,
    likes BIGINT,
    content VARCHAR,
    media VARCHAR,
    source VARCHAR,
    "row" BIGINT
)"""
COLUMNS = (
    "vec_id",
    "has_vector",
    "tweet_id",
    "date",
    "username",
    "company",
    "likes",
    "content",
    "media",
    "source",
    "row",
)
SELECT_COLUMNS = ", ".join(f'"{c}"' for c in COLUMNS)


@dataclass(frozen=True)
class Filters:
    """Metadata filters; each is bound as a SQL parameter, never pasted into the query."""

    username: str | None = None
    company: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    min_likes: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["has_vector"], []
        if self.username:
            clauses.append("lower(username) = lower(?)")
            params.append(self.username)
        if self.company:
            clauses.append("lower(company) = lower(?)")
            params.append(self.company)
        if self.since:
            clauses.append("date >= ?")
            params.append(self.since)
        if self.until:
            clauses.append("date <= ?")
            params.append(self.until)
        if self.min_likes is not None:
            clauses.append("likes >= ?")
            params.append(self.min_likes)
        return " AND ".join(clauses), params

    def active(self) -> bool:
        return any(v is not None for v in (self.username, self.company, self.since, self.until, self.min_likes))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `out`, on failure it vanishes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_shard(folder: Path, number: int, shard: faiss.Index, first_id: int) -> dict[str, Any]:
    name = f"shards/{number:04d}.faiss"
    (folder / "shards").mkdir(exist_ok=True)
    faiss.write_index(shard, str(folder / name))
    return {"file": name, "first_id": first_id, "rows": int(shard.ntotal), "sha256": sha256(folder / name)}


def _write_table(
    folder: Path, table: pa.Table, has_vector: np.ndarray, first_id: int, source: str, fresh: bool
) -> None:
    """Append rows to meta.duckdb with vec_ids first_id.. in table order."""
    n = table.num_rows
    rows = table.append_column("vec_id", pa.array(np.arange(first_id, first_id + n, dtype=np.int64)))
    rows = rows.append_column("has_vector", pa.array(has_vector.astype(bool)))
    rows = rows.append_column("source", pa.array([source] * n, pa.string()))
    with duckdb.connect(str(folder / "meta.duckdb")) as con:
        if fresh:
            con.execute(TABLE_SQL)
        con.register("incoming", rows)
        con.execute(f"INSERT INTO tweets SELECT {SELECT_COLUMNS} FROM incoming")


def _order_vectors_first(table: pa.Table, has_vector: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Rows with vectors take the contiguous ids the shards hold; metadata-only rows follow."""
    order = np.argsort(~has_vector, kind="stable")
    return table.take(pa.array(order)), has_vector[order]


def _eval_truth(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Keep a sample of indexed vectors and their exact top-k, so recall can be measured later
    without the raw vectors (which a compressed index does not keep)."""
    rows = np.random.default_rng(seed).choice(len(vectors), min(EVAL_QUERIES, len(vectors)), replace=False)
    queries = vectors[np.sort(rows)]
    truth = fx.exact_search(vectors, queries, min(TRUTH_K, len(vectors)))
    return queries, truth


def _save_eval(folder: Path, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> None:
    (folder / "eval").mkdir(exist_ok=True)
    np.save(folder / "eval" / "queries.npy", queries)
    np.save(folder / "eval" / "truth_scores.npy", truth[0])
    np.save(folder / "eval" / "truth_ids.npy", truth[1])


def _split(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, max(1, min(shards, n)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def build(
    out: Path,
    vectors: np.ndarray,
    table: pa.Table,
    has_vector: np.ndarray,
    *,
    embedder: dict[str, Any],
    factory: str | None = None,
    shards: int = 1,
    memory_budget: float = 4 * 2**30,
    source: str = "",
) -> dict[str, Any]:
    """Write a new index folder at `out` (replacing any old one atomically) and return its manifest.

    `vectors` holds one row per True in `has_vector`, in table order.
    """
    if len(vectors) == 0:
        raise RetrievalError("no rows with text to index")
    table, has_vector = _order_vectors_first(table, has_vector)
    d = vectors.shape[1]
    factory = factory or fx.choose_factory(len(vectors), d, memory_budget)
    log.info("training %s on %d vectors", factory, len(vectors))
    trained = fx.train(factory, d, fx.training_sample(vectors, factory))
    with atomic_folder(out) as tmp:
        built = [fx.Shard(fx.new_shard(trained, vectors[a:b]), a) for a, b in _split(len(vectors), shards)]
        queries, truth = _eval_truth(vectors)
        nprobe, recall = fx.tune_nprobe(built, queries, truth[1])
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedder": embedder,
            "metric": "inner_product",
            "factory": factory,
            "nprobe": nprobe,
            "recall_at_10": round(recall, 4),
            "bytes_per_vector": fx.bytes_per_vector(trained),
            "shards": [_write_shard(tmp, i, s.index, s.first_id) for i, s in enumerate(built)],
            "next_id": table.num_rows,
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        faiss.write_index(trained, str(tmp / "trained.faiss"))
        _save_eval(tmp, queries, truth)
        _write_table(tmp, table, has_vector, 0, source, fresh=True)
        _write_manifest(tmp, manifest)
    return manifest


def add(
    path: Path, vectors: np.ndarray, table: pa.Table, has_vector: np.ndarray, *, source: str = ""
) -> dict[str, Any]:
    """Append rows as one new shard, cloned from the trained empty index: no retraining."""
    manifest = read_manifest(path)
    table, has_vector = _order_vectors_first(table, has_vector)
    first_id = int(manifest["next_id"])
    with atomic_folder(path) as tmp:
        for item in path.iterdir():
            if item.name == "shards":
                (tmp / "shards").mkdir()
                for shard_file in item.iterdir():
                    os.link(shard_file, tmp / "shards" / shard_file.name)
            elif item.is_file():
                shutil.copy2(item, tmp / item.name)
            else:
                shutil.copytree(item, tmp / item.name)
        if len(vectors):
            opened = open_shards(path, manifest)
            shard = fx.new_shard(faiss.read_index(str(path / "trained.faiss")), vectors)
            manifest["shards"].append(_write_shard(tmp, len(manifest["shards"]), shard, first_id))
            opened.append(fx.Shard(shard, first_id))
            queries = np.load(tmp / "eval" / "queries.npy")
            old = (np.load(tmp / "eval" / "truth_scores.npy"), np.load(tmp / "eval" / "truth_ids.npy"))
            new = fx.exact_search(vectors, queries, min(TRUTH_K, len(vectors)), first_id)
            truth = fx.merge_results(old, new, old[1].shape[1])
            _save_eval(tmp, queries, truth)
            nprobe, recall = fx.tune_nprobe(opened, queries, truth[1])
            manifest.update(nprobe=nprobe, recall_at_10=round(recall, 4))
        _write_table(tmp, table, has_vector, first_id, source, fresh=False)
        manifest["next_id"] = first_id + table.num_rows
        manifest["updated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _write_manifest(tmp, manifest)
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    file = Path(path) / "manifest.json"
    if not file.exists():
        raise IndexNotFound(f"{path}: not an index (no manifest.json); build one with `index build`")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise IndexCorrupt(f"{file}: invalid JSON ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexCorrupt(f"{file}: format version {manifest.get('format_version')}, expected {FORMAT_VERSION}")
    return manifest


def open_shards(path: Path, manifest: dict[str, Any], mmap: bool = True) -> list[fx.Shard]:
    """Load shards, memory-mapped where the index type allows, so opening a big index is cheap."""
    shards = []
    for entry in manifest["shards"]:
        file = Path(path) / entry["file"]
        if not file.exists():
            raise IndexCorrupt(f"{file}: shard file missing")
        try:
            index = faiss.read_index(str(file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
        except RuntimeError:
            index = faiss.read_index(str(file))
        shards.append(fx.Shard(index, int(entry["first_id"])))
    return shards


def verify(path: Path) -> list[str]:
    """Problems found (empty when sound): checksums, row counts, and a row for every FAISS id."""
    manifest = read_manifest(path)
    problems = []
    with duckdb.connect(str(Path(path) / "meta.duckdb"), read_only=True) as con:
        for entry in manifest["shards"]:
            file = Path(path) / entry["file"]
            if not file.exists():
                problems.append(f"{entry['file']}: missing")
                continue
            if sha256(file) != entry["sha256"]:
                problems.append(f"{entry['file']}: checksum differs from the manifest")
                continue
            ntotal = faiss.read_index(str(file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY).ntotal
            first = entry["first_id"]
            if ntotal != entry["rows"]:
                problems.append(f"{entry['file']}: {ntotal} vectors, manifest says {entry['rows']}")
            (rows,) = con.execute(
                "SELECT count(*) FROM tweets WHERE has_vector AND vec_id >= ? AND vec_id < ?", [first, first + ntotal]
            ).fetchone()
            if rows != ntotal:
                problems.append(f"{entry['file']}: {ntotal - rows} FAISS ids have no row in meta.duckdb")
        (vector_rows,) = con.execute("SELECT count(*) FROM tweets WHERE has_vector").fetchone()
    total = sum(e["rows"] for e in manifest["shards"])
    if vector_rows != total:
        problems.append(f"meta.duckdb: {vector_rows} rows with vectors, shards hold {total}")
    return problems
