"""Retrieval-centric vector search over brand tweets: index, similar tweets, likes, generation.

The public API, what the CLI (and the HTTP server to come) call:

    from retrieval import Filters, build_index, open_index

    report = build_index("tweets.parquet", "indexes/brand")   # add_to_index(...) appends
    print(report.summary())
    searcher = open_index("indexes/brand")
    for hit in searcher.similar("race day on the track", k=5, filters=Filters(username="redbullracing")):
        print(hit.rank, round(hit.score, 3), hit.tweet["content"])

Names load on first use, so `import retrieval` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_index": "retrieval.build",
    "add_to_index": "retrieval.build",
    "BuildReport": "retrieval.build",
    "ImageSource": "retrieval.build",
    "open_index": "retrieval.search",
    "Searcher": "retrieval.search",
    "Hit": "retrieval.search",
    "Filters": "retrieval.reader",
    "verify": "retrieval.store",
    "text_embedder": "retrieval.embed",
    "clip_for": "retrieval.embed_clip",
    "IndexHistory": "retrieval.predict",
    "PredictConfig": "retrieval.predict",
    "Query": "retrieval.predict",
    "predict_likes": "retrieval.predict",
    "Brief": "retrieval.generate",
    "Generator": "retrieval.generate",
    "generate": "retrieval.generate",
    "RetrievalError": "retrieval.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
