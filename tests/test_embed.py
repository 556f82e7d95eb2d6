"""Embedders: packaged models load offline, vectors are normalised, errors are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embed.models import assemble_mpnet, model_path
from retrieval.embed.text import SentenceEmbedder
from retrieval.errors import ModelMissing, RetrievalError


def test_minilm_vectors_are_normalised_and_deterministic(minilm) -> None:
    texts = ["We are hiring engineers <hyperlink>", "Happy #EuropeDay!", "We are hiring engineers <hyperlink>"]
    vectors = minilm.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert minilm.encode([]).shape == (0, 384)


def test_unknown_model_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="not a known model"):
        model_path(str(tmp_path / "nothing-here"))
    with pytest.raises(RetrievalError, match="precision 'int4' is not one of") as info:
        SentenceEmbedder("minilm", precision="int4")  # type: ignore[arg-type]
    assert (info.value.hint, info.value.value) == ("precision", "fp32")


@pytest.mark.slow
def test_mpnet_assembles_from_packaged_chunks_offline(tmp_path: Path) -> None:
    folder = assemble_mpnet(tmp_path / "mpnet")
    assert (folder / "model.safetensors").stat().st_size == 437_971_872
    assert assemble_mpnet(tmp_path / "mpnet") == folder, "second call reuses the folder"
    embedder = SentenceEmbedder(str(folder))
    vectors = embedder.encode(["we are hiring engineers", "join our engineering team", "pizza recipe"])
    assert vectors.shape == (3, 768)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
