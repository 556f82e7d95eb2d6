"""A persistent embedding cache, so the same text is never embedded twice by the same model.

Vectors are keyed by (model id, sha1 of the normalised text) and stored in one DuckDB file per
model id under `<cache dir>/embeddings/`. Rebuilding a file, rebuilding with other index
parameters, or `index add` of rows already seen embeds nothing again. Deleting the folder is
always safe; `python cli.py cache info` shows how big it is.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from retrieval.embed import Embedder, cache_dir

log = logging.getLogger(__name__)

STORE_EVERY = 512
"""Texts embedded between two writes to the cache: a build killed late keeps all but the last few."""


def normalise(text: str) -> str:
    """Whitespace runs become one space: the tokenizers ignore the difference, the cache need not."""
    return " ".join(text.split())


def text_key(text: str) -> bytes:
    return hashlib.sha1(normalise(text).encode("utf-8")).digest()


def cache_folder() -> Path:
    return cache_dir() / "embeddings"


def _file_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id) + ".duckdb"


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
        self.path = (folder or cache_folder()) / _file_name(model_id)
        self.hits = 0
        self.misses = 0

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
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
        return vectors

    def record(self) -> dict[str, object]:
        """The wrapped embedder's record (recipe, CPU) for the manifest."""
        record = getattr(self.inner, "record", None)
        return record() if callable(record) else {}

    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
        if not read_only or not self.path.exists():
            con.execute(f"CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec FLOAT[{self.dim}])")
        return con

    def _lookup(self, keys: list[bytes], out: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        if not self.path.exists():
            return found
        wanted = pa.table({"key": pa.array(keys, pa.binary()), "pos": pa.array(np.arange(len(keys)))})
        with self._connect(read_only=True) as con:
            con.register("wanted", wanted)
            hits = con.sql("SELECT w.pos, v.vec FROM wanted w JOIN vectors v ON v.key = w.key").to_arrow_table()
        if hits.num_rows:
            pos = hits.column("pos").to_numpy()
            flat = hits.column("vec").combine_chunks().values.to_numpy(zero_copy_only=False)
            out[pos] = flat.reshape(-1, self.dim)
            found[pos] = True
        return found

    def _store(self, keys: list[bytes], vectors: np.ndarray) -> None:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        rows = pa.table({"key": pa.array(keys, pa.binary()), "vec": pa.FixedSizeListArray.from_arrays(flat, self.dim)})
        with self._connect() as con:
            con.register("rows", rows)
            con.execute("INSERT OR IGNORE INTO vectors SELECT key, vec FROM rows")


def cache_info(folder: Path | None = None) -> list[dict[str, object]]:
    """One entry per cache file: model id, vector count and bytes on disk."""
    folder = folder or cache_folder()
    entries = []
    for file in sorted(folder.glob("*.duckdb")) if folder.exists() else []:
        with duckdb.connect(str(file), read_only=True) as con:
            (count,) = con.execute("SELECT count(*) FROM vectors").fetchone()
        entries.append({"model_id": file.stem, "vectors": int(count), "bytes": file.stat().st_size, "path": str(file)})
    return entries
