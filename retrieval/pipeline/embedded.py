"""A file's texts as a vector stream, embedded a batch at a time as the store reads them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from retrieval.embed.text import Embedder

DEFAULT_BATCH = 8192
"""Texts embedded and added between two steps: 24 MB of 768-d vectors, small next to a model."""


class TextColumn:
    """The texts of a table's rows that have one, taken from its column when asked for: a
    million tweets as Python strings are gigabytes, their (memory-mapped) column is not."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.column = column
        self.rows = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))

    def __len__(self) -> int:
        return len(self.rows)

    def pick(self, positions: np.ndarray) -> list[str]:
        """The texts at these positions (0 is the first row with a text)."""
        return self.column.take(pa.array(self.rows[positions])).to_pylist()


class EmbeddedTexts:
    """The vectors of `texts`, embedded when the store asks for them: the rows it asks for first
    (training sample, recall queries) are embedded once and kept, every other row is embedded in
    its batch and let go once the shard has it. Memory is set by the sample and the batch, not
    the file; with the cached embedder every 512 texts are on disk as soon as they are embedded,
    so a killed build started again embeds only what it had not."""

    def __init__(self, embedder: Embedder, texts: TextColumn, batch: int = DEFAULT_BATCH, progress: bool = True):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.embedder = embedder
        self.texts = texts
        self.batch = batch
        self.progress = progress
        self.dim = embedder.dim
        self.kept_rows = np.zeros(0, np.int64)
        self.kept: np.ndarray = np.zeros((0, embedder.dim), np.float32)
        self.peak_held = 0
        """Most vectors held at once (kept rows plus one batch), for the build's memory line."""

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: np.ndarray) -> np.ndarray:
        self.kept_rows = np.asarray(rows, np.int64)
        self.kept = self.embedder.encode(self.texts.pick(self.kept_rows), progress=self.progress)
        self.peak_held = len(self.kept_rows)
        return self.kept

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        with tqdm(total=stop - start, desc="indexing", unit="text", disable=not self.progress) as bar:
            for first in range(start, stop, self.batch):
                rows = np.arange(first, min(first + self.batch, stop))
                yield first, self._vectors(rows)
                bar.update(len(rows))

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.kept_rows, rows), max(len(self.kept_rows) - 1, 0))
        kept = self.kept_rows[at] == rows if len(self.kept_rows) else np.zeros(len(rows), bool)
        out = np.empty((len(rows), self.dim), np.float32)
        out[kept] = self.kept[at[kept]]
        fresh = rows[~kept]
        if len(fresh):
            out[~kept] = self.embedder.encode(self.texts.pick(fresh))
            self.peak_held = max(self.peak_held, len(self.kept_rows) + len(rows))
        return out
