"""Shared fixtures: real tweets read in place from ../shared/data, MiniLM as the fast real model."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

SHARED_DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BEHAVIOUR = SHARED_DATA / "adobe_behaviour_test_time.parquet"
CONTENT = SHARED_DATA / "adobe_content_test_time.parquet"
LABELLED = SHARED_DATA / "adobe_labelled.parquet"


HASH_EMBEDDER = textwrap.dedent(
    """
    import hashlib
    import numpy as np

    class HashEmbedder:
        '''A vector from each text's hash: deterministic, no model, so the tests (and the
        subprocesses they start) that are not about embedding run fast; equal texts, equal vectors.'''

        name = "hash"
        dim = 16

        def encode(self, texts, *, progress=False):
            rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], np.uint8) for t in texts]
            x = np.array(rows, dtype=np.float32).reshape(-1, 16) - 127.5
            return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-6)
    """
)
"""Source of the fake embedder, for tests that start subprocesses."""
_namespace: dict = {}
exec(HASH_EMBEDDER, _namespace)
HashEmbedder = _namespace["HashEmbedder"]

USER_MODELS = Path(os.environ.get("RETRIEVAL_HOME") or Path.home() / ".cache" / "retrieval") / "models"
"""The models ./setup.sh prepared (`cli.py models prepare`): MPNet assembled, int8 models for this CPU."""


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache folder for the session, seeded with the models setup prepared: MPNet's
    folder by a link (its ONNX files are keyed by its resolved path), the ONNX folders and any
    assembled GGUF by hard links (the code replaces files, never writes into them). Caches of vectors, media and
    labels start empty. Without prepared models the session makes its own, as a user's first
    build would (minutes for MPNet)."""
    home = tmp_path_factory.getbasetemp() / "home"
    mpnet = USER_MODELS / "all-mpnet-base-v2"
    if (mpnet / "config.json").exists():
        (home / "models").mkdir(parents=True, exist_ok=True)
        (home / "models" / mpnet.name).symlink_to(mpnet, target_is_directory=True)
    for folder in (USER_MODELS / "onnx").glob("*") if (USER_MODELS / "onnx").is_dir() else []:
        shutil.copytree(folder, home / "models" / "onnx" / folder.name, copy_function=_link_or_copy)
    for gguf in USER_MODELS.glob("*.gguf") if USER_MODELS.is_dir() else []:  # assembled language models
        (home / "models").mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(gguf), str(home / "models" / gguf.name))
    return home


@pytest.fixture(autouse=True)
def offline_home(session_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, and the session's private cache folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("RETRIEVAL_HOME", str(session_home))


@pytest.fixture(scope="session")
def sample_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 600 real tweets with text, as a small parquet file in tmp."""
    path = tmp_path_factory.mktemp("data") / "sample.parquet"
    pq.write_table(pq.read_table(BEHAVIOUR).slice(0, 600), path)
    return path


@pytest.fixture(scope="session")
def minilm():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from retrieval.embed.text import SentenceEmbedder

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
    from retrieval.pipeline.build import build_index

    out = tmp_path_factory.mktemp("indexes") / "sample"
    build_index(sample_parquet, out, embedder=minilm, progress=False)
    return out


@pytest.fixture(scope="session")
def clip_random_model():
    """A ViT-S-32 with random weights (seeded): no CLIP weights ship anywhere, so tests use these."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    return model.eval(), preprocess


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory, clip_random_model) -> Path:
    """The random ViT-S-32 saved as .safetensors: what --clip-checkpoint is given in tests."""
    from retrieval.embed.clip import save_checkpoint

    return save_checkpoint(clip_random_model[0], tmp_path_factory.mktemp("clip") / "vit-s-32.safetensors")


@pytest.fixture(scope="session")
def clip_embedder(clip_checkpoint: Path):
    """ClipEmbedder('ViT-S-32') on the CPU, loaded back from `clip_checkpoint`."""
    from retrieval.embed.clip import ClipEmbedder

    return ClipEmbedder("ViT-S-32", clip_checkpoint, device="cpu")


def make_image(seed: int, size: tuple[int, int] = (160, 120)):
    """A distinct, deterministic picture: a two-colour gradient with a coloured disc and some noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    pixels = start * (1 - ramp) + end * ramp + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 50))
    ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


@pytest.fixture(scope="session")
def generated_images() -> list:
    """Eight distinct generated RGB images of a few sizes."""
    return [make_image(seed, (160 + 40 * (seed % 3), 120 + 30 * (seed % 2))) for seed in range(8)]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory, generated_images: list) -> Path:
    """The generated images as files (png and jpg) in one folder, plus a file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(generated_images):
        image.save(folder / (f"img{i}.png" if i % 2 else f"img{i}.jpg"))
    (folder / "notes.txt").write_text("not an image")
    return folder
