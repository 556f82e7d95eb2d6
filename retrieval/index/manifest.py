"""The manifest of an index folder as frozen, typed values, and its JSON on disk (formats 1 and 2).

Every other module reads an index's description through these types; this is the only one that
knows the JSON keys. On disk the text vector set sits at the root and the image set under
`"image"` (kept for the indexes already built); in memory both are a `VectorSetInfo`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.errors import IndexCorrupt, IndexNotFound

FORMAT_VERSION = 2
"""2: the manifest has a version, a checksum of itself and every file's size, mtime and sha256."""
SET_KEYS = ("embedder", "factory", "nprobe", "recall_at_10", "bytes_per_vector")


def now() -> str:
    """A timestamp as manifests write it: UTC, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShardEntry:
    """One shard file of a vector set: its vectors have ids first_id .. first_id + rows - 1."""

    file: str
    first_id: int
    rows: int
    sha256: str

    @property
    def last_id(self) -> int:
        return self.first_id + self.rows - 1


@dataclass(frozen=True)
class VectorSetInfo:
    """One vector set (text or image): how it was trained, tuned and split into shards.

    `embedder` is what the embedding layer recorded about its model (name, dim, precision, ...);
    it is opaque here, since the storage layer knows nothing about models, and read back by
    `retrieval.embed`.
    """

    embedder: Mapping[str, Any]
    factory: str | None = None
    nprobe: int = 1
    recall_at_10: float | None = None
    bytes_per_vector: float = 0.0
    shards: tuple[ShardEntry, ...] = ()
    next_pos: int = 0
    """Image sets only: the position the next image vector takes (text vectors sit at their vec_id)."""
    missing_media: Mapping[str, int] = field(default_factory=dict)
    """Image sets only: media that could not be embedded, counted by reason."""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def _to_json(self, image: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "embedder": dict(self.embedder),
            "factory": self.factory,
            "nprobe": self.nprobe,
            "recall_at_10": self.recall_at_10,
            "bytes_per_vector": self.bytes_per_vector,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }
        if image:
            body.update(next_pos=self.next_pos, missing_media=dict(self.missing_media))
        return body

    @classmethod
    def _from_json(cls, body: Mapping[str, Any]) -> VectorSetInfo:
        return cls(
            embedder=dict(body["embedder"]),
            factory=body.get("factory"),
            nprobe=int(body.get("nprobe", 1)),
            recall_at_10=body.get("recall_at_10"),
            bytes_per_vector=float(body.get("bytes_per_vector", 0.0)),
            shards=tuple(
                ShardEntry(e["file"], int(e["first_id"]), int(e["rows"]), e["sha256"]) for e in body["shards"]
            ),
            next_pos=int(body.get("next_pos", 0)),
            missing_media=dict(body.get("missing_media", {})),
        )


@dataclass(frozen=True)
class Manifest:
    """What an index folder holds: its vector sets, how many rows, its version and every file's checksum."""

    text: VectorSetInfo
    next_id: int
    """The vec_id the next row takes: the number of rows in meta.duckdb."""
    version: int = 1
    """Goes up by one at every build or add, so a reader can tell that the index changed."""
    image: VectorSetInfo | None = None
    metric: str = "inner_product"
    built_at: str | None = None
    updated_at: str | None = None
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Every file of the folder -> its bytes, mtime_ns and sha256 (see retrieval.index.folder)."""

    @property
    def has_text(self) -> bool:
        """Whether the index holds text vectors (a folder of images has none)."""
        return bool(self.text.shards)

    def sets(self) -> dict[str, VectorSetInfo]:
        """The vector sets by space name: text always, image when the index was built with CLIP."""
        return {"text": self.text, **({"image": self.image} if self.image is not None else {})}

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The JSON written to manifest.json, with its own checksum last."""
        body: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "metric": self.metric,
            **self.text._to_json(image=False),
        }
        if self.image is not None:
            body["image"] = self.image._to_json(image=True)
        body["next_id"] = self.next_id
        body["built_at"] = self.built_at
        if self.updated_at is not None:
            body["updated_at"] = self.updated_at
        body["files"] = {name: dict(entry) for name, entry in self.files.items()}
        body["manifest_sha256"] = _self_checksum(body)
        return body

    def write(self, folder: Path) -> None:
        (Path(folder) / "manifest.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Manifest:
        image = body.get("image")
        return cls(
            text=VectorSetInfo._from_json(body),
            next_id=int(body["next_id"]),
            version=int(body.get("version", 1)),
            image=VectorSetInfo._from_json(image) if image is not None else None,
            metric=body.get("metric", "inner_product"),
            built_at=body.get("built_at"),
            updated_at=body.get("updated_at"),
            files=body.get("files", {}),
        )


def _self_checksum(body: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of the index at `path`, or a one-line error: not an index, damaged, or too new."""
    file = Path(path) / "manifest.json"
    if not file.exists():
        raise IndexNotFound(f"{path}: not an index (no manifest.json); build one with `index build`")
    try:
        body = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorrupt(f"{file}: damaged, not valid JSON ({e}); rebuild the index") from None
    found = body.get("format_version") if isinstance(body, dict) else None
    if found not in (1, FORMAT_VERSION):
        raise IndexCorrupt(f"{file}: format version {found}, this version reads 1 and {FORMAT_VERSION}")
    if found == FORMAT_VERSION and body.get("manifest_sha256") != _self_checksum(body):
        raise IndexCorrupt(f"{file}: damaged (its checksum differs from its content); rebuild the index")
    try:
        manifest = Manifest.from_json(body)
    except (KeyError, TypeError, ValueError) as e:
        raise IndexCorrupt(f"{file}: damaged, a field is missing or wrong ({e}); rebuild the index") from None
    return _from_format_1(manifest) if found == 1 else manifest


def _from_format_1(manifest: Manifest) -> Manifest:
    """A format-1 manifest checksummed its shards only: those are its file list (size and mtime
    unknown, so they are hashed by full checks only). The next `index add` writes format 2."""
    shards = [s for vset in manifest.sets().values() for s in vset.shards]
    files = {s.file: {"bytes": None, "mtime_ns": None, "sha256": s.sha256} for s in shards}
    return manifest.replace(version=1, files=files)
