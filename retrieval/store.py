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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
IMAGE_PREFIX = "image/"
"""Where the image vector set keeps its trained index, shards and recall sample."""

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
IMAGE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS image_vectors (
    pos BIGINT PRIMARY KEY,
    vec_id BIGINT NOT NULL,
    source VARCHAR
)"""
MISSING_MEDIA_SQL = """
CREATE TABLE IF NOT EXISTS missing_media (
    vec_id BIGINT NOT NULL,
    source VARCHAR,
    problem VARCHAR
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


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


@dataclass(frozen=True)
class ImageVectors:
    """Vectors of a table's images, one row per embedded image, with the table row it belongs to.

    A tweet may have several images or none; `rows` says whose each vector is, so the image
    set shares vec_ids and metadata with the text set.
    """

    vectors: np.ndarray
    rows: np.ndarray
    sources: list[str]
    embedder: dict[str, Any]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """Media that could not be embedded: (table row, source, why: offline, timeout, corrupt image, ...)."""

    @property
    def missing(self) -> dict[str, int]:
        """How many media are missing, by reason."""
        return dict(Counter(problem for _, _, problem in self.failures))


def _write_shard(folder: Path, prefix: str, number: int, shard: faiss.Index, first_id: int) -> dict[str, Any]:
    name = f"{prefix}shards/{number:04d}.faiss"
    (folder / prefix / "shards").mkdir(parents=True, exist_ok=True)
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


def _write_image_rows(folder: Path, first_pos: int, images: ImageVectors, vec_id_of_row: np.ndarray) -> None:
    """Which tweet each image vector belongs to (image position -> vec_id), and which media are
    missing and why, so a user can see which tweets are searchable by text only."""
    rows = pa.table(
        {
            "pos": pa.array(np.arange(first_pos, first_pos + len(images.rows), dtype=np.int64)),
            "vec_id": pa.array(vec_id_of_row[images.rows].astype(np.int64)),
            "source": pa.array(images.sources, pa.string()),
        }
    )
    failed = pa.table(
        {
            "vec_id": pa.array([int(vec_id_of_row[row]) for row, _, _ in images.failures], pa.int64()),
            "source": pa.array([source for _, source, _ in images.failures], pa.string()),
            "problem": pa.array([problem for _, _, problem in images.failures], pa.string()),
        }
    )
    with duckdb.connect(str(folder / "meta.duckdb")) as con:
        con.execute(IMAGE_TABLE_SQL)
        con.execute(MISSING_MEDIA_SQL)
        con.register("incoming", rows)
        con.execute("INSERT INTO image_vectors SELECT pos, vec_id, source FROM incoming")
        con.register("failed", failed)
        con.execute("INSERT INTO missing_media SELECT vec_id, source, problem FROM failed")


def _order_vectors_first(table: pa.Table, has_vector: np.ndarray) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows with vectors take the contiguous ids the shards hold; metadata-only rows follow.

    Also returns, for each original row, its position in the new order."""
    order = np.argsort(~has_vector, kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    return table.take(pa.array(order)), has_vector[order], where


def _eval_truth(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Keep a sample of indexed vectors and their exact top-k, so recall can be measured later
    without the raw vectors (which a compressed index does not keep)."""
    rows = np.random.default_rng(seed).choice(len(vectors), min(EVAL_QUERIES, len(vectors)), replace=False)
    queries = vectors[np.sort(rows)]
    truth = fx.exact_search(vectors, queries, min(TRUTH_K, len(vectors)))
    return queries, truth


def _save_eval(folder: Path, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> None:
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    np.save(folder / "eval" / "queries.npy", queries)
    np.save(folder / "eval" / "truth_scores.npy", truth[0])
    np.save(folder / "eval" / "truth_ids.npy", truth[1])


def _split(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, max(1, min(shards, n)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _new_set(
    root: Path, prefix: str, vectors: np.ndarray, *, factory: str | None, shards: int, memory_budget: float
) -> dict[str, Any]:
    """Train one vector set, write its shards, trained index and recall sample under root/prefix.

    Returns its manifest section. An empty set has no files and no shards.
    """
    if len(vectors) == 0:
        return {"factory": None, "nprobe": 1, "recall_at_10": None, "bytes_per_vector": 0.0, "shards": []}
    d = vectors.shape[1]
    factory = factory or fx.choose_factory(len(vectors), d, memory_budget)
    log.info("training %s on %d vectors", factory, len(vectors))
    trained = fx.train(factory, d, fx.training_sample(vectors, factory))
    built = [fx.Shard(fx.new_shard(trained, vectors[a:b]), a) for a, b in _split(len(vectors), shards)]
    queries, truth = _eval_truth(vectors)
    nprobe, recall = fx.tune_nprobe(built, queries, truth[1])
    (root / prefix).mkdir(parents=True, exist_ok=True)
    faiss.write_index(trained, str(root / prefix / "trained.faiss"))
    _save_eval(root / prefix, queries, truth)
    return {
        "factory": factory,
        "nprobe": nprobe,
        "recall_at_10": round(recall, 4),
        "bytes_per_vector": fx.bytes_per_vector(trained),
        "shards": [_write_shard(root, prefix, i, s.index, s.first_id) for i, s in enumerate(built)],
    }


def _grow_set(old: Path, tmp: Path, section: dict[str, Any], prefix: str, vectors: np.ndarray, first: int) -> None:
    """Add vectors to a set as one new shard cloned from its trained index (no retraining), then
    extend the stored exact top-k and re-tune nprobe, in place in `section`."""
    trained = old / prefix / "trained.faiss"
    if not trained.exists():
        raise RetrievalError(f"{old}: the index was built without {prefix.strip('/') or 'text'} vectors; rebuild it")
    opened = open_shards(old, section)
    shard = fx.new_shard(faiss.read_index(str(trained)), vectors)
    section["shards"].append(_write_shard(tmp, prefix, len(section["shards"]), shard, first))
    opened.append(fx.Shard(shard, first))
    queries = np.load(tmp / prefix / "eval" / "queries.npy")
    truth = (np.load(tmp / prefix / "eval" / "truth_scores.npy"), np.load(tmp / prefix / "eval" / "truth_ids.npy"))
    new = fx.exact_search(vectors, queries, min(TRUTH_K, len(vectors)), first)
    truth = fx.merge_results(truth, new, truth[1].shape[1])
    _save_eval(tmp / prefix, queries, truth)
    nprobe, recall = fx.tune_nprobe(opened, queries, truth[1])
    section.update(nprobe=nprobe, recall_at_10=round(recall, 4))


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
    images: ImageVectors | None = None,
) -> dict[str, Any]:
    """Write a new index folder at `out` (replacing any old one atomically) and return its manifest.

    `vectors` holds one text vector per True in `has_vector`, in table order; `images` an
    optional second vector set (CLIP) over the same rows. The text set may be empty when
    there are images.
    """
    if len(vectors) == 0 and (images is None or len(images.vectors) == 0):
        raise RetrievalError("nothing to index: no rows with text" + (" and no usable images" if images else ""))
    table, has_vector, where = _order_vectors_first(table, has_vector)
    with atomic_folder(out) as tmp:
        text = _new_set(tmp, "", vectors, factory=factory, shards=shards, memory_budget=memory_budget)
        manifest = {"format_version": FORMAT_VERSION, "embedder": embedder, "metric": "inner_product", **text}
        _write_table(tmp, table, has_vector, 0, source, fresh=True)
        if images is not None:
            image = _new_set(
                tmp, IMAGE_PREFIX, images.vectors, factory=None, shards=shards, memory_budget=memory_budget
            )
            _write_image_rows(tmp, 0, images, where)
            manifest["image"] = {
                "embedder": images.embedder,
                **image,
                "next_pos": len(images.vectors),
                "missing_media": dict(images.missing),
            }
        manifest["next_id"] = table.num_rows
        manifest["built_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _write_manifest(tmp, manifest)
    return manifest


def add(
    path: Path,
    vectors: np.ndarray,
    table: pa.Table,
    has_vector: np.ndarray,
    *,
    source: str = "",
    images: ImageVectors | None = None,
) -> dict[str, Any]:
    """Append rows as one new shard per vector set, cloned from the trained empty index: no retraining."""
    manifest = read_manifest(path)
    if images is not None and len(images.vectors) and "image" not in manifest:
        raise RetrievalError(f"{path}: the index has no image vectors; rebuild it with a CLIP checkpoint")
    table, has_vector, where = _order_vectors_first(table, has_vector)
    first_id = int(manifest["next_id"])
    with atomic_folder(path) as tmp:
        _link_copy(path, tmp)
        if len(vectors):
            _grow_set(path, tmp, manifest, "", vectors, first_id)
        _write_table(tmp, table, has_vector, first_id, source, fresh=False)
        if images is not None and "image" in manifest:
            section = manifest["image"]
            missing = section.setdefault("missing_media", {})
            for problem, count in images.missing.items():
                missing[problem] = missing.get(problem, 0) + count
            first_pos = int(section["next_pos"])
            if len(images.vectors) and not section["shards"]:  # a build that found no usable image
                section.update(_new_set(tmp, IMAGE_PREFIX, images.vectors, factory=None, shards=1, memory_budget=1e18))
            elif len(images.vectors):
                _grow_set(path, tmp, section, IMAGE_PREFIX, images.vectors, first_pos)
            section["next_pos"] = first_pos + len(images.vectors)
            _write_image_rows(tmp, first_pos, images, where + first_id)
        manifest["next_id"] = first_id + table.num_rows
        manifest["updated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _write_manifest(tmp, manifest)
    return manifest


def _link_copy(path: Path, tmp: Path) -> None:
    """Copy an index folder into tmp, hard-linking shard files (they are immutable)."""
    for item in path.rglob("*"):
        target = tmp / item.relative_to(path)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.parent.name == "shards":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(item, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)


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


def open_shards(path: Path, section: dict[str, Any], mmap: bool = True) -> list[fx.Shard]:
    """Load one vector set's shards (the manifest itself for text, manifest["image"] for images),
    memory-mapped where the index type allows, so opening a big index is cheap."""
    shards = []
    for entry in section["shards"]:
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
    problems: list[str] = []
    with duckdb.connect(str(Path(path) / "meta.duckdb"), read_only=True) as con:
        text_rows = "SELECT count(*) FROM tweets WHERE has_vector AND vec_id >= ? AND vec_id < ?"
        problems += _verify_set(path, manifest, con, text_rows, "SELECT count(*) FROM tweets WHERE has_vector")
        if "image" in manifest:
            image_rows = "SELECT count(*) FROM image_vectors i JOIN tweets t USING (vec_id) WHERE pos >= ? AND pos < ?"
            problems += _verify_set(path, manifest["image"], con, image_rows, "SELECT count(*) FROM image_vectors")
    return problems


def _verify_set(
    path: Path, section: dict[str, Any], con: duckdb.DuckDBPyConnection, in_range: str, total: str
) -> list[str]:
    """Checksums and counts of one vector set; `in_range` counts the rows a shard's ids must have."""
    problems = []
    for entry in section["shards"]:
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
        (rows,) = con.execute(in_range, [first, first + ntotal]).fetchone()
        if rows != ntotal:
            problems.append(f"{entry['file']}: {ntotal - rows} FAISS ids have no row in meta.duckdb")
    (stored,) = con.execute(total).fetchone()
    expected = sum(e["rows"] for e in section["shards"])
    if stored != expected:
        problems.append(f"meta.duckdb: {stored} rows with vectors, shards hold {expected}")
    return problems
