"""Image vectors in an index: folder and tweet builds, image search, filters, add, prediction, CLI.

CLIP runs with random ViT-S-32 weights loaded through a checkpoint file (no weights ship
anywhere), so these tests check the mechanics, not what the neighbours mean.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import LABELLED, make_image

from retrieval.errors import RetrievalError
from retrieval.evaluation.search import eval_search
from retrieval.index.filters import Filters
from retrieval.index.manifest import read_manifest
from retrieval.index.reader import IndexReader
from retrieval.index.verify import verify
from retrieval.io.media import MediaFetcher
from retrieval.pipeline.build import ImageSource, add_to_index, build_index
from retrieval.query.search import Searcher
from retrieval.tasks.likes.history import IndexHistory
from retrieval.tasks.likes.predict import PredictConfig, Query, predict_likes


def _source(clip_embedder, folder: Path | None = None) -> ImageSource:
    return ImageSource(clip_embedder, MediaFetcher(network=False), folder=folder, batch=16)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 real labelled tweets that have ids (their media URLs are dead offline)."""
    table = pq.read_table(LABELLED)
    table = table.filter(pc.is_valid(table.column("id"))).slice(0, 120)
    path = tmp_path_factory.mktemp("labelled") / "labelled.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def local_images(tmp_path_factory: pytest.TempPathFactory, labelled: Path) -> Path:
    """Local pictures for 30 of those tweets, named by tweet id; tweet 1 has two, one of them broken."""
    folder = tmp_path_factory.mktemp("local")
    ids = pq.read_table(labelled).column("id").to_pylist()[:30]
    for seed, tweet_id in enumerate(ids):
        make_image(100 + seed).save(folder / f"{tweet_id}.png")
    make_image(999).save(folder / f"{ids[0]}_2.jpg")
    (folder / f"{ids[1]}_2.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    return folder


@pytest.fixture(scope="module")
def image_index(tmp_path_factory, labelled: Path, local_images: Path, minilm, clip_embedder) -> Path:
    out = tmp_path_factory.mktemp("idx") / "both"
    build_index(labelled, out, embedder=minilm, images=_source(clip_embedder, local_images), progress=False)
    return out


def test_folder_of_images_finds_the_same_image_first(tmp_path: Path, image_folder: Path, clip_embedder) -> None:
    report = build_index(image_folder, tmp_path / "pics", images=_source(clip_embedder), progress=False)
    manifest = report.manifest
    assert manifest.text.shards == () and manifest.image.shards[0].rows == 8
    assert report.rejected == 0 and "8 embedded" in report.summary()
    assert verify(tmp_path / "pics") == []
    with IndexReader(tmp_path / "pics") as reader:
        assert eval_search(reader, space="image")["recall_at_10"] == 1.0
    searcher = Searcher.open(tmp_path / "pics", clip=clip_embedder)
    for name in ("img3.png", "img4.jpg"):
        image = MediaFetcher(network=False).fetch([str(image_folder / name)])[0].image
        hits = searcher.similar_image(image, k=3)
        assert json.loads(hits[0].tweet["media"])[0]["url"].endswith(name)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[1].score < hits[0].score
    with pytest.raises(RetrievalError, match="no text vectors"):
        searcher.similar("a burger", k=3)


def test_a_broken_image_in_a_folder_is_a_reject(tmp_path: Path, image_folder: Path, clip_embedder) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_image(1).save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    report = build_index(folder, tmp_path / "idx", images=_source(clip_embedder), progress=False)
    assert (report.indexed, report.rejected) == (1, 1)
    reject = json.loads((tmp_path / "idx" / "rejects.jsonl").read_text())
    assert reject["field"] == "media" and reject["value"].endswith("broken.jpg")


def test_tweets_get_local_images_and_count_missing_media(image_index: Path, labelled: Path) -> None:
    manifest = read_manifest(image_index)
    with IndexReader(image_index) as reader:
        stats, listed = reader.stats(), reader.missing_media()
    assert (stats["tweets_with_images"], stats["image_vectors"]) == (30, 31), "tweet 1 has two images"
    assert manifest.image.shards[0].rows == 31
    missing = manifest.image.missing_media
    assert Counter(problem for _, _, problem in listed) == missing, "each missing medium is listed with its reason"
    assert "corrupt image" in missing or "not an image" in missing
    assert "offline" in missing, "dead URLs of the tweets without local copies are missing, never noise"
    assert verify(image_index) == []


def test_image_search_filters_and_counts_each_tweet_once(image_index: Path, local_images: Path, clip_embedder) -> None:
    searcher = Searcher.open(image_index, clip=clip_embedder)
    image = MediaFetcher(network=False).fetch([str(next(local_images.glob("*_2.jpg")))])[0].image
    hits = searcher.similar_image(image, k=10)
    ids = [h.tweet["vec_id"] for h in hits]
    assert len(ids) == len(set(ids)) == 10
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    account = hits[3].tweet["username"]
    only = searcher.similar_image(image, k=5, filters=Filters(username=account))
    assert only and {h.tweet["username"] for h in only} == {account}
    text_hits = searcher.similar("a new store opening", k=5, space="image")
    assert len(text_hits) == 5, "a text query through CLIP's text tower searches the image vectors"


@pytest.mark.parametrize("first_images", [True, False], ids=["grows", "starts"])
def test_add_extends_the_image_set(
    tmp_path: Path, labelled: Path, local_images: Path, minilm, clip_embedder, first_images
) -> None:
    copy = tmp_path / "idx"
    folder = local_images if first_images else None
    build_index(labelled, copy, embedder=minilm, images=_source(clip_embedder, folder), progress=False)
    more = tmp_path / "more.parquet"
    table = pq.read_table(LABELLED)
    table = table.filter(pc.is_valid(table.column("id"))).slice(120, 20)
    pq.write_table(table, more)
    folder = tmp_path / "new"
    folder.mkdir()
    new_id = table.column("id").to_pylist()[0]
    make_image(4242).save(folder / f"{new_id}.png")
    report = add_to_index(more, copy, embedder=minilm, images=_source(clip_embedder, folder), progress=False)
    assert len(report.manifest.image.shards) == (2 if first_images else 1) and verify(copy) == []
    hits = Searcher.open(copy, clip=clip_embedder).similar_image(make_image(4242), k=1)
    assert hits[0].tweet["tweet_id"] == new_id


def test_prediction_weighs_image_neighbours_apart(image_index: Path, local_images: Path, minilm, clip_embedder) -> None:
    reader = IndexReader(image_index)
    history = IndexHistory(reader)
    config = PredictConfig(k=20, k_account=5, image_weight=0.3)
    text = minilm.encode(["Our new burger is here <hyperlink>"])
    image = clip_embedder.encode_images([make_image(105)])[0]
    query = [Query("TimHortonsPH")]
    with_image = predict_likes(history, text, query, config, images=[image])[0]
    text_only = predict_likes(history, text, query, config)[0]
    weight = {"text": 0.0, "image": 0.0}
    for n in with_image.neighbours:
        weight[n.space] += n.weight
    assert weight["image"] == pytest.approx(0.3) and weight["text"] == pytest.approx(0.7)
    assert {n.space for n in text_only.neighbours} == {"text"}
    assert with_image.log_likes != text_only.log_likes


def test_cli_without_a_checkpoint_is_one_line(tmp_path: Path, minilm_index: Path, image_folder: Path) -> None:
    from retrieval.apps.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["similar", "--image", str(image_folder / "img1.png"), "--index", str(minilm_index)])
    assert result.exit_code == 1 and "--clip-checkpoint" in result.output and len(result.output.splitlines()) == 1
    result = runner.invoke(cli, ["index", "build", str(image_folder), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "--clip-checkpoint" in result.output and not (tmp_path / "x").exists()


def test_cli_builds_and_queries_images(tmp_path: Path, image_folder: Path, clip_checkpoint: Path) -> None:
    from retrieval.apps.cli import cli

    runner = CliRunner()
    out = tmp_path / "pics"
    clip = ["--clip-checkpoint", str(clip_checkpoint), "--clip-model", "ViT-S-32"]
    result = runner.invoke(cli, ["index", "build", str(image_folder), "--out", str(out), *clip])
    assert result.exit_code == 0, result.output
    assert "images: 8 embedded" in result.output
    query = str(image_folder / "img5.png")
    result = runner.invoke(cli, ["similar", "--image", query, "--index", str(out), "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["media"][0]["url"].endswith("img5.png"), "the checkpoint comes from the index"
    result = runner.invoke(cli, ["similar", "--image", str(tmp_path / "nope.png"), "--index", str(out)])
    assert result.exit_code == 1 and "nope.png" in result.output


def test_image_set_needs_its_own_model(image_index: Path, minilm) -> None:
    reader = IndexReader(image_index)
    assert reader.vector_set("image").ntotal == 31
    with pytest.raises(RetrievalError, match="image search needs the CLIP model"):
        Searcher(reader, minilm).similar_image(make_image(1))
    assert np.isfinite([s for _, s in reader.search(minilm.encode(["hello"]), 3)[0]]).all()


def test_generation_takes_exemplars_from_image_neighbours(
    image_index: Path, labelled: Path, minilm, clip_embedder
) -> None:
    from retrieval.tasks.generate.rag import Brief, GenerateConfig, find_exemplars

    table = pq.read_table(labelled)
    seed = 7
    owner = table.column("username")[seed].as_py()
    searcher = Searcher.open(image_index, minilm, clip=clip_embedder)
    brief = Brief(username=owner, media="a photo")
    config = GenerateConfig(exemplars=4)
    image = clip_embedder.encode_images([make_image(100 + seed)])[0]
    with_image = find_exemplars(searcher, brief, config, image=image)
    text_only = find_exemplars(searcher, brief, config)
    wanted = table.column("id")[seed].as_py()
    assert wanted in [e.tweet_id for e in with_image], "the tweet with the nearest picture is an exemplar"
    assert len({e.vec_id for e in with_image}) == len(with_image) == len(text_only)


def test_cli_generate_describes_the_image(
    image_index: Path, labelled: Path, local_images: Path, clip_checkpoint
) -> None:
    from retrieval.apps.cli import cli

    owner = pq.read_table(labelled).column("username")[3].as_py()
    args = [
        "generate",
        "--index",
        str(image_index),
        "--username",
        owner,
        "--image",
        str(next(local_images.glob("*.png"))),
    ]
    args += ["--clip-checkpoint", str(clip_checkpoint), "--clip-model", "ViT-S-32", "--max-tokens", "16", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("media: photo of "), "CLIP's top labels stand in for --media"
    answer = json.loads(result.stdout)
    assert answer["candidates"][0]["exemplars"]


def test_media_given_as_local_paths_json_lists_or_urls_is_embedded(
    tmp_path: Path, image_folder: Path, minilm, clip_embedder
) -> None:
    """The media column as users have it: a path, a JSON list of paths, a URL (offline here)."""
    pictures = sorted(p for p in image_folder.iterdir() if p.suffix in (".png", ".jpg"))
    rows = [{"id": i, "content": f"tweet {i}", "media": str(p)} for i, p in enumerate(pictures[:4])]
    rows.append({"id": 10, "content": "two pictures", "media": json.dumps([str(pictures[4]), str(pictures[5])])})
    rows.append({"id": 11, "content": "a list", "media": [str(pictures[6])]})
    rows.append({"id": 12, "content": "gone", "media": str(tmp_path / "missing.png")})
    rows.append({"id": 13, "content": "online", "media": "https://example.com/a.jpg"})
    path = tmp_path / "local.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_index(path, tmp_path / "idx", embedder=minilm, images=_source(clip_embedder), progress=False)
    assert report.images is not None and len(report.images.vectors) == 7
    assert sorted(set(report.images.rows.tolist())) == [0, 1, 2, 3, 4, 5]
    assert report.images.missing == {"file not found": 1, "offline": 1}
