"""The ONNX Runtime embedder: same vectors as sentence-transformers (fp32) or close (int8), exported
once and cached, recorded in the index manifest and used again at query time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli import cli
from retrieval import embed_onnx
from retrieval import index as fx
from retrieval.build import add_to_index, build_index
from retrieval.embed import embedder_for_index, index_precision, model_path, text_embedder
from retrieval.embed_onnx import OnnxEmbedder, onnx_path, read_spec
from retrieval.errors import ModelMissing, RetrievalError
from retrieval.search import Searcher
from retrieval.store import read_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tweets(sample_parquet: Path) -> list[str]:
    return pq.read_table(sample_parquet, columns=["content"]).column("content").to_pylist()[:300]


@pytest.fixture(scope="module")
def onnx_int8(tmp_path_factory: pytest.TempPathFactory) -> OnnxEmbedder:
    """Exported into the session's home (module fixtures run before the autouse one sets it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_HOME", str(tmp_path_factory.getbasetemp() / "home"))
        return OnnxEmbedder("minilm", precision="int8")


@pytest.fixture(scope="module")
def reference(minilm, tweets: list[str]) -> np.ndarray:
    return minilm.encode(tweets)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_fp32_export_gives_the_sentence_transformers_vectors(tweets: list[str], reference: np.ndarray) -> None:
    vectors = OnnxEmbedder("minilm", precision="fp32", batch_size=16).encode(tweets)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert cosines(vectors, reference).min() > 0.99999, "same tokens, truncation and mean pooling"


def test_int8_is_normalised_deterministic_and_close_to_fp32(
    onnx_int8: OnnxEmbedder, tweets: list[str], reference: np.ndarray
) -> None:
    vectors = onnx_int8.encode(tweets)
    assert vectors.shape == (300, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(onnx_int8.encode(tweets), vectors)
    # another batch pads a text differently, which int8 compute rounds slightly differently
    assert cosines(onnx_int8.encode(tweets[:7]), vectors[:7]).min() > 0.9995
    cos = cosines(vectors, reference)
    # measured on these 300 tweets: mean 0.9995, min 0.9989; 10-NN agreement 0.970
    assert cos.mean() > 0.999 and cos.min() > 0.995
    _, ref_top = fx.exact_search(reference, reference, 11)
    _, top = fx.exact_search(vectors, vectors, 11)
    assert fx.recall_at_k(top[:, 1:], ref_top[:, 1:], 10) > 0.93


def test_empty_input_and_one_text(onnx_int8: OnnxEmbedder) -> None:
    assert onnx_int8.encode([]).shape == (0, 384)
    assert onnx_int8.encode(["Happy #EuropeDay!"]).shape == (1, 384)


def test_export_is_cached(onnx_int8: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(embed_onnx, "_export_fp32", no_export)
    again = OnnxEmbedder("minilm", precision="int8")
    np.testing.assert_array_equal(again.encode(["a tweet"]), onnx_int8.encode(["a tweet"]))
    assert onnx_path(model_path("minilm"), "int8").stat().st_size > 10_000_000


def test_corrupt_cached_export_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_int8) -> None:
    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path))
    path = onnx_path(model_path("minilm"), "int8")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a model")
    rebuilt = OnnxEmbedder("minilm", precision="int8")
    np.testing.assert_array_equal(rebuilt.encode(["a tweet"]), onnx_int8.encode(["a tweet"]))
    assert path.stat().st_size > 10_000_000 and not list(path.parent.glob("tmp*"))


def test_an_export_that_never_loads_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path))
    monkeypatch.setattr(embed_onnx, "_export_fp32", lambda folder, out: out.write_bytes(b"junk"))
    with pytest.raises(ModelMissing, match="cannot load the exported model"):
        OnnxEmbedder("minilm", precision="fp32")


def test_unsupported_pooling_is_refused(tmp_path: Path) -> None:
    source = model_path("minilm")
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((source / name).read_text())
    assert read_spec(tmp_path).dim == 384
    pooling = json.loads((source / "1_Pooling/config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (tmp_path / "1_Pooling/config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelMissing, match=r"pooling \['cls_token'\] is not supported"):
        read_spec(tmp_path)


def test_precision_of_an_index_is_used_for_its_queries(
    onnx_int8: OnnxEmbedder, minilm, sample_parquet: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small.parquet"
    pq.write_table(pq.read_table(sample_parquet).slice(0, 200), small)
    more = tmp_path / "more.parquet"
    pq.write_table(pq.read_table(sample_parquet).slice(200, 50), more)
    build_index(small, tmp_path / "idx", embedder=onnx_int8, progress=False)
    info = read_manifest(tmp_path / "idx")["embedder"]
    assert info == {"name": "minilm", "dim": 384, "precision": "int8"}
    searcher = Searcher.open(tmp_path / "idx")
    assert isinstance(searcher.embedder, OnnxEmbedder) and searcher.embedder.precision == "int8"
    original = pq.read_table(small).column("content")[17].as_py()
    assert searcher.similar(original, k=1)[0].score > 0.999, "the query vector is the indexed one"
    searcher.close()
    with pytest.raises(RetrievalError, match="would mix precisions"):
        add_to_index(more, tmp_path / "idx", embedder=minilm, progress=False)
    assert add_to_index(more, tmp_path / "idx", progress=False).indexed == 50


def test_manifests_without_precision_mean_fp32() -> None:
    assert index_precision({"name": "minilm", "dim": 384}) == "fp32"
    assert index_precision({"name": "minilm", "dim": 384, "precision": "int8"}) == "int8"
    assert index_precision({"name": "minilm", "dim": 384, "precision": "fp16"}, device="cpu") == "fp32"
    assert embedder_for_index({"name": "minilm", "dim": 384}).precision == "fp32"
    with pytest.raises(ValueError, match="Precision 'int4' is not supported"):
        text_embedder("minilm", precision="int4")  # type: ignore[arg-type]


def test_cli_int8_build_twice_embeds_nothing_the_second_time(sample_parquet: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["index", "build", str(sample_parquet), "--model", "minilm", "--precision", "int8"]
    assert runner.invoke(cli, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    second = runner.invoke(cli, [*args, "--out", str(tmp_path / "b")])
    assert "600 of 600 vectors from the embedding cache" in second.stdout, second.output
    info = json.loads(runner.invoke(cli, ["index", "info", "--index", str(tmp_path / "b"), "--json"]).stdout)
    assert info["embedder"]["precision"] == "int8"


def test_int8_queries_do_not_import_torch(onnx_int8: OnnxEmbedder) -> None:
    code = (
        "import sys; from retrieval.embed import text_embedder; "
        "e = text_embedder('minilm', precision='int8', device='cpu'); e.encode(['a tweet']); "
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_mpnet_int8_agrees_with_fp32(tweets: list[str]) -> None:
    from retrieval.embed import SentenceEmbedder

    reference = SentenceEmbedder("mpnet", device="cpu", precision="fp32").encode(tweets[:100])
    cos = cosines(OnnxEmbedder("mpnet", precision="int8").encode(tweets[:100]), reference)
    # measured on 1,000 tweets: mean 0.9991, min 0.9966 (docs/benchmarks.md); on these 100: 0.9991, 0.9984
    assert cos.mean() > 0.998 and cos.min() > 0.99


def test_fp16_on_cuda_is_close_to_fp32(tweets: list[str], reference: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    vectors = text_embedder("minilm", precision="fp16", device="cuda").encode(tweets)
    assert cosines(vectors, reference).min() > 0.999
