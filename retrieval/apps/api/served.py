"""What a server keeps loaded: its indexes (reopened when `index add` publishes a new version) and
the one llama.cpp model, behind a bounded queue."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed.text import Embedder, embedder_for_index
from retrieval.errors import RetrievalError
from retrieval.index.manifest import read_manifest
from retrieval.index.reader import IndexReader
from retrieval.query.search import Searcher
from retrieval.tasks.likes.predictor import LikesPredictor

log = logging.getLogger(__name__)

RECHECK_S = 1.0
"""How often a served index looks at its manifest for a new version."""
QUERY_CACHE = 10_000
"""Query vectors a served index keeps: the page repeats queries (filters changed, "more like this")."""


class QueryCache:
    """An embedder that remembers the vectors of recent single queries (least recently used go)."""

    def __init__(self, inner: Embedder, size: int = QUERY_CACHE) -> None:
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.precision = getattr(inner, "precision", "fp32")
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(texts) != 1:
            return self.inner.encode(texts, progress=progress)
        with self._lock:
            found = self._vectors.get(texts[0])
            if found is not None:
                self._vectors.move_to_end(texts[0])
                return found
        vector = self.inner.encode(texts)
        with self._lock:
            self._vectors[texts[0]] = vector
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)
        return vector


class ServedIndex:
    """One index open for requests. Its searcher is swapped as a whole when the index is published
    again, so a request sees the old index or the new one, never a mix, and no restart is needed."""

    def __init__(self, path: str | Path, *, embedder: Embedder | None = None, clip: Any = None) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.clip = clip
        self._lock = threading.Lock()
        self._checked = 0.0
        self._predictor: LikesPredictor | None = None
        self._record: tuple[object, object] | None = None
        self._searcher = self._open(embedder)

    def _open(self, embedder: Embedder | None) -> Searcher:
        """The index as it is now, with its text model loaded, or `embedder` unless the index now
        records another model than the one open (a rebuild changed it)."""
        reader = IndexReader(self.path)
        record = reader.manifest.text.embedder
        model = (record.get("name"), record.get("dim"))
        if self._record is not None and model != self._record:
            embedder = None
        try:
            if embedder is None and reader.manifest.has_text:
                embedder = embedder_for_index(record)
            if embedder is not None and not isinstance(embedder, QueryCache):
                embedder = QueryCache(embedder)
            searcher = Searcher(reader, embedder, clip=self.clip)
        except BaseException:
            reader.close()
            raise
        self.embedder, self._record, self._stamp = embedder, model, _stamp(reader.manifest)
        log.info("%s: version %d open (%d rows)", self.name, self.version, reader.manifest.next_id)
        return searcher

    @property
    def version(self) -> int:
        """The version of the open index."""
        return self._stamp[0]

    @property
    def searcher(self) -> Searcher:
        """The searcher of the current version. A new version that cannot be opened (damaged,
        mid-publish) is logged and the open one keeps answering."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            with self._lock:
                try:
                    if _stamp(read_manifest(self.path)) != self._stamp:
                        # opened beside the old one, then swapped; the old one is not closed: a
                        # request may still use it (a generation takes seconds), and it closes
                        # when the last one lets go
                        self._searcher = self._open(self.embedder)
                except RetrievalError as e:
                    log.warning("%s: keeping version %d open: %s", self.name, self.version, e)
        return self._searcher

    @property
    def predictor(self) -> LikesPredictor:
        """Likes prediction over the current version (an index without likes says so, as a 400)."""
        searcher = self.searcher
        predictor = self._predictor
        if predictor is None or predictor.searcher is not searcher:
            predictor = self._predictor = LikesPredictor(searcher)
        return predictor


def _stamp(manifest: Any) -> tuple[Any, ...]:
    """What changes with every publish, a rebuild that starts the versions again included."""
    return manifest.version, manifest.built_at, manifest.updated_at, manifest.next_id


class Busy(Exception):
    """The model is taken and the queue is full (or the wait ran past its timeout)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the model is busy with other requests; try again shortly")
        self.retry_after = retry_after


class ModelQueue:
    """llama.cpp runs one generation at a time: requests wait their turn, at most `max_waiting`
    of them behind the running one and for at most `timeout` seconds, and searches never wait
    behind them."""

    def __init__(self, generator: Any, *, max_waiting: int = 4, timeout: float = 120.0) -> None:
        self.generator = generator
        self.max_waiting = max_waiting
        self.timeout = timeout
        self._model = threading.Lock()
        self._count = threading.Lock()
        self.waiting = 0

    def acquire(self) -> Any:
        """Wait for the model (Busy when too many wait or the wait is too long); `release` after."""
        with self._count:
            if self._model.locked() and self.waiting >= self.max_waiting:
                raise Busy(retry_after=10)
            self.waiting += 1
        try:
            if not self._model.acquire(timeout=self.timeout):
                raise Busy(retry_after=30)
        finally:
            with self._count:
                self.waiting -= 1
        return self.generator

    def release(self) -> None:
        self._model.release()

    @contextmanager
    def turn(self) -> Iterator[Any]:
        generator = self.acquire()
        try:
            yield generator
        finally:
            self.release()
