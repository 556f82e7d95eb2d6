"""An index on disk: manifest.json, meta.duckdb, trained.faiss, shards/*.faiss, eval/*.npy.

This module knows FAISS and DuckDB and nothing about models: vectors come in as arrays,
metadata as a pyarrow table. Every write builds a complete folder beside the target and
renames it into place, so a killed build leaves the old index or none, never a broken one.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval.errors import IndexCorrupt, RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.index import keywords
from retrieval.index.folder import UNLISTED, atomic_folder, damaged_files, file_entries, sha256
from retrieval.index.manifest import Manifest, ShardEntry, VectorSetInfo, now, read_manifest
from retrieval.index.streams import InMemory, VectorStream, as_stream
from retrieval.schema import INDEX_SCHEMA, TWEETS_TABLE_SQL

log = logging.getLogger(__name__)

EVAL_QUERIES = 1000
BATCH_ROWS = 65_536
"""Rows read at a time where a whole table would otherwise become Python objects."""
TRUTH_K = 10
IMAGE_PREFIX = "image/"
"""Where the image vector set keeps its trained index, shards and recall sample."""
Truth = tuple[np.ndarray, np.ndarray]
"""The recall queries' exact top-k: (scores, ids), one row per query."""
Ranges = list[tuple[int, int]]
ShardFill = Callable[[faiss.Index, VectorStream, Ranges, np.ndarray], Iterator[tuple[faiss.Index, Truth]]]
"""How a build fills its shards: (trained empty index, vectors, row ranges, recall queries) ->
each range's filled shard and its top-k, in order (`fill_shards` here, or on Ray)."""

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
COPIES_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS copies (
    vec_id BIGINT PRIMARY KEY,
    copy_of BIGINT NOT NULL
)"""
"""Rows left out of the vector set by `index build --dedup`: copy_of is the vec_id whose vector stands for them."""
COLUMNS = tuple(INDEX_SCHEMA.names)
SELECT_COLUMNS = ", ".join(f'"{c}"' for c in COLUMNS)


@dataclass(frozen=True)
class ImageVectors:
    """Vectors of a table's images, one row per embedded image, with the table row it belongs to.

    A tweet may have several images or none; `rows` says whose each vector is, so the image
    set shares vec_ids and metadata with the text set.
    """

    vectors: np.ndarray
    rows: np.ndarray
    sources: list[str]
    embedder: Mapping[str, Any]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    """Media that could not be embedded: (table row, source, why: offline, timeout, corrupt image, ...)."""

    @property
    def missing(self) -> dict[str, int]:
        """How many media are missing, by reason."""
        return dict(Counter(problem for _, _, problem in self.failures))


def _write_shard(folder: Path, prefix: str, number: int, shard: faiss.Index, first_id: int) -> ShardEntry:
    name = f"{prefix}shards/{number:04d}.faiss"
    (folder / prefix / "shards").mkdir(parents=True, exist_ok=True)
    _write_faiss(shard, folder / name)
    return ShardEntry(name, first_id, int(shard.ntotal), sha256(folder / name))


def open_meta(path: Path) -> duckdb.DuckDBPyConnection:
    """meta.duckdb of the index at `path`, read-only, as the file is now. Attached to a fresh
    in-memory database rather than connected by path: DuckDB hands a process that already has
    a file open the same database again, which after a publish is the old file."""
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS meta (READ_ONLY)", [str(Path(path) / "meta.duckdb")])
        con.execute("USE meta")
    except duckdb.Error:
        con.close()
        raise
    return con


def _write_faiss(index: faiss.Index, file: Path) -> None:
    """faiss reports a failed write (a full disk) as RuntimeError; make it the OSError it is."""
    try:
        faiss.write_index(index, str(file))
    except RuntimeError as e:
        raise OSError(errno.EIO, f"faiss could not write it: {str(e).strip().splitlines()[-1]}", str(file)) from None


def _write_table(
    folder: Path, table: pa.Table, has_vector: np.ndarray, vec_ids: np.ndarray, source: str, fresh: bool
) -> None:
    """Append rows to meta.duckdb under their vec_ids: the rows with a vector, then the others,
    each in file order, which is vec_id order, so nothing is sorted or copied on the way."""
    rows = table.append_column("vec_id", pa.array(vec_ids)).append_column("has_vector", pa.array(has_vector))
    picked = ", ".join("? AS source" if c == "source" else f'"{c}"' for c in COLUMNS)
    with duckdb.connect(str(folder / "meta.duckdb")) as con:
        if fresh:
            con.execute(TWEETS_TABLE_SQL)
        con.register("incoming", rows)
        for vectors in (True, False):
            con.execute(f"INSERT INTO tweets SELECT {picked} FROM incoming WHERE has_vector = ?", [source, vectors])


def _write_keywords(
    folder: Path, old: Path | None, table: pa.Table, has_vector: np.ndarray, vec_ids: np.ndarray
) -> None:
    """The keyword index over every row with a text vector: these rows added to the copy of the
    old index's keyword index in `folder`, or, when `old` has none in today's format, the old
    index's rows and these into a new one, read a batch at a time."""
    valid = np.asarray(pc.is_valid(table.column("content")).to_numpy(zero_copy_only=False), bool)
    order = np.flatnonzero(has_vector & valid)  # rows with vectors: their vec_ids rise in file order
    grow = old is not None and keywords.exists(folder)

    def batches() -> Iterator[tuple[np.ndarray, list[str]]]:
        if old is not None and not grow:
            with open_meta(old) as con:
                sql = "SELECT vec_id, content FROM tweets WHERE has_vector AND content IS NOT NULL ORDER BY vec_id"
                for batch in con.sql(sql).to_arrow_reader(BATCH_ROWS):
                    yield batch.column(0).to_numpy(), batch.column(1).to_pylist()
        content = table.column("content")
        for start in range(0, len(order), BATCH_ROWS):
            rows = order[start : start + BATCH_ROWS]
            yield vec_ids[rows], content.take(pa.array(rows)).to_pylist()

    if not grow:
        shutil.rmtree(folder / keywords.FOLDER, ignore_errors=True)  # a keyword index of an older format
    keywords.write(folder, batches())


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


def _write_copies(folder: Path, copy_of: np.ndarray, where: np.ndarray) -> None:
    """The rows left out of the vector set as near-copies, each with the vec_id that stands for it."""
    rows = np.flatnonzero(copy_of >= 0)
    copies = pa.table({"vec_id": pa.array(where[rows].astype(np.int64)), "copy_of": pa.array(where[copy_of[rows]])})
    with duckdb.connect(str(folder / "meta.duckdb")) as con:
        con.execute(COPIES_TABLE_SQL)
        con.register("incoming", copies)
        con.execute("INSERT INTO copies SELECT vec_id, copy_of FROM incoming")


def _vectors_first(has_vector: np.ndarray) -> np.ndarray:
    """Each row's place among the new ids: rows with vectors take the contiguous ids the shards
    hold, in file order; metadata-only rows follow. The rows themselves stay where they are."""
    order = np.argsort(~has_vector, kind="stable")
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    return where


def _eval_rows(n: int, seed: int = 0) -> np.ndarray:
    """The sample of indexed vectors whose exact top-k is kept, so recall can be measured later
    without the raw vectors (which a compressed index does not keep)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(EVAL_QUERIES, n), replace=False))


def _merge_truth(truth: Truth | None, found: Truth) -> Truth:
    """The top-k of both, k as deep as the two together reach (up to TRUTH_K)."""
    if truth is None:
        return found
    return fx.merge_results(truth, found, min(TRUTH_K, truth[1].shape[1] + found[1].shape[1]))


def grow_truth(truth: Truth | None, batch: np.ndarray, first_id: int, queries: np.ndarray) -> Truth:
    """The queries' exact top-k with one more batch of vectors, whose ids start at first_id."""
    return _merge_truth(truth, fx.exact_search(batch, queries, min(TRUTH_K, len(batch)), first_id))


def _add_batches(
    shard: faiss.Index,
    batches: Iterable[tuple[int, np.ndarray]],
    queries: np.ndarray,
    truth: Truth | None = None,
    first_id: int = 0,
) -> Truth:
    """Add (first row, vectors) batches to the shard one at a time, growing the queries' exact
    top-k as they pass, so no batch outlives its turn."""
    for first, batch in batches:
        shard.add(np.ascontiguousarray(batch, dtype=np.float32))
        truth = grow_truth(truth, batch, first_id + first, queries)
    assert truth is not None, "a shard of no rows"
    return truth


def fill_shards(
    trained: faiss.Index, vectors: VectorStream, ranges: Ranges, queries: np.ndarray
) -> Iterator[tuple[faiss.Index, Truth]]:
    """Each range's shard in turn, cloned from the trained index, with the recall queries' exact
    top-k among its vectors: the local `ShardFill`; `pipeline/distributed.py` has the Ray one."""
    for a, b in ranges:
        shard = faiss.clone_index(trained)
        truth = _add_batches(shard, vectors.batches(a, b), queries)
        yield shard, truth
        del shard


def _save_eval(folder: Path, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> None:
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    np.save(folder / "eval" / "queries.npy", queries)
    np.save(folder / "eval" / "truth_scores.npy", truth[0])
    np.save(folder / "eval" / "truth_ids.npy", truth[1])


def eval_folder(path: Path, space: str) -> Path:
    """Where a vector set keeps its recall sample: queries.npy, truth_scores.npy, truth_ids.npy."""
    return Path(path) / ("" if space == "text" else IMAGE_PREFIX) / "eval"


def _split(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, max(1, min(shards, n)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _new_set(
    root: Path,
    prefix: str,
    vectors: VectorStream,
    embedder: Mapping[str, Any],
    *,
    factory: str | None,
    shards: int,
    memory_budget: float,
    on_disk: bool = False,
    fill: ShardFill | None = None,
) -> VectorSetInfo:
    """Train one vector set, write its shards, trained index and recall sample under root/prefix.

    Only the training sample and the recall queries are held whole; each shard is filled a
    batch at a time (by `fill`, `fill_shards` unless given), written, and let go, then read back memory-mapped to
    tune nprobe. An empty set has no files and no shards.
    """
    n = len(vectors)
    if n == 0:
        return VectorSetInfo(embedder)
    d = vectors.dim
    factory = factory or fx.choose_factory(n, d, memory_budget, on_disk)
    train_rows = fx.training_rows(n, factory) if fx.needs_training(factory, d) else np.zeros(0, np.int64)
    eval_rows = _eval_rows(n)
    wanted = np.arange(n) if train_rows is None else np.union1d(train_rows, eval_rows)
    held = vectors.take(wanted)
    sample = held if train_rows is None else held[np.searchsorted(wanted, train_rows)]
    log.info("training %s on %d vectors", factory, len(sample))
    trained = fx.train(factory, d, sample)
    queries = held[np.searchsorted(wanted, eval_rows)]
    del held, sample
    (root / prefix).mkdir(parents=True, exist_ok=True)
    truth: Truth | None = None
    entries = []
    ranges = _split(n, shards)
    filled = (fill or fill_shards)(trained, vectors, ranges, queries)
    for number, ((a, _), (shard, found)) in enumerate(zip(ranges, filled)):
        truth = _merge_truth(truth, found)
        entries.append(_write_shard(root, prefix, number, shard, a))
        del shard
    assert truth is not None
    _write_faiss(trained, root / prefix / "trained.faiss")
    _save_eval(root / prefix, queries, truth)
    vset = VectorSetInfo(
        embedder, factory=factory, bytes_per_vector=fx.bytes_per_vector(trained), shards=tuple(entries)
    )
    nprobe, recall = fx.tune_nprobe(open_shards(root, vset), queries, truth[1])
    return dataclasses.replace(vset, nprobe=nprobe, recall_at_10=round(recall, 4))


def _grow_set(
    old: Path, tmp: Path, vset: VectorSetInfo, prefix: str, vectors: VectorStream, first: int
) -> VectorSetInfo:
    """A set with the vectors added as one new shard cloned from its trained index (no
    retraining), its stored exact top-k extended and nprobe re-tuned."""
    trained = old / prefix / "trained.faiss"
    if not trained.exists():
        raise RetrievalError(f"{old}: the index was built without {prefix.strip('/') or 'text'} vectors; rebuild it")
    shard = faiss.read_index(str(trained))
    queries = np.load(tmp / prefix / "eval" / "queries.npy")
    truth = (np.load(tmp / prefix / "eval" / "truth_scores.npy"), np.load(tmp / prefix / "eval" / "truth_ids.npy"))
    truth = _add_batches(shard, vectors.batches(0, len(vectors)), queries, truth, first)
    entry = _write_shard(tmp, prefix, len(vset.shards), shard, first)
    del shard
    _save_eval(tmp / prefix, queries, truth)
    grown = dataclasses.replace(vset, shards=(*vset.shards, entry))
    nprobe, recall = fx.tune_nprobe(open_shards(tmp, grown), queries, truth[1])
    return dataclasses.replace(grown, nprobe=nprobe, recall_at_10=round(recall, 4))


def build(
    out: Path,
    vectors: np.ndarray | VectorStream,
    table: pa.Table,
    has_vector: np.ndarray,
    *,
    embedder: Mapping[str, Any],
    factory: str | None = None,
    shards: int = 1,
    memory_budget: float = 4 * 2**30,
    on_disk: bool = False,
    source: str = "",
    images: ImageVectors | None = None,
    copy_of: np.ndarray | None = None,
    fill: ShardFill | None = None,
) -> Manifest:
    """Write a new index folder at `out` (replacing any old one atomically) and return its manifest.

    `vectors` holds one text vector per True in `has_vector`, in table order (an array, or a
    stream that is read a batch at a time so it never sits in memory whole); `images` an
    optional second vector set (CLIP) over the same rows. `on_disk` chooses a factory whose codes
    are read from the shard files as queries need them (see `fx.choose_factory`). The text set may be empty when
    there are images. `copy_of` gives, per row, the row whose vector stands for it (-1: none),
    for rows left out of the vector set as near-copies; they are kept in a `copies` table.
    `fill` fills the shards of both sets (`fill_shards`, one after another, unless given).
    """
    vectors = as_stream(vectors)
    if len(vectors) == 0 and (images is None or len(images.vectors) == 0):
        raise RetrievalError("nothing to index: no rows with text" + (" and no usable images" if images else ""))
    where = _vectors_first(has_vector)
    version = _current_version(Path(out)) + 1
    with atomic_folder(out) as tmp:
        text = _new_set(
            tmp,
            "",
            vectors,
            embedder,
            factory=factory,
            shards=shards,
            memory_budget=memory_budget,
            on_disk=on_disk,
            fill=fill,
        )
        _write_table(tmp, table, has_vector, where, source, fresh=True)
        _write_keywords(tmp, None, table, has_vector, where)
        if copy_of is not None:
            _write_copies(tmp, copy_of, where)
        image = None
        if images is not None:
            image = _new_set(
                tmp,
                IMAGE_PREFIX,
                InMemory(images.vectors),
                images.embedder,
                factory=None,
                shards=shards,
                memory_budget=memory_budget,
                on_disk=on_disk,
                fill=fill,
            )
            image = dataclasses.replace(image, next_pos=len(images.vectors), missing_media=images.missing)
            _write_image_rows(tmp, 0, images, where)
        manifest = Manifest(text, next_id=table.num_rows, version=version, image=image, built_at=now())
        return _write_manifest(tmp, manifest)


def add(
    path: Path,
    vectors: np.ndarray | VectorStream,
    table: pa.Table,
    has_vector: np.ndarray,
    *,
    source: str = "",
    images: ImageVectors | None = None,
) -> Manifest:
    """Append rows as one new shard per vector set, cloned from the trained empty index: no retraining."""
    vectors = as_stream(vectors)
    manifest = read_manifest(path)
    check(path, manifest)
    if images is not None and len(images.vectors) and manifest.image is None:
        raise RetrievalError(f"{path}: the index has no image vectors; rebuild it with a CLIP checkpoint")
    where = _vectors_first(has_vector)
    first_id = manifest.next_id
    with atomic_folder(path) as tmp:
        _link_copy(path, tmp)
        text = _grow_set(path, tmp, manifest.text, "", vectors, first_id) if len(vectors) else manifest.text
        _write_table(tmp, table, has_vector, where + first_id, source, fresh=False)
        _write_keywords(tmp, path, table, has_vector, where + first_id)
        image = manifest.image
        if images is not None and image is not None:
            image = _grow_images(path, tmp, image, images)
            _write_image_rows(tmp, manifest.image.next_pos, images, where + first_id)
        grown = manifest.replace(
            text=text, image=image, next_id=first_id + table.num_rows, version=manifest.version + 1, updated_at=now()
        )
        return _write_manifest(tmp, grown)


def _grow_images(path: Path, tmp: Path, vset: VectorSetInfo, images: ImageVectors) -> VectorSetInfo:
    """The image set with new image vectors (a first shard if the build found no usable image)."""
    missing = Counter(vset.missing_media) + Counter(images.missing)
    first_pos = vset.next_pos
    if len(images.vectors) and not vset.shards:
        stream = InMemory(images.vectors)
        vset = _new_set(tmp, IMAGE_PREFIX, stream, vset.embedder, factory=None, shards=1, memory_budget=1e18)
    elif len(images.vectors):
        vset = _grow_set(path, tmp, vset, IMAGE_PREFIX, InMemory(images.vectors), first_pos)
    return dataclasses.replace(vset, next_pos=first_pos + len(images.vectors), missing_media=dict(missing))


def _link_copy(path: Path, tmp: Path) -> None:
    """Copy an index folder into tmp, hard-linking the files that are never written again (shards
    and keyword segments)."""
    for item in path.rglob("*"):
        target = tmp / item.relative_to(path)
        immutable = item.parent.name == "shards" or (
            item.parent.name == keywords.FOLDER and item.name not in keywords.REWRITTEN
        )
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.name in UNLISTED:
            continue
        elif immutable:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(item, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)


def _write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Last step of a write: list every file with its checksum, then write the manifest (which
    checksums itself)."""
    listed = manifest.replace(files=file_entries(folder, manifest.files))
    listed.write(folder)
    return listed


def _current_version(path: Path) -> int:
    """The version of the index a build replaces (0 when none, or when it cannot be read)."""
    try:
        return read_manifest(path).version
    except RetrievalError:
        return 0


def check(path: Path, manifest: Manifest, *, full: bool = False) -> None:
    """Raise IndexCorrupt, in one line, when a file of the index differs from its manifest."""
    if damaged := damaged_files(Path(path), manifest.files, full=full):
        name, problem = next(iter(damaged.items()))
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        raise IndexCorrupt(f"{path}: damaged: {name}: {problem}{more}", hint="verify", value=str(path))


MMAP_FLAGS = tuple(
    flags | faiss.IO_FLAG_READ_ONLY for flags in (getattr(faiss, "IO_FLAG_MMAP_IFC", 0), faiss.IO_FLAG_MMAP) if flags
)
"""Ways to map a shard file rather than read it, best first: IO_FLAG_MMAP_IFC (faiss >= 1.12) maps
flat codes, refine codes and IVF lists alike; IO_FLAG_MMAP maps only plain IVF lists. Fast-scan
PQ lists are read into memory either way."""


def open_shards(path: Path, vset: VectorSetInfo, mmap: bool = True) -> list[fx.Shard]:
    """Load one vector set's shards memory-mapped where the index type allows, so opening a big
    index is cheap and a query pages in only the lists it probes."""
    shards = []
    for entry in vset.shards:
        file = Path(path) / entry.file
        if not file.exists():
            raise IndexCorrupt(f"{file}: shard file missing")
        shards.append(fx.Shard(_read_shard(file, MMAP_FLAGS if mmap else ()), entry.first_id))
    return shards


def _read_shard(file: Path, ways: tuple[int, ...]) -> faiss.Index:
    for flags in ways:
        try:
            return faiss.read_index(str(file), flags)
        except RuntimeError:
            continue
    try:
        return faiss.read_index(str(file))
    except RuntimeError as e:
        raise IndexCorrupt(f"{file}: faiss cannot read it ({str(e).strip().splitlines()[-1]})") from None
