"""The embedding cache: a text is embedded once per model id, hits are exact, the CLI reports them."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from conftest import HASH_EMBEDDER

from retrieval.apps.cli import cli
from retrieval.embed.cache import CachedEmbedder, cache_info


class CountingEmbedder:
    """Deterministic fake: a vector from the text's hash; counts what it was asked to embed."""

    name = "counting"
    dim = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.seen.extend(texts)
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(-1, self.dim)


def test_second_pass_embeds_nothing(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, "counting-fp32", tmp_path)
    texts = ["a tweet", "another  tweet", "a tweet", "third"]
    first = cached.encode(texts)
    assert inner.seen == ["a tweet", "another tweet", "third"], "duplicates and whitespace embedded once"
    again = CachedEmbedder(inner, "counting-fp32", tmp_path).encode(["third", "another tweet\n", "new"])
    assert inner.seen[3:] == ["new"]
    np.testing.assert_array_equal(again[0], first[3])
    np.testing.assert_array_equal(again[1], first[1])
    assert cache_info(tmp_path)[0]["vectors"] == 4


def test_model_ids_do_not_mix(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    CachedEmbedder(inner, "counting-fp32", tmp_path).encode(["x"])
    CachedEmbedder(inner, "counting-int8", tmp_path).encode(["x"])
    assert inner.seen == ["x", "x"]
    assert sorted(e["model_id"] for e in cache_info(tmp_path)) == ["counting-fp32", "counting-int8"]


def test_rebuild_takes_every_vector_from_the_cache(sample_parquet: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["index", "build", str(sample_parquet), "--model", "minilm", "--precision", "fp32"]
    first = runner.invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, [*args, "--out", str(tmp_path / "b"), "--shards", "2"])
    assert "read 600, indexed 600, rejected 0; 600 of 600 vectors from the embedding cache" in second.stdout
    info = runner.invoke(cli, ["cache", "info", "--json"])
    assert '"model_id": "minilm-fp32"' in info.stdout


def test_concurrent_processes_share_one_cache(tmp_path: Path) -> None:
    """Two builds embedding at once: neither waits for nor breaks the other, and the cache
    ends with every text of both (the failure this replaced: a DuckDB lock after all the work)."""
    import os
    import subprocess
    import sys

    script = HASH_EMBEDDER + textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from retrieval.embed import cache as embed_cache
        embed_cache.STORE_EVERY = 7
        start = int(sys.argv[2])
        cached = embed_cache.CachedEmbedder(HashEmbedder(), "hash", Path(sys.argv[1]))
        cached.encode([f"text {i}" for i in range(start, start + 300)])
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(start)], env=env, stdout=subprocess.PIPE)
        for start in (0, 150)
    ]
    for p in procs:
        p.communicate(timeout=120)
    assert [p.returncode for p in procs] == [0, 0]
    (entry,) = cache_info(tmp_path)
    assert entry["vectors"] == 450


def test_small_segments_are_merged_and_still_found(tmp_path: Path, monkeypatch) -> None:
    from retrieval.embed import cache as embed_cache

    monkeypatch.setattr(embed_cache, "STORE_EVERY", 2)
    monkeypatch.setattr(embed_cache, "COMPACT_AT", 4)
    inner = CountingEmbedder()
    texts = [f"tweet {i}" for i in range(11)]
    first = CachedEmbedder(inner, "counting-fp32", tmp_path).encode(texts)
    (entry,) = cache_info(tmp_path)
    assert entry["segments"] == 1 and entry["vectors"] == 11, "six segments of two were merged into one"
    again = CachedEmbedder(inner, "counting-fp32", tmp_path)
    np.testing.assert_array_equal(again.encode(texts), first)
    assert again.hits == 11 and len(inner.seen) == 11


def test_an_old_single_file_cache_is_moved_into_segments(tmp_path: Path) -> None:
    import duckdb
    import pyarrow as pa

    from retrieval.embed.cache import text_key

    vector = np.arange(8, dtype=np.float32)
    with duckdb.connect(str(tmp_path / "counting-fp32.duckdb")) as con:
        con.execute("CREATE TABLE vectors (key BLOB PRIMARY KEY, vec FLOAT[8])")
        con.register("rows", pa.table({"key": [text_key("old text")], "vec": [vector.tolist()]}))
        con.execute("INSERT INTO vectors SELECT key, vec::FLOAT[8] FROM rows")
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, "counting-fp32", tmp_path)
    np.testing.assert_array_equal(cached.encode(["old text"])[0], vector)
    assert inner.seen == [] and not (tmp_path / "counting-fp32.duckdb").exists()
