"""Index folders: build, add, verify, atomic replacement, filtered search over real metadata."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from retrieval.errors import IndexNotFound
from retrieval.index import faiss_ops as fx
from retrieval.index import store
from retrieval.index.filters import Filters
from retrieval.index.manifest import read_manifest
from retrieval.index.reader import IndexReader
from retrieval.index.verify import verify
from retrieval.io.tweets import load_tweets

EMBEDDER = {"name": "test-vectors", "dim": 64}


@pytest.fixture(scope="module")
def tweets(sample_parquet: Path) -> pa.Table:
    return load_tweets(sample_parquet).table


@pytest.fixture()
def vectors(clustered: np.ndarray, tweets: pa.Table) -> np.ndarray:
    return clustered[: tweets.num_rows]


def _build(out: Path, vectors: np.ndarray, tweets: pa.Table, **kw) -> dict:
    return store.build(out, vectors, tweets, np.ones(tweets.num_rows, bool), embedder=EMBEDDER, **kw)


def test_build_writes_the_documented_folder(tmp_path: Path, vectors: np.ndarray, tweets: pa.Table) -> None:
    manifest = _build(tmp_path / "idx", vectors, tweets, factory="IVF8,PQ16x4fs,Refine(SQ8)", shards=3)
    files = sorted(p.relative_to(tmp_path / "idx").as_posix() for p in (tmp_path / "idx").rglob("*") if p.is_file())
    segments = {Path(f).suffix for f in files if f.startswith("keywords/") and Path(f).stem != "meta"}
    assert {"keywords/meta.json", "keywords/.managed.json"} <= set(files) and {".idx", ".term"} <= segments
    assert [f for f in files if f.endswith(".lock")] == ["keywords/.tantivy-meta.lock"], "the one a reader opens"
    assert [f for f in files if not f.startswith("keywords/")] == [
        "eval/queries.npy",
        "eval/truth_ids.npy",
        "eval/truth_scores.npy",
        "manifest.json",
        "meta.duckdb",
        "shards/0000.faiss",
        "shards/0001.faiss",
        "shards/0002.faiss",
        "trained.faiss",
    ]
    assert [s.rows for s in manifest.text.shards] == [200, 200, 200]
    assert [s.first_id for s in manifest.text.shards] == [0, 200, 400]
    assert manifest.text.recall_at_10 >= 0.95
    assert manifest.text.bytes_per_vector == 8 + 64
    assert read_manifest(tmp_path / "idx") == manifest, "the manifest reads back as it was written"
    assert verify(tmp_path / "idx") == []
    assert not list(tmp_path.glob(".idx*")), "no temporary folder left behind"


def test_failed_build_keeps_the_old_index(tmp_path: Path, vectors: np.ndarray, tweets: pa.Table, monkeypatch) -> None:
    _build(tmp_path / "idx", vectors, tweets)
    before = (tmp_path / "idx" / "manifest.json").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "idx", vectors[::-1].copy(), tweets, shards=2)
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    assert verify(tmp_path / "idx") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_add_appends_a_shard_without_retraining(tmp_path: Path, clustered: np.ndarray, tweets: pa.Table) -> None:
    first, second = tweets.slice(0, 400), tweets.slice(400)
    _build(tmp_path / "idx", clustered[:400], first, factory="IVF8,SQ8")
    old_shard = (tmp_path / "idx" / "shards" / "0000.faiss").read_bytes()
    manifest = store.add(tmp_path / "idx", clustered[400:600], second, np.ones(200, bool))
    assert [(s.first_id, s.rows) for s in manifest.text.shards] == [(0, 400), (400, 200)]
    assert (tmp_path / "idx" / "shards" / "0000.faiss").read_bytes() == old_shard
    assert verify(tmp_path / "idx") == []
    with IndexReader(tmp_path / "idx") as reader:
        truth = np.load(tmp_path / "idx" / "eval" / "truth_ids.npy")
        assert (truth >= 400).any(), "ground truth must include the added vectors"
        hits = reader.search(clustered[450:451], 1, nprobe=8)
        assert hits[0][0][0] == 450
        assert reader.stats()["rows"] == 600


def test_verify_finds_corruption_and_missing_rows(tmp_path: Path, vectors: np.ndarray, tweets: pa.Table) -> None:
    _build(tmp_path / "idx", vectors, tweets, shards=2)
    shard = tmp_path / "idx" / "shards" / "0001.faiss"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify(tmp_path / "idx") == ["shards/0001.faiss: checksum differs from the manifest"]

    import duckdb

    with duckdb.connect(str(tmp_path / "idx" / "meta.duckdb")) as con:
        con.execute("DELETE FROM tweets WHERE vec_id IN (3, 4)")
    problems = verify(tmp_path / "idx")
    assert "shards/0000.faiss: 2 FAISS ids have no row in meta.duckdb" in problems


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFound, match="not an index"):
        IndexReader(tmp_path)


def test_filters_are_exact_and_return_k(tmp_path: Path, vectors: np.ndarray, tweets: pa.Table) -> None:
    _build(tmp_path / "idx", vectors, tweets, factory="IVF8,PQ16x4fs,Refine(SQ8)", shards=2)
    usernames = tweets.column("username").to_pylist()
    account = max(set(usernames), key=usernames.count)
    expected = {i for i, u in enumerate(usernames) if u == account}
    with IndexReader(tmp_path / "idx") as reader:
        hits = reader.search(vectors[:3], 5, filters=Filters(username=account.upper()), nprobe=1)
        for row in hits:
            assert len(row) == min(5, len(expected))
            assert {i for i, _ in row} <= expected
        ids = np.array(sorted(expected))
        _, exact = fx.exact_search(vectors[ids], vectors[:3], 5)
        found = np.array([[i for i, _ in row] for row in hits])
        assert fx.recall_at_k(found, ids[exact], 5) >= 0.9, "a narrow filter visits more lists"
        since = dt.datetime(2022, 1, 1)
        dated = reader.search(vectors[:1], 10, filters=Filters(since=since))[0]
        assert len(dated) == 10
        assert all(r["date"] >= since for r in reader.rows([i for i, _ in dated]))
        injection = Filters(username="x' OR '1'='1")
        assert reader.search(vectors[:1], 5, filters=injection) == [[]]
        assert reader.search(vectors[:1], 5, exclude={0})[0][0][0] != 0
