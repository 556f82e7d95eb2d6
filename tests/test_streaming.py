"""A build streams its vectors: bounded by the batch, equal to a whole-file build, resumable after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import BEHAVIOUR, HASH_EMBEDDER, LABELLED, HashEmbedder

from retrieval.embed.cache import CachedEmbedder
from retrieval.errors import RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.index.folder import scratch
from retrieval.index.keywords import KeywordIndex
from retrieval.index.manifest import read_manifest
from retrieval.index.verify import verify
from retrieval.io.tweets import load_tweets
from retrieval.pipeline.build import add_to_index, build_index
from retrieval.schema import TWEET_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


class CountingEmbedder(HashEmbedder):
    """Records the size of every call, to show how many texts are embedded at once."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts, *, progress=False):
        self.calls.append(len(texts))
        return super().encode(texts)


def _shard_sums(path: Path) -> list[tuple[int, int, str]]:
    return [(s.first_id, s.rows, s.sha256) for s in read_manifest(path).text.shards]


@pytest.mark.parametrize("factory", ["Flat", "IVF8,SQ8"])
def test_a_build_in_small_batches_writes_the_same_index_as_one_batch(
    tmp_path: Path, sample_parquet: Path, factory: str
) -> None:
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    build_index(sample_parquet, whole, embedder=HashEmbedder(), factory=factory, shards=3, progress=False)
    report = build_index(
        sample_parquet, streamed, embedder=HashEmbedder(), factory=factory, shards=3, progress=False, batch=37
    )
    assert _shard_sums(streamed) == _shard_sums(whole) and len(_shard_sums(whole)) == 3
    for name in ("queries", "truth_ids", "truth_scores"):
        assert np.array_equal(np.load(whole / "eval" / f"{name}.npy"), np.load(streamed / "eval" / f"{name}.npy"))
    a, b = read_manifest(whole).text, read_manifest(streamed).text
    assert (a.nprobe, a.recall_at_10) == (b.nprobe, b.recall_at_10)
    assert "memory: batches of 37 texts" in report.summary()
    assert verify(streamed) == []


def test_an_add_in_small_batches_matches_one_batch(tmp_path: Path, sample_parquet: Path) -> None:
    table = pq.read_table(sample_parquet)
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    pq.write_table(table.slice(0, 400), first)
    pq.write_table(table.slice(400), second)
    sums = []
    for batch in (10_000, 23):
        out = tmp_path / f"index-{batch}"
        build_index(first, out, embedder=HashEmbedder(), factory="IVF8,Flat", progress=False)
        add_to_index(second, out, embedder=HashEmbedder(), progress=False, batch=batch)
        sums.append((_shard_sums(out), np.load(out / "eval" / "truth_ids.npy").tolist()))
    assert sums[0] == sums[1] and len(sums[0][0]) == 2


def test_memory_is_set_by_the_batch_and_the_training_sample_not_the_file(tmp_path: Path) -> None:
    """20,000 real rows (the behaviour tweets twice, with new ids): an IVF trains on 10,000 of
    them, so no more than those, the recall queries and one batch are ever held at once."""
    table = pq.read_table(BEHAVIOUR)
    again = table.set_column(table.schema.get_field_index("id"), "id", pc.add(table.column("id"), 10**12))
    source = tmp_path / "twice.parquet"
    pq.write_table(pa.concat_tables([table, again]), source)
    embedder = CountingEmbedder()
    report = build_index(source, tmp_path / "index", embedder=embedder, factory="IVF16,Flat", progress=False, batch=500)
    texts = report.indexed - report.metadata_only
    assert texts > 15_000
    take, *rest = embedder.calls
    assert take <= 10_000 + 1_000 and max(rest) <= 500 and take + sum(rest) == texts
    held = int(report.memory.split("at most ")[1].split()[0])
    assert held <= take + 500 < texts


def test_a_build_killed_midway_keeps_the_old_index_and_its_embeddings(tmp_path: Path, sample_parquet: Path) -> None:
    """kill -9 while embedding: the old index is untouched, and the run started again takes every
    vector the killed one had stored from the cache."""
    source = tmp_path / "tweets.parquet"
    pq.write_table(pq.read_table(BEHAVIOUR).slice(0, 3000), source)
    out, cache = tmp_path / "index", tmp_path / "cache"
    build_index(sample_parquet, out, embedder=HashEmbedder(), progress=False)
    script = HASH_EMBEDDER + textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from retrieval.embed.cache import CachedEmbedder
        from retrieval.pipeline.build import build_index

        class Slow(HashEmbedder):
            def encode(self, texts, *, progress=False):
                time.sleep(0.4)
                return super().encode(texts)

        build_index({str(source)!r}, {str(out)!r}, embedder=CachedEmbedder(Slow(), "hash", Path({str(cache)!r})),
                    progress=False, batch=200)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while len(list((cache / "hash").glob("*.parquet"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = len(list((cache / "hash").glob("*.parquet")))
    assert read_manifest(out).next_id == 600 and verify(out) == []
    assert len(list(tmp_path.glob(".index.scratch-*/rows.arrow"))) == 1, "the killed run's loaded rows"

    embedder = CachedEmbedder(HashEmbedder(), "hash", cache)
    report = build_index(source, out, embedder=embedder, progress=False, batch=200)
    assert report.from_cache >= 200 * stored and embedder.misses == report.indexed - report.from_cache
    assert f"{report.from_cache} of 3000 vectors from the embedding cache" in report.summary()
    assert read_manifest(out).next_id == 3000 and verify(out) == []
    assert not list(tmp_path.glob(".index.scratch-*")), "removed by the next run"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see mappings")
@pytest.mark.parametrize("factory", ["Flat", "IVF16,SQ8", "IVF16,RaBitQ4", "IVF16,PQ16x4fs,Refine(SQ8)"])
def test_an_opened_index_maps_its_shard_files_instead_of_reading_them(
    tmp_path: Path, clustered: np.ndarray, factory: str
) -> None:
    from retrieval.index import store

    out = tmp_path / "index"
    n = len(clustered)
    columns = {f.name: pa.nulls(n, f.type) for f in TWEET_SCHEMA} | {"row": pa.array(np.arange(1, n + 1))}
    meta = pa.table(columns, schema=TWEET_SCHEMA)
    store.build(out, clustered, meta, np.ones(n, bool), embedder={"name": "test", "dim": 64}, factory=factory, shards=2)
    vset = read_manifest(out).text
    shards = store.open_shards(out, vset)
    maps = Path("/proc/self/maps").read_text()
    assert all(str((out / s.file).resolve()) in maps for s in vset.shards)
    _, found = fx.search(shards, clustered[:50], 10, nprobe=16)
    _, read = fx.search(store.open_shards(out, vset, mmap=False), clustered[:50], 10, nprobe=16)
    assert np.array_equal(found, read) and (found[:, 0] == np.arange(50)).mean() > 0.9


def test_on_disk_never_chooses_lists_that_cannot_be_mapped() -> None:
    assert fx.choose_factory(10**8, 768, 4 * 2**30).endswith("x4fs")
    assert fx.choose_factory(10**8, 768, 4 * 2**30, on_disk=True).endswith(",RaBitQ4")
    assert fx.choose_factory(10**6, 768, 4 * 2**30, on_disk=True).endswith(",Flat")


def test_loaded_rows_spilled_to_disk_are_the_same_rows_and_not_in_memory(tmp_path: Path) -> None:
    """A build reads its file into an Arrow file beside the index and maps it: the same table,
    while the process allocates next to nothing for it."""
    in_memory = load_tweets(BEHAVIOUR).table
    before = pa.total_allocated_bytes()
    mapped = load_tweets(BEHAVIOUR, spill=tmp_path / "rows.arrow")
    assert mapped.table.equals(in_memory) and mapped.read == 10_000
    assert pa.total_allocated_bytes() - before < in_memory.nbytes / 20
    with pytest.raises(RetrievalError, match=r"gone/rows.arrow: cannot write the rows read \(No such file"):
        load_tweets(BEHAVIOUR, spill=tmp_path / "gone" / "rows.arrow")


def test_rows_without_text_interleaved_keep_the_vectors_ids_first(tmp_path: Path) -> None:
    """Every seventh tweet without text: the rows with vectors take ids 0.. in file order (what the
    shards hold), the others follow, and keyword search finds rows by their own texts."""
    table = pq.read_table(LABELLED).slice(0, 700)
    texts = [None if i % 7 == 3 else t for i, t in enumerate(table.column("content").to_pylist())]
    table = table.set_column(table.schema.get_field_index("content"), "content", pa.array(texts, pa.string()))
    source = tmp_path / "holes.parquet"
    pq.write_table(table, source)
    out = tmp_path / "index"
    report = build_index(source, out, embedder=HashEmbedder(), allow_missing_text=True, progress=False)
    assert report.metadata_only == 100
    with duckdb.connect(str(out / "meta.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT vec_id, has_vector, content, row FROM tweets").fetchall()
    assert [r[0] for r in rows] == list(range(700))
    assert [r[3] for r in rows] == [i + 1 for i in range(700) if i % 7 != 3] + list(range(4, 701, 7))
    assert all(has == (content is not None) for _, has, content, _ in rows)
    with_text = {vec_id: content for vec_id, _, content, _ in rows if content}
    word = next(w for w in with_text[42].split() if w.isalpha() and len(w) > 6)
    hits = KeywordIndex.open(out).search(word, 5)
    assert hits and all(word.lower() in with_text[vec_id].lower() for vec_id, _ in hits)
    assert not list(tmp_path.glob(".index.scratch-*"))


def test_a_killed_runs_scratch_folder_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    index = tmp_path / "index"
    live = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SCRATCH, str(index)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        held = Path(live.stdout.readline().strip())
        dead = tmp_path / ".index.scratch-0badc0de"
        dead.mkdir()
        (dead / "rows.arrow").write_bytes(b"left by a killed build")
        Path(f"{dead}.lock").touch()
        with scratch(index) as mine:
            assert mine.is_dir() and held.is_dir() and not dead.exists()
        assert not mine.exists() and held.is_dir()
    finally:
        live.kill()
        live.wait()


_HOLD_SCRATCH = """
import sys, time
from pathlib import Path
from retrieval.index.folder import scratch
with scratch(Path(sys.argv[1])) as folder:
    print(folder, flush=True)
    time.sleep(60)
"""
