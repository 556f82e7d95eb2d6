"""Shared fixtures: real tweets read in place from ../shared/data, MiniLM as the fast real model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

SHARED_DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BEHAVIOUR = SHARED_DATA / "adobe_behaviour_test_time.parquet"
CONTENT = SHARED_DATA / "adobe_content_test_time.parquet"
LABELLED = SHARED_DATA / "adobe_labelled.parquet"


@pytest.fixture(autouse=True)
def offline_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, and a private cache folder shared by the session (MPNet is assembled once)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path_factory.getbasetemp() / "home"))


@pytest.fixture(scope="session")
def sample_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 600 real tweets with text, as a small parquet file in tmp."""
    path = tmp_path_factory.mktemp("data") / "sample.parquet"
    pq.write_table(pq.read_table(BEHAVIOUR).slice(0, 600), path)
    return path


@pytest.fixture(scope="session")
def minilm():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from retrieval.embed import SentenceEmbedder

    return SentenceEmbedder("minilm")


@pytest.fixture(scope="session")
def clustered() -> np.ndarray:
    """6,000 L2-normalised 64-d vectors of intrinsic dimension 8: like sentence embeddings,
    neighbours are well separated, so quantization can reach high recall and nprobe matters."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 8)).astype("float32") @ rng.standard_normal((8, 64)).astype("float32")
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


@pytest.fixture(scope="session")
def minilm_index(tmp_path_factory: pytest.TempPathFactory, sample_parquet: Path, minilm) -> Path:
    """600 real tweets embedded once with MiniLM into an exact index."""
    from retrieval.build import build_index

    out = tmp_path_factory.mktemp("indexes") / "sample"
    build_index(sample_parquet, out, embedder=minilm, progress=False)
    return out
