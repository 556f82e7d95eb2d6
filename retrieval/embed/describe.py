"""Describe an image in words by zero-shot CLIP scoring against a shipped label vocabulary.

The challenge teams captioned tweet media with BLIP-2 for their generators; no captioner ships
offline, but a CLIP model (given as a checkpoint) can rank the labels of `labels.txt` (objects,
food, scenes, people, products, events, brand graphics) for an image. The top labels become
the generator's --media text, e.g. "photo of a burger, a restaurant, food packaging".
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.config import cache_dir
from retrieval.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

    from retrieval.embed.clip import ClipEmbedder

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of {}."


def load_labels(path: str | Path | None = None) -> list[str]:
    """Labels one per line, blank lines and # comments skipped, duplicates kept once (first wins).

    None reads the vocabulary shipped with the package.
    """
    if path is None:
        text = resources.files("retrieval.embed").joinpath("labels.txt").read_text(encoding="utf-8")
        where = "retrieval/embed/labels.txt"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read the label file ({e})") from None
        where = str(path)
    lines = (line.strip() for line in text.splitlines())
    labels = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not labels:
        raise DataError(f"{where}: no labels (one per line; # starts a comment)")
    return labels


class MediaDescriber:
    """Ranks a fixed label vocabulary for images with CLIP; the label vectors are computed once.

    Encoding a few hundred labels takes a minute on a small CPU, so the vectors are kept in
    `cache` (default: <cache_dir>/clip-labels), keyed by the model id, the template and the
    labels; `cache=False` turns that off.
    """

    def __init__(
        self,
        clip: ClipEmbedder,
        labels: Sequence[str] | None = None,
        *,
        template: str = DEFAULT_TEMPLATE,
        cache: Path | bool = True,
    ) -> None:
        self.clip = clip
        self.labels = list(dict.fromkeys(labels)) if labels is not None else load_labels()
        if not self.labels:
            raise DataError("no labels to describe images with")
        if "{}" not in template:
            raise ValueError(f"Template {template!r} has no {{}} for the label")
        self.template = template
        folder = None if cache is False else cache_dir() / "clip-labels" if cache is True else Path(cache)
        self.label_vectors = self._label_vectors(folder)

    def _label_vectors(self, folder: Path | None) -> np.ndarray:
        key = hashlib.sha1("\n".join([self.clip.model_id, self.template, *self.labels]).encode("utf-8")).hexdigest()
        path = folder / f"{key}.npy" if folder is not None else None
        if path is not None and path.is_file():
            try:
                vectors = np.load(path, allow_pickle=False)
                if vectors.shape == (len(self.labels), self.clip.dim):
                    return vectors
            except (OSError, ValueError):
                pass
            log.warning("ignoring a damaged label-vector cache file %s", path)
        vectors = self.clip.encode([self.template.format(label) for label in self.labels])
        if path is not None:
            _save_npy(path, vectors)
        return vectors

    def top_labels(self, images: Sequence[Image.Image], k: int = 3) -> list[list[tuple[str, float]]]:
        """For each image, the k most probable labels with their probabilities, best first.

        Probabilities are a softmax over all labels of CLIP's scaled cosine similarities, as in
        CLIP's zero-shot classification, so the k shown sum to at most 1.
        """
        if not images:
            return []
        k = max(1, min(k, len(self.labels)))
        logits = self.clip.logit_scale * (self.clip.encode_images(images) @ self.label_vectors.T)
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.labels[j], float(row[j])) for j in order] for row, order in zip(probs, best)]

    def describe(self, image: Image.Image, k: int = 3) -> str:
        """'photo of a burger, a restaurant, food packaging': the --media text for the generator."""
        return self.describe_all([image], k)[0]

    def describe_all(self, images: Sequence[Image.Image], k: int = 3) -> list[str]:
        """`describe` for many images in one batched CLIP pass."""
        return ["photo of " + ", ".join(label for label, _ in ranked) for ranked in self.top_labels(images, k)]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write to a temporary file, then rename: a reader never sees half an array. A cache that
    cannot be written is only a warning."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            np.save(f, array, allow_pickle=False)
        tmp.replace(path)
    except OSError as e:
        log.warning("cannot cache label vectors in %s: %s", path, e)
        tmp.unlink(missing_ok=True)
