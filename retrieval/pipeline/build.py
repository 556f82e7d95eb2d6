"""The build pipeline: load a file, embed its texts, write or extend an index folder."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from retrieval.embed.cache import CachedEmbedder, cached_text_embedder
from retrieval.embed.text import (
    Embedder,
    Precision,
    check_same_embedder,
    embedder_info,
    index_precision,
)
from retrieval.errors import DataError, RetrievalError
from retrieval.index import faiss_ops as fx
from retrieval.index import store
from retrieval.index.folder import check_replaceable, scratch, writer
from retrieval.index.manifest import Manifest, read_manifest
from retrieval.index.reader import IndexReader
from retrieval.index.store import ImageVectors, ShardFill
from retrieval.io.media import MediaFetcher, image_sources, images_in_folder
from retrieval.io.tweets import LoadResult, Reject, load_tweets, write_rejects
from retrieval.pipeline.embedded import DEFAULT_BATCH, EmbeddedTexts, TextColumn
from retrieval.schema import TWEET_SCHEMA

if TYPE_CHECKING:
    from retrieval.embed.clip import ClipEmbedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildReport:
    """What a build or add did, for the one-line summary a user reads."""

    read: int
    indexed: int
    metadata_only: int
    from_cache: int
    rejected: int
    rejects_path: Path | None
    manifest: Manifest
    rejected_by: dict[str, int] = dataclasses.field(default_factory=dict)
    """How many rows each field rejected (id, date, likes, ...), for the summary."""

    images: ImageVectors | None = None
    text: bool = True
    near_copies: int = 0
    """Rows `--dedup` kept without a vector of their own (their group's first tweet stands for them)."""
    memory: str = ""
    """What set the build's memory: the batch, the vectors held at once, the largest shard."""

    def summary(self) -> str:
        line = f"read {self.read}, indexed {self.indexed}, rejected {self.rejected}"
        if self.rejects_path:
            fields = ", ".join(f"{n} {field}" for field, n in sorted(self.rejected_by.items(), key=lambda x: -x[1]))
            line += f" ({fields}; see {self.rejects_path})"
        if self.text and self.metadata_only:
            line += f"; {self.metadata_only} metadata-only rows without text"
        if self.near_copies:
            line += f"; {self.near_copies} near-copies kept as rows, their vectors left out"
        if self.text:
            line += f"; {self.from_cache} of {self.indexed - self.metadata_only} vectors from the embedding cache"
        line += f"; now version {self.manifest.version}, {self.manifest.next_id} rows"
        line += f"\n{self.memory}" if self.memory else ""
        return line + (f"\n{self.image_summary()}" if self.images is not None else "")

    def image_summary(self) -> str:
        """How many images were embedded and why the others were not (offline, timeout, ...)."""
        if self.images is None:
            return "images: none embedded"
        tweets = len(set(self.images.rows.tolist()))
        line = f"images: {len(self.images.vectors)} embedded for {tweets} tweets"
        missing = len(self.images.failures)
        if missing:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.images.missing.items(), key=lambda x: -x[1]))
            line += f"; {missing} media missing ({reasons})"
            line += ": their tweets are searchable by text only" if self.text else ""
        return line


@dataclass(frozen=True)
class ImageSource:
    """How a build gets and embeds images: a CLIP embedder, a fetcher, and optionally a folder
    of local copies named by tweet id (`123.jpg`, `123_2.png`), preferred over media URLs."""

    clip: ClipEmbedder
    fetcher: MediaFetcher
    folder: Path | None = None
    batch: int = 128
    """Images fetched and embedded at a time: decoded images are large, so they never all sit in memory."""


def _texts(table: pa.Table) -> tuple[TextColumn, np.ndarray]:
    """The texts to embed, in table order, and which rows have one."""
    texts = TextColumn(table.column("content"))
    has_text = np.zeros(table.num_rows, bool)
    has_text[texts.rows] = True
    return texts, has_text


def _memory_line(vectors: EmbeddedTexts, manifest: Manifest, new_shards: int) -> str:
    """The sizes that bound a build's memory, so a user can trade them (`--chunk`, `--shards`)."""
    largest = max((s.rows for s in manifest.text.shards[-new_shards:]), default=0) if new_shards else 0
    held = vectors.peak_held * vectors.dim * 4
    codes = largest * (manifest.text.bytes_per_vector or 0)
    return (
        f"memory: batches of {vectors.batch} texts; at most {vectors.peak_held} vectors held at once "
        f"({held / 2**20:.0f} MB: training sample, recall queries, one batch); "
        f"largest new shard {largest} vectors ({codes / 2**20:.0f} MB of codes)"
    )


def _folder_images(folder: Path) -> dict[int, list[str]]:
    """Local images by tweet id, from file names `<id>.<ext>` or `<id>_<n>.<ext>`."""
    found: dict[int, list[str]] = {}
    for path in images_in_folder(folder):
        head = path.stem.split("_")[0]
        if head.isdigit():
            found.setdefault(int(head), []).append(str(path))
    return found


def embed_images(table: pa.Table, source: ImageSource, *, progress: bool = True) -> ImageVectors:
    """CLIP vectors of every image of every row; an image that cannot be had is counted as missing
    (with why), never replaced by anything, so its tweet stays searchable by text only."""
    local = _folder_images(source.folder) if source.folder else {}
    wanted: list[tuple[int, str]] = []
    for row, (tweet_id, media) in enumerate(
        zip(table.column("tweet_id").to_pylist(), table.column("media").to_pylist())
    ):
        wanted += [(row, s) for s in local.get(tweet_id, []) or image_sources(media)]
    vectors, rows, sources = [], [], []
    failures: list[tuple[int, str, str]] = []
    chunks = range(0, len(wanted), source.batch)
    for start in tqdm(chunks, desc="images", unit="batch", disable=not progress or len(chunks) < 2):
        chunk = wanted[start : start + source.batch]
        media = source.fetcher.fetch([s for _, s in chunk])
        good = [(row, m) for (row, _), m in zip(chunk, media) if m.image is not None]
        if good:
            vectors.append(source.clip.encode_images([m.image for _, m in good]))
            rows += [row for row, _ in good]
            sources += [m.source for _, m in good]
        failures += [(row, m.source, m.problem or "unknown") for (row, _), m in zip(chunk, media) if m.image is None]
    if not vectors:
        vectors.append(np.zeros((0, source.clip.dim), dtype=np.float32))
    return ImageVectors(np.vstack(vectors), np.array(rows, dtype=np.int64), sources, source.clip.record(), failures)


def _report(
    loaded: LoadResult,
    kept: pa.Table,
    has_vector: np.ndarray,
    rejects: list[Reject],
    folder: Path,
    manifest: Manifest,
    embedder: Embedder | None,
    images: ImageVectors | None,
    near_copies: int = 0,
    memory: str = "",
) -> BuildReport:
    rejects_path = None
    if rejects:
        rejects_path = folder / "rejects.jsonl"
        write_rejects(rejects, rejects_path)
    return BuildReport(
        read=loaded.read,
        indexed=kept.num_rows,
        metadata_only=int((~has_vector).sum()) - near_copies,
        from_cache=embedder.hits if isinstance(embedder, CachedEmbedder) else 0,
        rejected=len(rejects),
        rejects_path=rejects_path,
        rejected_by=dict(Counter(r.field for r in rejects)),
        manifest=manifest,
        images=images,
        text=manifest.has_text,
        near_copies=near_copies,
        memory=memory,
    )


def fold_near_copies(
    vectors: np.ndarray, has_vector: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep one vector per near-copy group (its first tweet in the file): the vectors kept, the
    new has_vector, and per row the row that stands for it (-1 for rows that keep their own)."""
    if not 0 < threshold <= 1:
        raise RetrievalError(f"--dedup is a cosine in (0, 1], got {threshold}")
    labels = fx.near_copy_groups(vectors, threshold)  # 0..groups-1
    standing = np.unique(labels, return_index=True)[1][labels]
    keep = standing == np.arange(len(labels))
    text_rows = np.flatnonzero(has_vector)
    copy_of = np.full(len(has_vector), -1, dtype=np.int64)
    copy_of[text_rows[~keep]] = text_rows[standing[~keep]]
    folded = has_vector.copy()
    folded[text_rows[~keep]] = False
    return vectors[keep], folded, copy_of


def load_image_folder(folder: Path) -> LoadResult:
    """A folder of images as rows without text, one per image, so an index of pictures alone can be
    built; a file named by a number keeps it as the tweet id."""
    paths = images_in_folder(folder)
    if not paths:
        raise DataError(f"{folder}: a folder without images (.jpg, .png, .webp, .gif, ...); give a tweet file")
    media = [json.dumps([{"kind": "photo", "url": str(p.resolve()), "thumbnail": None}]) for p in paths]
    columns: dict[str, list[Any]] = {name: [None] * len(paths) for name in TWEET_SCHEMA.names}
    columns.update(
        row=list(range(1, len(paths) + 1)),
        tweet_id=[int(p.stem) if p.stem.isdigit() and len(p.stem) < 19 else None for p in paths],
        media=media,
    )
    return LoadResult(str(folder), pa.table(columns, schema=TWEET_SCHEMA), len(paths), [])


def _only_rows_with_images(loaded: LoadResult, images: ImageVectors) -> tuple[LoadResult, ImageVectors]:
    """In a folder of images an image is the whole row: one that cannot be read is a reject."""
    keep = np.zeros(loaded.table.num_rows, bool)
    keep[images.rows] = True
    new_row = np.cumsum(keep) - 1
    numbers = loaded.table.column("row").to_pylist()
    rejects = [Reject(numbers[row], "media", problem, source) for row, source, problem in images.failures]
    kept = LoadResult(loaded.path, loaded.table.filter(pa.array(keep)), loaded.read, list(loaded.rejects) + rejects)
    return kept, dataclasses.replace(images, rows=new_row[images.rows], failures=[])


def build_index(
    source: str | Path,
    out: str | Path,
    *,
    embedder: Embedder | None = None,
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
    allow_missing_text: bool = False,
    factory: str | None = None,
    shards: int = 1,
    memory_budget: float = 4 * 2**30,
    on_disk: bool = False,
    progress: bool = True,
    images: ImageSource | None = None,
    text: bool = True,
    wait: bool = True,
    dedup: float | None = None,
    batch: int = DEFAULT_BATCH,
    fill: ShardFill | None = None,
) -> BuildReport:
    """Build a new index at `out` from a tweet file (parquet, CSV, JSON Lines or xlsx) or a folder
    of images; text vectors unless `text=False`, image vectors when `images` says how. `dedup`
    keeps one text vector per group of near-copies at that cosine; every row stays in the table,
    and `similar` shows the others as the group's near-copies. Texts are embedded and added
    `batch` at a time (all at once with `dedup`, which compares every vector with every other).
    `fill` fills the shards (one after another here unless given: `distributed.ray_shard_fill`).

    Embedding runs unlocked; publishing takes the index's writer lock (waiting for another
    writer unless `wait=False`), so two builds of one index both finish and the last one wins."""
    source, out = Path(source), Path(out)
    check_replaceable(out, source)
    with scratch(out) as room:
        if source.is_dir():
            loaded, text = load_image_folder(source), False  # an empty folder fails here, before the CLIP check
            if images is None:
                raise RetrievalError(f"{source}: a folder of images needs a CLIP model", hint="clip_checkpoint")
        else:
            needs_text = text and not allow_missing_text
            loaded = load_tweets(source, columns, require_text=needs_text, encoding=encoding, spill=room / "rows.arrow")
        if text:
            embedder = embedder or cached_text_embedder("mpnet")
        texts, has_vector = _texts(loaded.table) if text else (None, np.zeros(loaded.table.num_rows, bool))
        vectors: EmbeddedTexts | np.ndarray = np.zeros((0, 0), "float32")
        if texts is not None and embedder is not None:
            vectors = EmbeddedTexts(embedder, texts, batch, progress)
        image_vectors = embed_images(loaded.table, images, progress=progress) if images else None
        if source.is_dir() and image_vectors is not None:
            loaded, image_vectors = _only_rows_with_images(loaded, image_vectors)
            has_vector = np.zeros(loaded.table.num_rows, bool)
        if loaded.table.num_rows == 0:
            raise _nothing_to_index(loaded, out.parent / f"{out.name}.rejects.jsonl")
        copy_of = None
        if dedup is not None and embedder is not None and texts is not None and len(texts):
            everything = embedder.encode(texts.pick(np.arange(len(texts))), progress=progress)
            vectors, has_vector, copy_of = fold_near_copies(everything, has_vector, dedup)
        with writer(out, wait=wait):
            manifest = store.build(
                out,
                vectors,
                loaded.table,
                has_vector,
                embedder=embedder_info(embedder) if text and embedder else {"name": None, "dim": 0},
                factory=factory,
                shards=shards,
                memory_budget=memory_budget,
                on_disk=on_disk,
                source=str(source),
                images=image_vectors,
                copy_of=copy_of,
                fill=fill,
            )
            used = embedder if text else None
            copies = int((copy_of >= 0).sum()) if copy_of is not None else 0
            memory = (
                _memory_line(vectors, manifest, len(manifest.text.shards)) if isinstance(vectors, EmbeddedTexts) else ""
            )
            rejects = list(loaded.rejects)
            table = loaded.table
            return _report(loaded, table, has_vector, rejects, out, manifest, used, image_vectors, copies, memory)


def _nothing_to_index(loaded: LoadResult, rejects_path: Path, what: str = "index") -> DataError:
    """Every row was rejected: say why for the first one and where the others are. When every
    id is one the index holds, the file's ids are likely its own numbering (the challenge's
    splits each count from 1), not the same tweets: say how to read it without them."""
    if not loaded.rejects:
        return DataError(f"{loaded.path}: no rows")
    write_rejects(loaded.rejects, rejects_path)
    first = loaded.rejects[0]
    known = all(r.reason.endswith("(already in the index)") for r in loaded.rejects)
    return DataError(
        f"{loaded.path}: nothing to {what}: all {loaded.read} rows rejected "
        f"(row {first.row}, {first.field}: {first.reason}, {first.value[:40]!r}; see {rejects_path})"
        + ("; if its ids are not the index's tweet ids, read it without ids" if known else ""),
        hint="ids" if known else None,
    )


def add_to_index(
    source: str | Path,
    path: str | Path,
    *,
    embedder: Embedder | None = None,
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
    allow_missing_text: bool = False,
    progress: bool = True,
    images: ImageSource | None = None,
    wait: bool = True,
    batch: int = DEFAULT_BATCH,
) -> BuildReport:
    """Append a file's tweets as a new shard; ids already in the index are rejected as duplicates.

    The index's vector sets are extended as it was built: text vectors when it has them, image
    vectors when it has them and `images` is given (else the new tweets are searchable by text only).
    The writer lock is held from reading the index to publishing it, so concurrent adds queue
    (or fail at once with `wait=False`) and none loses another's rows.
    """
    path = Path(path)
    with writer(path, wait=wait, create=False), scratch(path) as room:
        manifest = read_manifest(path)
        text = manifest.has_text
        loaded = load_tweets(
            source, columns, require_text=text and not allow_missing_text, encoding=encoding, spill=room / "rows.arrow"
        )
        return _add(loaded, path, manifest, embedder, progress, images, batch)


def embedder_for_adding(
    path: str | Path,
    *,
    precision: Precision | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    cache: bool = True,
) -> Embedder | None:
    """The text model to extend an index with: the one it was built with, at its precision
    unless another is asked for (which `add_to_index` then refuses); None for an index of images."""
    info = read_manifest(path).text.embedder
    if not info.get("name"):
        return None
    precision = precision or index_precision(info)
    return cached_text_embedder(info["name"], precision=precision, batch_size=batch_size, threads=threads, cache=cache)


def _add(
    loaded: LoadResult,
    path: Path,
    manifest: Manifest,
    embedder: Embedder | None,
    progress: bool,
    images: ImageSource | None,
    batch: int,
) -> BuildReport:
    text = manifest.has_text
    table, rejects = _drop_known_ids(path, loaded)
    if table.num_rows == 0:
        raise _nothing_to_index(LoadResult(loaded.path, table, loaded.read, rejects), path / "rejects.jsonl", "add")
    if text:
        embedder = embedder or embedder_for_adding(path)
        check_same_embedder(manifest.text.embedder, embedder, path)
    if images is not None:
        if manifest.image is None:
            raise RetrievalError(f"{path}: the index has no image vectors; rebuild it with a CLIP model")
        images.clip.check_built_with(manifest.image.embedder, path)
    elif manifest.image is not None:
        log.warning("%s has image vectors but no CLIP model was given: the new tweets' images are not embedded", path)
    texts, has_vector = _texts(table) if text else (None, np.zeros(table.num_rows, bool))
    vectors = EmbeddedTexts(embedder, texts, batch, progress) if texts is not None and embedder is not None else None
    image_vectors = embed_images(table, images, progress=progress) if images else None
    manifest = store.add(
        path,
        vectors if vectors is not None else np.zeros((0, 0), "float32"),
        table,
        has_vector,
        source=loaded.path,
        images=image_vectors,
    )
    memory = _memory_line(vectors, manifest, 1) if vectors is not None and len(vectors) else ""
    used = embedder if text else None
    return _report(loaded, table, has_vector, rejects, path, manifest, used, image_vectors, memory=memory)


def _drop_known_ids(path: Path, loaded: LoadResult) -> tuple[pa.Table, list[Reject]]:
    table = loaded.table
    ids = [i for i in table.column("tweet_id").to_pylist() if i is not None]
    if not ids:
        return table, list(loaded.rejects)
    with IndexReader(path) as reader:
        known = reader.known_tweet_ids(ids)
    if not known:
        return table, list(loaded.rejects)
    tweet_ids = table.column("tweet_id").to_pylist()
    keep = np.array([i not in known for i in tweet_ids])
    rows = table.column("row").to_pylist()
    duplicates = [
        Reject(row=r, field="id", reason=f"duplicate id {i} (already in the index)", value=str(i))
        for r, i, k in zip(rows, tweet_ids, keep)
        if not k
    ]
    return table.filter(pa.array(keep)), list(loaded.rejects) + duplicates
