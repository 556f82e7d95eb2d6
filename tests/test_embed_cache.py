"""The embedding cache: a text is embedded once per model id, hits are exact, the CLI reports them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from cli import cli
from retrieval.embed_cache import CachedEmbedder, cache_info


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
