"""An index's text model, loading on a thread before the search stack is imported.

A fresh CLI process spends about 0.4 s importing FAISS, DuckDB and SciPy and about 0.45 s
creating the text model's ONNX Runtime session, which releases the GIL: on a thread the two
overlap (0.45-0.49 s for both, against 0.69-1.13 s one after the other, on 2 cores). This module
imports neither, so a command starts the load first and then imports what searches.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import RetrievalError
from retrieval.index.manifest import read_manifest

if TYPE_CHECKING:
    from retrieval.embed.text import Embedder


def load_text_model(path: str | Path) -> Future[Embedder] | None:
    """The text model the index at `path` was built with, loading on a thread (its error, if
    any, comes from `result()`); None for an index without text vectors, and for a path that is
    no readable index, which the caller's `Searcher.open` then reports in its own words."""
    try:
        record = read_manifest(path).text.embedder
    except RetrievalError:
        return None
    if not record or record.get("name") is None:
        return None
    from retrieval.embed.text import embedder_for_index

    pool = ThreadPoolExecutor(1, thread_name_prefix="text-model")
    loading = pool.submit(embedder_for_index, record)
    pool.shutdown(wait=False)
    return loading
