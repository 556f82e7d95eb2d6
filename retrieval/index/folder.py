"""How an index folder changes on disk: one writer at a time, published whole, checked when read.

A writer holds an advisory lock beside the folder (`.<name>.lock`, beside rather than inside,
because the folder itself is replaced) for its whole read-modify-publish, builds the new
version in a temporary sibling and renames it into place. Readers take no lock: they see the
old version or the new one. The manifest lists every file with its size, modification time
and sha256, so a reader can tell cheaply (by `stat`) whether anything changed since the
publish, and hashes only what did; `index verify` hashes everything.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from filelock import FileLock, Timeout

from retrieval.errors import IndexLocked, IndexNotFound, RetrievalError
from retrieval.index import keywords

log = logging.getLogger(__name__)

UNLISTED = ("manifest.json", "rejects.jsonl", *keywords.LOCKS)
"""Files the manifest does not checksum: itself, the report of the last build or add, and the
lock files that tantivy's readers create."""


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextmanager
def writer(path: Path, *, wait: bool = True, create: bool = True) -> Iterator[None]:
    """Be the only writer of the index at `path` for the duration; a second one waits or fails.

    While the lock is held no other writer can be alive, so temporary folders left beside the
    index by killed runs are removed here, and an index caught between its two renames is restored.
    `create=False` (an add) makes no folder for a mistyped path.
    """
    path = Path(path)
    if not create and not path.parent.is_dir():
        raise IndexNotFound(f"{path}: not an index (no such folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(_lock_file(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise IndexLocked(
                    f"{path}: another `index build` or `index add` is writing this index; try again when it is done"
                ) from None
            log.warning("%s: another build or add is writing this index; waiting for it to finish", path)
            start = time.monotonic()
            lock.acquire()
            log.warning("%s: the other writer is done after %.0f s; going on", path, time.monotonic() - start)
    except OSError as e:
        raise RetrievalError(f"{_lock_file(path)}: cannot take the writer lock ({describe(e)})") from None
    try:
        _clean_up(path)
        yield
    finally:
        lock.release()


def _clean_up(path: Path) -> None:
    for old in path.parent.glob(f".{path.name}.old-*"):
        kept = old / path.name
        if not path.exists() and (kept / "manifest.json").exists():
            kept.rename(path)
            log.warning("%s: restored the index from %s (a run was killed while publishing)", path, old)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in path.parent.glob(f".{path.name}.building-*"):
        log.info("removing %s, left by a killed build or add", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(out: Path, source: Path | None = None) -> None:
    """A build replaces its target whole: refuse a target that is not an index (a file, or a
    folder with other things in it) or that holds the file being read, instead of deleting it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RetrievalError(f"{out}: is a file, not an index folder; choose another place for the index")
    if out.is_dir() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise RetrievalError(
            f"{out}: a folder that is not an index (no manifest.json) and not empty; "
            "a build would replace everything in it: choose another place for the index"
        )
    if source is not None and out.is_dir() and Path(source).resolve().is_relative_to(out.resolve()):
        raise RetrievalError(f"{source}: is inside {out}, which the build replaces; move it or build elsewhere")


@contextmanager
def scratch(path: Path) -> Iterator[Path]:
    """A folder beside the index for one run's temporary files (the rows it loaded), removed when
    the run ends. Beside, not in /tmp, which may be memory, and on the disk the index goes to.
    Each is held under a lock of its own while its run lives, so a later run that can take one's
    lock knows the run that made it was killed, and removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.scratch-*.lock"):
        lock = FileLock(stale)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        shutil.rmtree(stale.with_suffix(""), ignore_errors=True)
        lock.release()
        stale.unlink(missing_ok=True)
    folder = path.parent / f".{path.name}.scratch-{uuid.uuid4().hex[:8]}"
    lock = FileLock(f"{folder}.lock")
    lock.acquire()
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()
        if not folder.exists():  # Windows keeps a file that is still mapped: a later run removes both
            Path(f"{folder}.lock").unlink(missing_ok=True)


FULL_BELOW = 2**20
"""Free bytes under which a failed write is put down to a full disk (numpy and faiss report a
short write without an errno)."""


def describe(error: BaseException, folder: Path | None = None) -> str:
    """The cause of a failed write in a few words, 'disk full' first when that is what it is."""
    if isinstance(error, OSError):
        where = f" ({Path(error.filename).name})" if error.filename else ""
        if error.errno == errno.ENOSPC:
            return f"disk full{where}"
        cause = f"{error.strerror or error}{where}"
    else:
        text = str(error).strip().splitlines()
        cause = text[-1] if text else type(error).__name__
    full = "No space left on device" in str(error) or (folder is not None and _free(folder) < FULL_BELOW)
    return f"disk full: {cause}" if full else cause


def _free(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return float("inf")


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `out`, on failure it vanishes.

    A write that fails (disk full, permission denied, ...) is one RetrievalError naming the
    index and the cause, with the old index untouched.
    """
    out = Path(out)
    existed = out.exists()
    tmp = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # mode 0777 less the umask, like any folder the user makes
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            old.mkdir()
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except (OSError, duckdb.Error) as e:
        kept = "the old index is unchanged" if existed else "no index was written"
        raise RetrievalError(f"{out}: could not write the index ({describe(e, out.parent)}); {kept}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_entries(folder: Path, known: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Size, mtime and sha256 of every file of the folder; files unchanged since `known`
    (hard-linked shards) keep their entry instead of being hashed again."""
    entries = {}
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.name in UNLISTED:
            continue
        name = file.relative_to(folder).as_posix()
        stat = file.stat()
        old = (known or {}).get(name)
        if old and old["bytes"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
            entries[name] = old
        else:
            entries[name] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256(file)}
    return entries


def damaged_files(folder: Path, entries: dict[str, dict[str, Any]], *, full: bool) -> dict[str, str]:
    """What differs from the manifest's file list. Without `full`, only files whose size or
    mtime changed are hashed: a write into a file changes its mtime, so this is cheap and
    still catches it; `full` hashes everything, for damage that left the mtime alone.
    Returns what is wrong with each damaged file, by its name in the folder."""
    problems = {}
    for name, entry in entries.items():
        file = folder / name
        try:
            stat = file.stat()
        except FileNotFoundError:
            problems[name] = "missing"
            continue
        changed = entry["mtime_ns"] is not None and stat.st_mtime_ns != entry["mtime_ns"]  # None: not recorded
        if entry["bytes"] is not None and stat.st_size != entry["bytes"]:
            problems[name] = f"{stat.st_size} bytes, the manifest says {entry['bytes']}"
        elif (full or changed) and sha256(file) != entry["sha256"]:
            problems[name] = "checksum differs from the manifest"
    return problems
