"""Errors a user can act on: one line of facts, plus what to do as a key each interface words
its own way (the CLI names its flag, an HTTP API its field)."""

from __future__ import annotations

HINTS = ("clip_checkpoint", "precision", "date", "verify", "encoding", "ids")
"""What an error may ask for: a CLIP checkpoint, another precision (`value`), a later or no
query date, a full check of the index (`value`: its path), a text encoding, reading a file
without its id column."""


class RetrievalError(Exception):
    """A user or data error: the message is one line that names what is wrong (file, row, field,
    value), in words that hold for any interface; `hint` names what would fix it."""

    def __init__(self, message: str, *, hint: str | None = None, value: str | None = None) -> None:
        if hint is not None and hint not in HINTS:
            raise ValueError(f"unknown hint {hint!r}; one of {HINTS}")
        super().__init__(message)
        self.hint = hint
        self.value = value


class DataError(RetrievalError):
    """An input file cannot be read, or a column it needs is missing."""


class IndexNotFound(RetrievalError):
    """The index folder does not exist or is not an index."""


class IndexCorrupt(RetrievalError):
    """The index folder exists but its files do not agree with its manifest."""


class ModelMissing(RetrievalError):
    """A model's weights are not installed or the path given does not hold a model."""


class IndexLocked(RetrievalError):
    """Another process is writing the index and the caller chose not to wait."""
