"""A persistent embedding cache, so the same text is never embedded twice by the same model.

Vectors are keyed by (model id, sha1 of the normalised text). Each model id has a folder under
`<cache dir>/embeddings/` of immutable parquet segments: a process writes a new segment every
`STORE_EVERY` texts (to a temporary name, then renamed), never a shared file, so any number of
builds can embed at once, none waits for another, and a build killed at 90% keeps its vectors.
Lookups read the segments through an in-memory DuckDB, which takes no lock on them. When small
segments pile up, whichever process takes the folder's compaction lock merges them into one.
Deleting the folder is always safe; `python cli.py cache info` shows how big it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from tqdm import tqdm

from retrieval.config import cache_dir
from retrieval.embed.text import Embedder, Precision, text_embedder

log = logging.getLogger(__name__)

STORE_EVERY = 512
"""Texts embedded between two segments: a build killed late keeps all but the last few."""
COMPACT_AT = 32
"""Small segments that trigger a merge (lookups open every segment, so keep them few)."""
SMALL_SEGMENT = 64 * 2**20
"""Segments above this size are left alone by merges, so a merge never rewrites the whole cache."""


def normalise(text: str) -> str:
    """Whitespace runs become one space: the tokenizers ignore the difference, the cache need not."""
    return " ".join(text.split())


def text_key(text: str) -> bytes:
    return hashlib.sha1(normalise(text).encode("utf-8")).digest()


def cache_folder() -> Path:
    return cache_dir() / "embeddings"


def _folder_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def _write_segment(folder: Path, table: pa.Table) -> Path:
    """A complete parquet file under its final name, or nothing: readers never see half a segment."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / name


class CachedEmbedder:
    """Wraps an embedder: looks every text up first and embeds only the misses.

    `model_id` must change whenever the vectors would (another model, another precision).
    """

    def __init__(self, inner: Embedder, model_id: str, folder: Path | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.precision = getattr(inner, "precision", "fp32")
        self.model_id = model_id
        self.path = (folder or cache_folder()) / _folder_name(model_id)
        self.hits = 0
        self.misses = 0

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        _migrate_legacy(self.path)
        keys = [text_key(t) for t in texts]
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = self._lookup(keys, vectors)
        todo = [i for i in range(len(texts)) if not found[i]]
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            unique = {keys[i]: i for i in todo}
            by_key = {}
            pending = list(unique)
            with tqdm(total=len(pending), desc="embedding", unit="text", disable=not progress) as bar:
                for start in range(0, len(pending), STORE_EVERY):
                    chunk = pending[start : start + STORE_EVERY]
                    fresh = self.inner.encode([normalise(texts[unique[k]]) for k in chunk])
                    self._store(chunk, fresh)
                    by_key.update(zip(chunk, fresh))
                    bar.update(len(chunk))
            for i in todo:
                vectors[i] = by_key[keys[i]]
            compact(self.path)
        return vectors

    def record(self) -> dict[str, object]:
        """The wrapped embedder's record (recipe, CPU) for the manifest."""
        record = getattr(self.inner, "record", None)
        return record() if callable(record) else {}

    def _lookup(self, keys: list[bytes], out: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        wanted = pa.table({"key": pa.array(keys, pa.binary()), "pos": pa.array(np.arange(len(keys)))})
        for attempt in range(3):  # a merge may delete a listed segment between listing and reading
            files = [str(f) for f in _segments(self.path)]
            if not files:
                return found
            try:
                with duckdb.connect() as con:
                    con.register("wanted", wanted)
                    hits = con.sql(
                        "SELECT w.pos, v.vec FROM wanted w JOIN read_parquet($files) v ON v.key = w.key",
                        params={"files": files},
                    ).to_arrow_table()
                break
            except duckdb.IOException:
                if attempt == 2:
                    raise
        if hits.num_rows:
            pos = hits.column("pos").to_numpy()
            flat = hits.column("vec").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            out[pos] = flat.reshape(-1, self.dim)
            found[pos] = True
        return found

    def _store(self, keys: list[bytes], vectors: np.ndarray) -> None:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        rows = pa.table({"key": pa.array(keys, pa.binary()), "vec": pa.FixedSizeListArray.from_arrays(flat, self.dim)})
        _write_segment(self.path, rows)


def cached_text_embedder(
    name: str,
    *,
    precision: Precision | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    cache: bool = True,
) -> Embedder:
    """`text_embedder` wrapped in the embedding cache (unless `cache` is False), so a text is
    embedded once across builds, adds and evaluations."""
    embedder = text_embedder(name, precision=precision, batch_size=batch_size, threads=threads)
    return CachedEmbedder(embedder, embedder.model_id) if cache else embedder


def compact(folder: Path) -> None:
    """Merge the small segments into one when there are many; skipped while another process merges."""
    small = [f for f in _segments(folder) if f.stat().st_size < SMALL_SEGMENT]
    if len(small) < COMPACT_AT:
        return
    try:
        with FileLock(folder / ".compact.lock", timeout=0):
            small = [f for f in _segments(folder) if f.stat().st_size < SMALL_SEGMENT]
            if len(small) < COMPACT_AT:
                return
            with duckdb.connect() as con:
                merged = con.sql(
                    "SELECT key, any_value(vec) AS vec FROM read_parquet($files) GROUP BY key",
                    params={"files": [str(f) for f in small]},
                ).to_arrow_table()
            _write_segment(folder, merged)
            for file in small:
                file.unlink(missing_ok=True)
            log.info("%s: merged %d cache segments (%d vectors)", folder, len(small), merged.num_rows)
    except Timeout:
        return


def _migrate_legacy(folder: Path) -> None:
    """Caches written before segments were one DuckDB file per model; turn one into a segment, once."""
    legacy = folder.parent / f"{folder.name}.duckdb"
    if not legacy.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(folder / ".compact.lock", timeout=0), duckdb.connect(str(legacy), read_only=True) as con:
            _write_segment(folder, con.sql("SELECT key, vec FROM vectors").to_arrow_table())
        legacy.unlink()
        log.info("%s: moved the old cache file into %s", legacy, folder)
    except (Timeout, duckdb.Error):
        return


def _count(segments: list[Path]) -> int:
    with duckdb.connect() as con:
        (count,) = con.execute(
            "SELECT count(DISTINCT key) FROM read_parquet(?)", [[str(f) for f in segments]]
        ).fetchone()
    return int(count)


def cache_info(folder: Path | None = None) -> list[dict[str, object]]:
    """One entry per model id: distinct vectors, segments and bytes on disk."""
    folder = folder or cache_folder()
    entries = []
    for model in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []:
        segments = _segments(model)
        if not segments:
            continue
        entries.append(
            {
                "model_id": model.name,
                "vectors": _count(segments),
                "segments": len(segments),
                "bytes": sum(f.stat().st_size for f in segments),
                "path": str(model),
            }
        )
    return entries
