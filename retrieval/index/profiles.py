"""Profiles kept beside an index: a person's name, the tweets they liked or posted, texts they
wrote, and the interests found in them. One parquet file next to the index folder
(`indexes/adobe` -> `indexes/adobe.profiles.parquet`), so rebuilding the index keeps them (ids
are the input file's tweet ids); every write replaces the whole file atomically, under a lock."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from retrieval.errors import DataError, RetrievalError

SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("liked", pa.list_(pa.int64())),
        ("texts", pa.list_(pa.string())),
        ("interests", pa.list_(pa.struct([("phrase", pa.string()), ("weight", pa.float64())]))),
        (
            "images",
            pa.list_(
                pa.struct(
                    [
                        ("source", pa.string()),
                        ("labels", pa.list_(pa.struct([("label", pa.string()), ("weight", pa.float64())]))),
                    ]
                )
            ),
        ),
        ("created_at", pa.timestamp("us")),
        ("updated_at", pa.timestamp("us")),
    ]
)


@dataclass(frozen=True)
class Profile:
    """What one person liked or posted (tweet ids of the index's input file) and wrote."""

    name: str
    liked: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()
    interests: tuple[tuple[str, float], ...] = ()
    """Keyphrases of the liked tweets and texts, then the images' labels, each with a weight in (0, 1]."""
    images: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    """Images the person liked or posted: their file or URL and CLIP's zero-shot labels with probabilities."""
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now().replace(microsecond=0))
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now().replace(microsecond=0))

    def extended(
        self, liked: list[int], texts: list[str], images: list[tuple[str, tuple[tuple[str, float], ...]]] = ()
    ) -> Profile:
        """This profile with more liked ids, texts and images (each kept once, in the order given)."""
        return replace(
            self,
            liked=tuple(dict.fromkeys([*self.liked, *liked])),
            texts=tuple(dict.fromkeys([*self.texts, *texts])),
            images=tuple({source: (source, labels) for source, labels in [*self.images, *images]}.values()),
            updated_at=dt.datetime.now().replace(microsecond=0),
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "liked": list(self.liked),
            "texts": list(self.texts),
            "interests": [{"phrase": p, "weight": round(w, 4)} for p, w in self.interests],
            "images": [
                {"source": src, "labels": [{"label": lb, "weight": round(w, 4)} for lb, w in labels]}
                for src, labels in self.images
            ],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def profiles_path(index_path: str | Path) -> Path:
    index_path = Path(index_path)
    return index_path.parent / f"{index_path.name}.profiles.parquet"


class ProfileStore:
    """The profiles of one index, read whole and written whole."""

    def __init__(self, index_path: str | Path) -> None:
        self.path = profiles_path(index_path)

    def all(self) -> list[Profile]:
        if not self.path.exists():
            return []
        try:
            rows = pq.read_table(self.path, schema=SCHEMA).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{self.path}: not a profiles file ({str(e).splitlines()[0]})") from None
        return [
            Profile(
                r["name"],
                tuple(r["liked"]),
                tuple(r["texts"]),
                tuple((i["phrase"], i["weight"]) for i in r["interests"]),
                tuple((i["source"], tuple((lb["label"], lb["weight"]) for lb in i["labels"])) for i in r["images"]),
                r["created_at"],
                r["updated_at"],
            )
            for r in rows
        ]

    def get(self, name: str) -> Profile:
        found = next((p for p in self.all() if p.name == name), None)
        if found is None:
            known = ", ".join(p.name for p in self.all()) or "none yet"
            raise RetrievalError(f"{self.path}: no profile {name!r} (profiles: {known})")
        return found

    def find(self, name: str) -> Profile | None:
        return next((p for p in self.all() if p.name == name), None)

    def put(self, profile: Profile) -> None:
        """Add or replace one profile."""
        with self._lock():
            self._write([p for p in self.all() if p.name != profile.name] + [profile])

    def delete(self, name: str) -> None:
        with self._lock():
            kept = [p for p in self.all() if p.name != name]
            if len(kept) == len(self.all()):
                self.get(name)  # the one-line error naming the known profiles
            self._write(kept)

    def _lock(self) -> FileLock:
        return FileLock(str(self.path) + ".lock")

    def _write(self, profiles: list[Profile]) -> None:
        """The whole file, to a temporary name and then renamed: a killed write leaves the old one."""
        if not self.path.parent.is_dir():
            raise RetrievalError(f"{self.path}: no folder {self.path.parent}")
        table = pa.Table.from_pylist(
            [
                {
                    "name": p.name,
                    "liked": list(p.liked),
                    "texts": list(p.texts),
                    "interests": [{"phrase": ph, "weight": w} for ph, w in p.interests],
                    "images": [
                        {"source": src, "labels": [{"label": lb, "weight": w} for lb, w in labels]}
                        for src, labels in p.images
                    ],
                    "created_at": p.created_at,
                    "updated_at": p.updated_at,
                }
                for p in sorted(profiles, key=lambda p: p.name)
            ],
            schema=SCHEMA,
        )
        # a name of its own, not mkstemp's file: that one is private (0600), the file is for sharing
        tmp = str(self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"))
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
