"""Vectors as the store reads them: a few rows up front, then every row once, a batch at a time.

The store never needs every vector at once: it trains on a sample, keeps exact top-k for a
sample of queries, and adds the rest shard by shard. So a build whose vectors do not fit in
memory (or are still to be embedded) hands it a stream; one that has them hands it an array.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class VectorStream(Protocol):
    """n vectors of width dim, in id order."""

    dim: int

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors at these sorted rows, asked for once, before any batch: the training
        sample and the recall queries."""
        ...

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Rows start..stop-1 as (first row, vectors) batches, in order."""
        ...


class InMemory:
    """An array as a stream, for vectors that already fit (images, a folded `--dedup` set)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.dim = vectors.shape[1] if vectors.ndim == 2 else 0

    def __len__(self) -> int:
        return len(self.vectors)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        yield start, self.vectors[start:stop]


def as_stream(vectors: np.ndarray | VectorStream) -> VectorStream:
    return InMemory(vectors) if isinstance(vectors, np.ndarray) else vectors
