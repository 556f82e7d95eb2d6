"""Exceptions the CLI turns into one-line messages (exit code 1)."""


class RetrievalError(Exception):
    """A user or data error: the message is one line that names what is wrong."""


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
