"""`index verify`: read every byte of an index and check it against its manifest and itself."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb
import faiss

from retrieval.index.folder import damaged_files
from retrieval.index.manifest import VectorSetInfo, read_manifest
from retrieval.index.store import open_meta


def verify(path: str | Path) -> list[str]:
    """Problems found (empty when sound): every file's checksum, meta.duckdb readable end to end
    with the rows and ids the manifest promises, and a row for every FAISS id."""
    path = Path(path)
    manifest = read_manifest(path)
    damaged = damaged_files(path, manifest.files, full=True)
    problems = [f"{name}: {problem}" for name, problem in damaged.items()]
    try:
        with open_meta(path) as con:
            problems += _verify_table(con, manifest.next_id)
            text_rows = "SELECT count(*) FROM tweets WHERE has_vector AND vec_id >= ? AND vec_id < ?"
            total = "SELECT count(*) FROM tweets WHERE has_vector"
            problems += _verify_set(path, manifest.text, con, text_rows, total, damaged)
            if manifest.image is not None:
                image_rows = (
                    "SELECT count(*) FROM image_vectors i JOIN tweets t USING (vec_id) WHERE pos >= ? AND pos < ?"
                )
                total = "SELECT count(*) FROM image_vectors"
                problems += _verify_set(path, manifest.image, con, image_rows, total, damaged)
    except duckdb.Error as e:
        problems.append(f"meta.duckdb: cannot be read ({str(e).strip().splitlines()[0]})")
    return problems


def _verify_table(con: duckdb.DuckDBPyConnection, next_id: int) -> list[str]:
    """The ids the shards and the manifest count on: 0..next_id-1, each once (the file's bytes
    are already checked against the manifest's sha256)."""
    rows, low, high, distinct = con.execute(
        "SELECT count(*), min(vec_id), max(vec_id), count(DISTINCT vec_id) FROM tweets"
    ).fetchone()
    if rows != next_id or distinct != rows or (rows and (low != 0 or high != next_id - 1)):
        wanted = f"{next_id} rows with ids 0..{next_id - 1}"
        return [f"meta.duckdb: {rows} rows with ids {low}..{high}, the manifest says {wanted}"]
    return []


def _verify_set(
    path: Path,
    vset: VectorSetInfo,
    con: duckdb.DuckDBPyConnection,
    in_range: str,
    total: str,
    damaged: Mapping[str, str],
) -> list[str]:
    """Counts of one vector set; `in_range` counts the rows a shard's ids must have; the shards in
    `damaged` (file -> problem) are not read."""
    problems = []
    for entry in vset.shards:
        if entry.file in damaged:
            continue
        ntotal = faiss.read_index(str(path / entry.file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY).ntotal
        if ntotal != entry.rows:
            problems.append(f"{entry.file}: {ntotal} vectors, manifest says {entry.rows}")
        (rows,) = con.execute(in_range, [entry.first_id, entry.first_id + ntotal]).fetchone()
        if rows != ntotal:
            problems.append(f"{entry.file}: {ntotal - rows} FAISS ids have no row in meta.duckdb")
    (stored,) = con.execute(total).fetchone()
    if stored != vset.rows:
        problems.append(f"meta.duckdb: {stored} rows with vectors, shards hold {vset.rows}")
    return problems
