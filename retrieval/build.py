"""The build pipeline: load a file, embed its texts, write or extend an index folder."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval import store
from retrieval.data import LoadResult, Reject, load_tweets, write_rejects
from retrieval.embed import Embedder, embedder_for_index, embedder_info, index_precision, text_embedder
from retrieval.embed_cache import CachedEmbedder
from retrieval.errors import RetrievalError
from retrieval.reader import IndexReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildReport:
    """What a build or add did, for the one-line summary a user reads."""

    read: int
    indexed: int
    metadata_only: int
    from_cache: int
    rejected: int
    rejects_path: Path | None
    manifest: dict[str, Any]

    def summary(self) -> str:
        line = f"read {self.read}, indexed {self.indexed}, rejected {self.rejected}"
        if self.rejects_path:
            line += f" (see {self.rejects_path})"
        if self.metadata_only:
            line += f"; {self.metadata_only} metadata-only rows without text"
        return line + f"; {self.from_cache} of {self.indexed - self.metadata_only} vectors from the embedding cache"


def _embed(embedder: Embedder, table: pa.Table, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    has_text = np.asarray(pc.is_valid(table.column("content")).to_numpy(zero_copy_only=False), dtype=bool)
    texts = [t for t in table.column("content").to_pylist() if t is not None]
    return embedder.encode(texts, progress=progress), has_text


def _report(
    loaded: LoadResult,
    kept: pa.Table,
    has_vector: np.ndarray,
    rejects: list[Reject],
    folder: Path,
    manifest: dict[str, Any],
    embedder: Embedder,
) -> BuildReport:
    rejects_path = None
    if rejects:
        rejects_path = folder / "rejects.jsonl"
        write_rejects(rejects, rejects_path)
    return BuildReport(
        read=loaded.read,
        indexed=kept.num_rows,
        metadata_only=int((~has_vector).sum()),
        from_cache=embedder.hits if isinstance(embedder, CachedEmbedder) else 0,
        rejected=len(rejects),
        rejects_path=rejects_path,
        manifest=manifest,
    )


def build_index(
    source: str | Path,
    out: str | Path,
    *,
    embedder: Embedder | None = None,
    columns: Mapping[str, str] | None = None,
    allow_missing_text: bool = False,
    factory: str | None = None,
    shards: int = 1,
    memory_budget: float = 4 * 2**30,
    progress: bool = True,
) -> BuildReport:
    """Build a new index at `out` from one tweet file (parquet, CSV, JSON Lines or xlsx)."""
    loaded = load_tweets(source, columns, require_text=not allow_missing_text)
    embedder = embedder or text_embedder("mpnet")
    vectors, has_vector = _embed(embedder, loaded.table, progress)
    manifest = store.build(
        Path(out),
        vectors,
        loaded.table,
        has_vector,
        embedder=embedder_info(embedder),
        factory=factory,
        shards=shards,
        memory_budget=memory_budget,
        source=str(source),
    )
    return _report(loaded, loaded.table, has_vector, list(loaded.rejects), Path(out), manifest, embedder)


def add_to_index(
    source: str | Path,
    path: str | Path,
    *,
    embedder: Embedder | None = None,
    columns: Mapping[str, str] | None = None,
    allow_missing_text: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Append a file's tweets as a new shard; ids already in the index are rejected as duplicates."""
    path = Path(path)
    manifest = store.read_manifest(path)
    loaded = load_tweets(source, columns, require_text=not allow_missing_text)
    table, rejects = _drop_known_ids(path, loaded)
    embedder = embedder or embedder_for_index(manifest["embedder"])
    _check_embedder(path, manifest["embedder"], embedder)
    vectors, has_vector = _embed(embedder, table, progress)
    manifest = store.add(path, vectors, table, has_vector, source=str(source))
    return _report(loaded, table, has_vector, rejects, path, manifest, embedder)


def _check_embedder(path: Path, info: Mapping[str, Any], embedder: Embedder) -> None:
    """New vectors must be comparable with the indexed ones: same width, same precision."""
    if embedder.dim != info["dim"]:
        raise RetrievalError(f"{path}: index holds {info['dim']}-d vectors, embedder gives {embedder.dim}-d")
    wanted = index_precision(info)
    given = getattr(embedder, "precision", wanted)
    if given != wanted:
        raise RetrievalError(
            f"{path}: index was built with {info['name']} {info.get('precision', 'fp32')}; "
            f"adding {given} vectors would mix precisions (use --precision {wanted})"
        )


def _drop_known_ids(path: Path, loaded: LoadResult) -> tuple[pa.Table, list[Reject]]:
    table = loaded.table
    ids = [i for i in table.column("tweet_id").to_pylist() if i is not None]
    if not ids:
        return table, list(loaded.rejects)
    with IndexReader(path) as reader:
        known = reader.known_tweet_ids(ids)
    if not known:
        return table, list(loaded.rejects)
    tweet_ids = table.column("tweet_id").to_pylist()
    keep = np.array([i not in known for i in tweet_ids])
    rows = table.column("row").to_pylist()
    duplicates = [
        Reject(row=r, field="id", reason=f"duplicate id {i} (already in the index)", value=str(i))
        for r, i, k in zip(rows, tweet_ids, keep)
        if not k
    ]
    return table.filter(pa.array(keep)), list(loaded.rejects) + duplicates
