"""Text embedders: the protocol, the one factory, and the PyTorch (sentence-transformers) path.

Models are found by `retrieval.embed.models` (installed packages or a local folder, never a hub); the
ONNX int8 path is `retrieval.embed.onnx`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from retrieval.config import default_device
from retrieval.embed.models import MAX_SEQ_LENGTH, model_path
from retrieval.errors import ModelMissing, RetrievalError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from retrieval.embed.onnx import OnnxEmbedder

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS = ("fp32", "int8", "fp16")
CPU_DEFAULT_PRECISION: Precision = "int8"
"""ONNX Runtime int8: passed the bars of bench/bench_embed.py on 1,000 real tweets (docs/benchmarks.md)."""


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows of a fixed width."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def default_precision(device: str) -> Precision:
    """fp16 on CUDA; on the CPU, the precision that passed the agreement checks in bench_embed."""
    return "fp16" if device == "cuda" else CPU_DEFAULT_PRECISION


def text_embedder(
    name: str = "mpnet",
    *,
    precision: Precision | None = None,
    device: str | None = None,
    batch_size: int = 64,
    threads: int | None = None,
) -> SentenceEmbedder | OnnxEmbedder:
    """The one place an embedder is made: int8 runs ONNX Runtime on the CPU, fp32 and fp16 PyTorch."""
    device = device or default_device()
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise RetrievalError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}", hint="precision", value="int8"
        )
    if precision == "int8":
        from retrieval.embed.onnx import OnnxEmbedder

        return OnnxEmbedder(name, precision="int8", batch_size=batch_size, threads=threads)
    return SentenceEmbedder(name, device=device, precision=precision, batch_size=batch_size)


def index_precision(info: Mapping[str, Any], device: str | None = None) -> Precision:
    """The precision an index was built with, for its queries (fp32 for manifests older than the key).

    An fp16 index queried without CUDA uses fp32: the two agree to a cosine of about 0.9999.
    """
    precision = info.get("precision", "fp32")
    if precision == "fp16" and (device or default_device()) != "cuda":
        return "fp32"
    return precision


def embedder_for_index(
    info: Mapping[str, Any], *, batch_size: int = 64, threads: int | None = None
) -> SentenceEmbedder | OnnxEmbedder:
    """The embedder that matches a manifest's `embedder` entry: same model, same precision.

    An int8 index built on a CPU with other features is queried with this CPU's own recipe, chosen
    and checked against fp32 here (never the other CPU's quantized model): both agree with fp32.
    """
    embedder = text_embedder(info["name"], precision=index_precision(info), batch_size=batch_size, threads=threads)
    built_on, here = info.get("cpu_key"), getattr(embedder, "record", dict)().get("cpu_key")
    if built_on and here and built_on != here:
        log.info(
            "index built with int8 recipe %s on another CPU (%s); this CPU uses %s, checked here",
            info.get("recipe"), " ".join(info.get("cpu_features", [])), embedder.record()["recipe"],
        )  # fmt: skip
    return embedder


def embedder_info(embedder: Embedder) -> dict[str, Any]:
    """What a manifest records about the embedder, so queries can use the same one; for the ONNX
    path also the recipe, the CPU features it was chosen on and its check against fp32."""
    record = getattr(embedder, "record", None)
    return {
        "name": embedder.name,
        "dim": embedder.dim,
        "precision": getattr(embedder, "precision", "fp32"),
        **(record() if callable(record) else {}),
    }


class SentenceEmbedder:
    """A sentence-transformers model loaded from a local folder, batched and L2-normalised.

    `fp32` is the reference (and the plain path the int8 ONNX embedder is measured against);
    `fp16` is for CUDA.
    """

    def __init__(
        self,
        name: str = "mpnet",
        *,
        device: str | None = None,
        precision: Precision | None = None,
        batch_size: int = 64,
        max_seq_length: int | None = MAX_SEQ_LENGTH,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = name
        self.device = device or default_device()
        self.precision = precision or ("fp16" if self.device == "cuda" else "fp32")
        if self.precision not in ("fp32", "fp16"):
            raise RetrievalError(
                f"precision {self.precision!r} is not one of fp32, fp16 here", hint="precision", value="fp32"
            )
        if self.precision == "fp16" and self.device != "cuda":
            raise RetrievalError(
                "fp16 needs a CUDA device; on the CPU use int8 or fp32", hint="precision", value="int8"
            )
        self.model_id = f"{name}-{self.precision}"
        self.batch_size = batch_size
        path = model_path(name)
        from sentence_transformers import SentenceTransformer

        try:
            self.model: SentenceTransformer = SentenceTransformer(str(path), device=self.device)
        except (OSError, ValueError) as e:
            raise ModelMissing(f"{path}: cannot load the model ({e})") from None
        if max_seq_length:
            self.model.max_seq_length = min(self.model.max_seq_length, max_seq_length)
        if self.precision == "fp16":
            self.model.half()
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ModelMissing(f"{path}: the model does not say its embedding width")
        self.dim = int(dim)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def check_same_embedder(info: Mapping[str, Any], embedder: Embedder, where: Path) -> None:
    """New vectors must be comparable with an index's (`info`: what it recorded about its
    embedder): same width, same precision."""
    if embedder.dim != info["dim"]:
        raise RetrievalError(f"{where}: index holds {info['dim']}-d vectors, embedder gives {embedder.dim}-d")
    wanted = index_precision(info)
    given = getattr(embedder, "precision", wanted)
    if given != wanted:
        raise RetrievalError(
            f"{where}: index was built with {info['name']} {info.get('precision', 'fp32')}; "
            f"adding {given} vectors would mix precisions",
            hint="precision",
            value=wanted,
        )
