"""The Ray path on a local single-node cluster: the same rows, ids and recall as a local build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.index.manifest import read_manifest
from retrieval.index.reader import IndexReader
from retrieval.pipeline.build import build_index

ray = pytest.importorskip("ray", reason="Ray is optional; ./setup.sh installs it")


@pytest.fixture(scope="module")
def cluster():
    from retrieval.pipeline.distributed import connect

    connect("auto", num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_ray_build_equals_the_local_one(cluster, tmp_path: Path, sample_parquet: Path) -> None:
    from retrieval.embed.text import text_embedder
    from retrieval.pipeline.distributed import ray_shard_fill, ray_text_embedder

    local = tmp_path / "local"
    build_index(sample_parquet, local, embedder=text_embedder("minilm", threads=1), factory="IVF8,Flat", progress=False)
    embedder = ray_text_embedder("minilm", "auto", workers=2, cache=False)
    report = build_index(
        sample_parquet,
        tmp_path / "ray",
        embedder=embedder,
        factory="IVF8,Flat",
        progress=False,
        batch=97,
        fill=ray_shard_fill("auto"),
    )
    a, b = read_manifest(local), read_manifest(tmp_path / "ray")
    assert (a.next_id, a.text.factory, a.text.nprobe) == (b.next_id, b.text.factory, b.text.nprobe)
    assert abs(a.text.recall_at_10 - b.text.recall_at_10) <= 0.01 and report.indexed == 600
    assert a.text.embedder == b.text.embedder
    with IndexReader(local) as x, IndexReader(tmp_path / "ray") as y:
        assert [r["tweet_id"] for r in x.rows(list(range(600)))] == [r["tweet_id"] for r in y.rows(list(range(600)))]
        queries = np.load(local / "eval" / "queries.npy")[:50]
        top_x = [hits[0][0] for hits in x.search(queries, 5)]
        top_y = [hits[0][0] for hits in y.search(queries, 5)]
    assert np.mean(np.array(top_x) == np.array(top_y)) >= 0.98


def test_shards_filled_by_ray_tasks_are_the_local_ones_byte_for_byte(cluster, tmp_path: Path) -> None:
    """Three shards filled by tasks from the trained index's bytes: the same files and recall sample."""
    import hashlib

    from conftest import LABELLED, HashEmbedder

    from retrieval.pipeline.distributed import ray_shard_fill

    def files(folder: Path) -> dict[str, str]:
        chosen = [*folder.glob("shards/*.faiss"), folder / "trained.faiss", *folder.glob("eval/*.npy")]
        return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in chosen}

    kw = {"embedder": HashEmbedder(), "factory": "IVF16,PQ8x4fs", "shards": 3, "progress": False, "batch": 300}
    build_index(LABELLED, tmp_path / "local", **kw)
    build_index(LABELLED, tmp_path / "ray", fill=ray_shard_fill("auto", workers=2), **kw)
    local, spread = files(tmp_path / "local"), files(tmp_path / "ray")
    assert len(local) == 3 + 1 + 3 and local == spread
    a, b = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert (a.text.nprobe, a.text.recall_at_10, a.next_id) == (b.text.nprobe, b.text.recall_at_10, b.next_id)


def test_a_shard_task_that_fails_is_one_line(cluster) -> None:
    import faiss

    from retrieval.errors import RetrievalError
    from retrieval.index.streams import InMemory
    from retrieval.pipeline.distributed import ray_shard_fill

    fill = ray_shard_fill("auto", workers=1)
    wrong = InMemory(np.ones((10, 16), np.float32))  # 16-d vectors for an 8-d index
    with pytest.raises(RetrievalError, match="--ray: a task filling a shard failed"):
        list(fill(faiss.IndexFlatIP(8), wrong, [(0, 10)], np.ones((2, 16), np.float32)))
