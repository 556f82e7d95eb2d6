"""CLIP embedder and media descriptions, with random ViT-S-32 weights saved to a file and loaded back.

With random weights the vectors mean nothing, so these tests check the mechanics: loading
through `checkpoint=`, shapes, normalisation, determinism, batching, errors, and that the
loaded model computes exactly what the saved one did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.embed.clip import ClipEmbedder, checkpoint_digest, save_checkpoint
from retrieval.embed.describe import MediaDescriber, load_labels
from retrieval.errors import DataError, ModelMissing
from tests.conftest import make_image

TEXTS = ["New burger on the menu today", "Join our engineering team <hyperlink>", "Happy #EuropeDay!", "x " * 200]


def reference_vectors(model, preprocess, texts=(), images=()) -> np.ndarray:
    """What open_clip itself computes, to compare the embedder against."""
    import open_clip

    with torch.no_grad():
        if texts:
            out = model.encode_text(open_clip.get_tokenizer("ViT-S-32")(list(texts)), normalize=True)
        else:
            out = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
    return out.numpy()


def test_text_and_image_vectors_share_one_normalised_space(clip_embedder, generated_images) -> None:
    texts = clip_embedder.encode(TEXTS)
    images = clip_embedder.encode_images(generated_images)
    assert clip_embedder.dim == 384 and clip_embedder.name == "clip:ViT-S-32"
    assert texts.shape == (len(TEXTS), 384) and images.shape == (len(generated_images), 384)
    assert texts.dtype == images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-6)
    assert clip_embedder.encode([]).shape == clip_embedder.encode_images([]).shape == (0, 384)


def test_loaded_checkpoint_computes_what_the_saved_model_did(clip_embedder, clip_random_model, generated_images):
    model, preprocess = clip_random_model
    expected = reference_vectors(model, preprocess, texts=TEXTS)
    np.testing.assert_allclose(clip_embedder.encode(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(
        clip_embedder.encode_images(generated_images[:3]),
        reference_vectors(model, preprocess, images=generated_images[:3]),
        atol=1e-5,
    )


def test_deterministic_and_batching_does_not_change_vectors(clip_embedder, generated_images, monkeypatch) -> None:
    once = clip_embedder.encode_images(generated_images)
    np.testing.assert_array_equal(once, clip_embedder.encode_images(generated_images))
    monkeypatch.setattr(clip_embedder, "batch_size", 3)
    np.testing.assert_allclose(clip_embedder.encode_images(generated_images), once, atol=1e-5)
    one_by_one = np.concatenate([clip_embedder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(clip_embedder.encode(TEXTS), one_by_one, atol=1e-5)


def test_identical_image_is_its_own_nearest_neighbour(clip_embedder, generated_images) -> None:
    gallery = clip_embedder.encode_images(generated_images)
    query = clip_embedder.encode_images([make_image(5, generated_images[5].size)])
    scores = gallery @ query[0]
    assert int(np.argmax(scores)) == 5 and scores[5] == pytest.approx(1.0, abs=1e-5)
    assert np.sort(scores)[-2] < 1.0 - 1e-4


def test_pt_checkpoint_loads_weights_only_and_model_id_follows_the_bytes(
    tmp_path: Path, clip_random_model, clip_checkpoint: Path, clip_embedder
) -> None:
    pt = save_checkpoint(clip_random_model[0], tmp_path / "vit-s-32.pt")
    from_pt = ClipEmbedder("ViT-S-32", pt, device="cpu")
    np.testing.assert_allclose(from_pt.encode(TEXTS), clip_embedder.encode(TEXTS), atol=1e-6)
    assert from_pt.model_id == f"clip:ViT-S-32:{checkpoint_digest(pt)[:16]}" != clip_embedder.model_id

    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(clip_checkpoint.read_bytes())
    assert ClipEmbedder("ViT-S-32", renamed, device="cpu").model_id == clip_embedder.model_id

    from safetensors.torch import load_file, save_file

    state = load_file(str(clip_checkpoint))
    state["text_projection"] = state["text_projection"] * -1
    changed = tmp_path / "changed.safetensors"
    save_file(state, str(changed))
    other = ClipEmbedder("ViT-S-32", changed, device="cpu")
    assert other.model_id != clip_embedder.model_id
    np.testing.assert_allclose(other.encode(TEXTS[:1]), -clip_embedder.encode(TEXTS[:1]), atol=1e-5)


class _RunsCode:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pt_with_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsCode(marker)}, evil)
    with pytest.raises(ModelMissing, match="evil.pt: not a usable ViT-S-32 checkpoint"):
        ClipEmbedder("ViT-S-32", evil, device="cpu")
    assert not marker.exists()


def test_without_checkpoint_one_line_says_how_to_give_one() -> None:
    with pytest.raises(ModelMissing) as info:
        ClipEmbedder("ViT-B-32")
    message = str(info.value)
    assert "\n" not in message and "nothing is downloaded" in message and "--" not in message, "no CLI flag"
    assert info.value.hint == "clip_checkpoint"


@pytest.mark.parametrize(
    ("model", "checkpoint", "match"),
    [
        ("ViT-S-32", "openai", "openai: CLIP checkpoint file not found"),  # a hub tag, never fetched
        ("ViT-Q-99", "x.safetensors", "unknown CLIP model 'ViT-Q-99'"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "x.safetensors", "unknown CLIP model"),
    ],
)
def test_bad_model_or_path_is_one_line(model: str, checkpoint: str, match: str) -> None:
    with pytest.raises(ModelMissing, match=match) as info:
        ClipEmbedder(model, checkpoint)
    assert "\n" not in str(info.value)


def test_corrupt_or_mismatched_checkpoint_is_one_line_naming_the_file(tmp_path: Path, clip_checkpoint: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(clip_checkpoint.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path, model in [(corrupt, "ViT-S-32"), (garbage, "ViT-S-32"), (clip_checkpoint, "ViT-B-32")]:
        with pytest.raises(ModelMissing, match=f"{path.name}: not a usable {model} checkpoint") as info:
            ClipEmbedder(model, path, device="cpu")
        assert "\n" not in str(info.value)
    scripted = tmp_path / "openai-style.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(
        ModelMissing, match="openai-style.pt: not a usable ViT-S-32 checkpoint \\(a TorchScript archive"
    ):
        ClipEmbedder("ViT-S-32", scripted, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_vectors_in_fp16_autocast(clip_checkpoint: Path, clip_embedder, generated_images) -> None:
    gpu = ClipEmbedder("ViT-S-32", clip_checkpoint, device="cuda")
    assert next(gpu.model.parameters()).is_cuda
    for encode, cpu_encode, items in [
        (gpu.encode, clip_embedder.encode, TEXTS),
        (gpu.encode_images, clip_embedder.encode_images, generated_images),
    ]:
        vectors = encode(items)
        assert vectors.dtype == np.float32 and vectors.shape == (len(items), 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
        assert np.min(np.sum(vectors * cpu_encode(items), axis=1)) > 0.99


# --- media descriptions ---


def test_shipped_vocabulary_is_clean() -> None:
    labels = load_labels()
    assert len(labels) >= 300
    assert len(set(labels)) == len(labels)
    assert all(label and label == label.strip() and not label.startswith("#") for label in labels)
    assert not [label for label in labels if "," in label], "describe() joins labels with commas"
    assert {"a burger", "a restaurant", "food packaging", "a company logo", "a smartphone"} <= set(labels)


def test_label_file_skips_comments_blanks_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("# food\na burger\n\n  a pizza  \na burger\n# places\na beach\n")
    assert load_labels(path) == ["a burger", "a pizza", "a beach"]
    path.write_text("# only comments\n\n")
    with pytest.raises(DataError, match="labels.txt: no labels"):
        load_labels(path)
    with pytest.raises(DataError, match="cannot read the label file"):
        load_labels(tmp_path / "absent.txt")


@pytest.fixture(scope="module")
def describer(clip_embedder, tmp_path_factory: pytest.TempPathFactory) -> MediaDescriber:
    """Every tenth shipped label: the mechanics are the same, and random-weight CPU encoding is slow."""
    return MediaDescriber(clip_embedder, load_labels()[::10], cache=tmp_path_factory.mktemp("labels"))


def test_top_labels_are_k_vocabulary_labels_sorted_by_probability(describer, generated_images) -> None:
    ranked = describer.top_labels(generated_images[:4], k=5)
    assert len(ranked) == 4
    image_vectors = describer.clip.encode_images(generated_images[:4])
    for row, vector in zip(ranked, image_vectors):
        assert len(row) == 5 and {label for label, _ in row} <= set(describer.labels)
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
        assert row[0][0] == describer.labels[int(np.argmax(describer.label_vectors @ vector))]
    assert describer.top_labels([]) == []


def test_probabilities_are_softmax_over_all_labels_with_clip_scale(clip_embedder, generated_images) -> None:
    labels = ["a burger", "a beach", "a dog"]
    describer = MediaDescriber(clip_embedder, labels, template="{}", cache=False)
    ranked = describer.top_labels(generated_images[:1], k=10)[0]
    assert len(ranked) == 3 and sum(p for _, p in ranked) == pytest.approx(1.0)
    image = clip_embedder.encode_images(generated_images[:1])[0]
    logits = clip_embedder.logit_scale * clip_embedder.encode(labels) @ image
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert dict(ranked) == pytest.approx(dict(zip(labels, expected.tolist())), abs=1e-5)
    with pytest.raises(ValueError, match="has no"):
        MediaDescriber(clip_embedder, labels, template="a photo", cache=False)


def test_describe_is_the_generator_media_text(describer, generated_images) -> None:
    text = describer.describe(generated_images[0], k=3)
    assert text.startswith("photo of ")
    parts = text.removeprefix("photo of ").split(", ")
    assert parts == [label for label, _ in describer.top_labels(generated_images[:1], k=3)[0]]
    assert describer.describe_all(generated_images[:2], k=2)[0] == describer.describe(generated_images[0], k=2)


def test_label_vectors_are_cached_by_model_template_and_labels(clip_embedder, tmp_path: Path, monkeypatch) -> None:
    labels = ["a burger", "a beach", "a dog"]
    first = MediaDescriber(clip_embedder, labels, cache=tmp_path)
    (cached,) = tmp_path.glob("*.npy")
    monkeypatch.setattr(clip_embedder, "encode", lambda texts, **_: pytest.fail("label vectors were recomputed"))
    np.testing.assert_array_equal(
        MediaDescriber(clip_embedder, labels, cache=tmp_path).label_vectors, first.label_vectors
    )
    monkeypatch.undo()
    MediaDescriber(clip_embedder, labels, template="{}", cache=tmp_path)
    MediaDescriber(clip_embedder, labels[:2], cache=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    cached.write_bytes(b"damaged")
    np.testing.assert_allclose(MediaDescriber(clip_embedder, labels, cache=tmp_path).label_vectors, first.label_vectors)
    assert np.load(cached).shape == (3, 384), "the damaged file was rewritten"
