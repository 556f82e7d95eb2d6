"""Model files that PyPI packages ship in chunks (MPNet, Gemma 3 270M): found, checked, joined once.

The registry caps a file's size, so some models come as several packages that each hold one
part. Each chunk is found through its package's metadata (no import: some packages run code on
import) and checked against the size its wheel's RECORD gives, so a missing or truncated part is
a one-line ModelMissing that names the package, never a corrupt model. The joined result is
written beside its final place and renamed into it under a file lock: an interrupted first run
leaves nothing half-written, and two first runs at once assemble it once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

from retrieval.errors import ModelMissing

log = logging.getLogger(__name__)


def chunk_paths(packages: Sequence[str], marker: str, *, model: str, install: str) -> list[Path]:
    """The chunk file (its name holds `marker`) of each package, in order, each whole."""
    chunks = []
    for name in packages:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelMissing(f"{model} is not installed: package {name} is missing ({install})") from None
        files = [f for f in dist.files or [] if marker in f.name]
        if not files:
            raise ModelMissing(f"package {name} holds no {model} chunk; reinstall it ({install})")
        path = Path(str(dist.locate_file(files[0])))
        size = path.stat().st_size if path.is_file() else -1
        if files[0].size is not None and size != files[0].size:
            found = "missing" if size < 0 else f"{size:,} of {files[0].size:,} bytes"
            raise ModelMissing(f"{path}: chunk of package {name} is truncated ({found}); reinstall it ({install})")
        chunks.append(path)
    return chunks


def join(chunks: Sequence[Path], out: Path) -> str:
    """Concatenate chunks into out; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for chunk in chunks:
            with chunk.open("rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    sink.write(block)
    return digest.hexdigest()


def assemble_once(target: Path, build: Callable[[Path], Path], *, model: str) -> Path:
    """target, made by build(scratch folder) -> the path to rename into target, unless it exists."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if not target.exists():
            log.info("assembling %s into %s (once)", model, target)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                build(Path(tmp)).rename(target)
    return target
