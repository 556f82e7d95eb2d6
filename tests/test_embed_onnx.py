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

from retrieval.apps.cli import cli
from retrieval.embed import onnx as embed_onnx
from retrieval.embed import recipes as onnx_recipes
from retrieval.embed.check_texts import check_texts
from retrieval.embed.cpu import cpu_features, cpu_key
from retrieval.embed.int8 import RECIPES
from retrieval.embed.models import model_path
from retrieval.embed.onnx import RECIPE, OnnxEmbedder, onnx_path, read_spec
from retrieval.embed.recipes import CHECK_BARS, FP32, agreement, measure, read_choice
from retrieval.embed.text import embedder_for_index, index_precision, text_embedder
from retrieval.errors import ModelMissing, RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.index.manifest import read_manifest
from retrieval.pipeline.build import add_to_index, build_index
from retrieval.query.search import Searcher

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
    # another batch pads a text differently, which int8 compute may round slightly differently
    assert cosines(onnx_int8.encode(tweets[:7]), vectors[:7]).min() > 0.999
    # whatever recipe this CPU chose, the bars of issue #6 hold on real tweets
    cos = cosines(vectors, reference)
    assert cos.mean() >= 0.99 and cos.min() > 0.95
    _, ref_top = fx.exact_search(reference, reference, 11)
    _, top = fx.exact_search(vectors, vectors, 11)
    assert fx.recall_at_k(top[:, 1:], ref_top[:, 1:], 10) >= 0.9


def test_the_recipe_was_chosen_and_checked_on_this_cpu(onnx_int8: OnnxEmbedder) -> None:
    choice = onnx_int8.choice
    assert choice is not None and choice.cpu_key == cpu_key() and choice.cpu_features == list(cpu_features())
    assert {c.recipe for c in choice.checks} == {r.name for r in RECIPES} | {FP32}
    chosen = next(c for c in choice.checks if c.recipe == choice.recipe)
    assert chosen.passed and all(getattr(chosen, key) >= bar for key, bar in CHECK_BARS.items())
    assert chosen.texts_per_s == max(c.texts_per_s for c in choice.checks if c.passed), "the fastest that passed"
    assert all(c.passed == all(getattr(c, k) >= b for k, b in CHECK_BARS.items()) for c in choice.checks)
    record = onnx_int8.record()
    assert record["recipe"] == choice.recipe and record["cpu_key"] == cpu_key()
    expected = f"minilm-fp32-onnx{RECIPE}" if choice.recipe == FP32 else f"minilm-int8-{choice.recipe}-{cpu_key()}"
    assert onnx_int8.model_id == expected


def test_a_cpu_with_other_features_checks_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_int8) -> None:
    """A quantized model is never reused on another CPU: its file and record are keyed by the features."""
    home = tmp_path / "home"
    monkeypatch.setenv("RETRIEVAL_HOME", str(home))
    monkeypatch.setattr(onnx_recipes, "RECIPES", RECIPES[:1])  # one candidate is enough here, and faster
    first = OnnxEmbedder("minilm", precision="int8", isolate=False)
    records = sorted(p.name for p in home.rglob("model-int8-*.json"))
    assert records == [f"model-int8-r{RECIPE}-{cpu_key()}.json"]
    monkeypatch.setattr(embed_onnx, "cpu_key", lambda: "othercpu00")
    monkeypatch.setattr(onnx_recipes, "cpu_key", lambda: "othercpu00")
    monkeypatch.setattr(onnx_recipes, "cpu_features", lambda: ("x86_64", "avx2", "imaginary_vnni"))
    other = OnnxEmbedder("minilm", precision="int8", isolate=False)
    assert other.choice is not None and other.choice.cpu_key == "othercpu00"
    assert other.choice.cpu_features == ["x86_64", "avx2", "imaginary_vnni"]
    assert len(list(home.rglob("model-int8-*.json"))) == 2, "the first CPU's choice is kept, not overwritten"
    assert first.model_id != other.model_id or first.recipe == other.recipe == FP32


def test_an_unreadable_choice_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_int8) -> None:
    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path))
    monkeypatch.setattr(onnx_recipes, "RECIPES", RECIPES[:1])
    first = OnnxEmbedder("minilm", precision="int8", isolate=False)
    record = onnx_path(model_path("minilm"), "int8").with_suffix(".json")
    assert read_choice(record) == first.choice
    record.write_text("{half a record")
    assert read_choice(record) is None
    again = OnnxEmbedder("minilm", precision="int8", isolate=False)
    assert again.choice is not None and read_choice(record) == again.choice


def test_check_measures_agreement_and_fails_what_is_off() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((200, 16)).astype("float32")
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    same = measure(reference, reference, "same", 10.0, 5.0)
    assert same.passed and same.mean_cosine == 1.0 and same.neighbour_agreement == 1.0 and same.speedup == 2.0
    noisy = reference + 0.3 * rng.standard_normal(reference.shape).astype("float32")
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    off = measure(reference, noisy, "noisy", 20.0, 5.0)
    assert not off.passed and off.neighbour_agreement < 0.95 and off.mean_cosine < 0.998
    assert agreement(reference, reference[::-1]) < 0.2, "neighbours are compared by row"


def test_check_texts_are_fixed_and_distinct() -> None:
    texts = check_texts(200)
    assert texts == check_texts(200) and len(set(texts)) == 200
    assert any("<hyperlink>" in t for t in texts) and any("#" in t for t in texts)


def test_empty_input_and_one_text(onnx_int8: OnnxEmbedder) -> None:
    assert onnx_int8.encode([]).shape == (0, 384)
    assert onnx_int8.encode(["Happy #EuropeDay!"]).shape == (1, 384)


def test_export_and_choice_are_cached(onnx_int8: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported or chosen again")

    monkeypatch.setattr(embed_onnx, "_export_fp32", no_export)
    monkeypatch.setattr(embed_onnx, "choose_recipe", no_export)
    monkeypatch.setattr(embed_onnx, "_prepare_in_child", no_export)
    again = OnnxEmbedder("minilm", precision="int8")
    np.testing.assert_array_equal(again.encode(["a tweet"]), onnx_int8.encode(["a tweet"]))
    assert again.choice == onnx_int8.choice
    assert onnx_path(model_path("minilm"), "fp32").stat().st_size > 10_000_000


def test_corrupt_cached_export_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path))
    path = onnx_path(model_path("minilm"), "fp32")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a model")
    rebuilt = OnnxEmbedder("minilm", precision="fp32")
    reference = OnnxEmbedder("minilm", precision="fp32", isolate=False)
    np.testing.assert_array_equal(rebuilt.encode(["a tweet"]), reference.encode(["a tweet"]))
    assert path.stat().st_size > 10_000_000 and not list(path.parent.glob("tmp*"))


def test_an_export_that_never_loads_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVAL_HOME", str(tmp_path))
    monkeypatch.setattr(embed_onnx, "_export_fp32", lambda folder, out: out.write_bytes(b"junk"))
    with pytest.raises(ModelMissing, match="cannot load the exported model"):
        OnnxEmbedder("minilm", precision="fp32", isolate=False)


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
    info = read_manifest(tmp_path / "idx").text.embedder
    assert info == {"name": "minilm", "dim": 384, "precision": "int8", **onnx_int8.record()}
    assert info["cpu_key"] == cpu_key() and info["cpu_features"] == list(cpu_features())
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
    with pytest.raises(RetrievalError, match="precision 'int4' is not one of fp32, int8, fp16"):
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
        "import sys; from retrieval.embed.text import text_embedder; "
        "e = text_embedder('minilm', precision='int8', device='cpu'); e.encode(['a tweet']); "
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_mpnet_int8_agrees_with_fp32(tweets: list[str]) -> None:
    from retrieval.embed.text import SentenceEmbedder

    reference = SentenceEmbedder("mpnet", device="cpu", precision="fp32").encode(tweets[:100])
    cos = cosines(OnnxEmbedder("mpnet", precision="int8").encode(tweets[:100]), reference)
    # the bar of issue #6, whichever recipe this CPU chose (docs/benchmarks.md has the figures by CPU)
    assert cos.mean() >= 0.99 and cos.min() > 0.95


def test_fp16_on_cuda_is_close_to_fp32(tweets: list[str], reference: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    vectors = text_embedder("minilm", precision="fp16", device="cuda").encode(tweets)
    assert cosines(vectors, reference).min() > 0.999
