"""Retrieval-centric vector search over brand tweets: index, similar tweets, likes, generation.

The public API, what the CLI (and the HTTP server to come) call:

    from retrieval import Filters

    from retrieval import build_index

    from retrieval import open_index

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
    "build_index": "retrieval.pipeline.build",
    "add_to_index": "retrieval.pipeline.build",
    "BuildReport": "retrieval.pipeline.build",
    "ImageSource": "retrieval.pipeline.build",
    "open_index": "retrieval.query.search",
    "Searcher": "retrieval.query.search",
    "Hit": "retrieval.query.search",
    "Filters": "retrieval.index.reader",
    "verify": "retrieval.index.verify",
    "read_manifest": "retrieval.index.manifest",
    "Manifest": "retrieval.index.manifest",
    "IndexReader": "retrieval.index.reader",
    "index_clip": "retrieval.query.search",
    "load_image": "retrieval.io.media",
    "load_tweets": "retrieval.io.tweets",
    "text_embedder": "retrieval.embed.text",
    "clip_for": "retrieval.embed.clip",
    "IndexHistory": "retrieval.tasks.likes.history",
    "LikesPredictor": "retrieval.tasks.likes.predictor",
    "LikesPrediction": "retrieval.tasks.likes.predict",
    "PredictConfig": "retrieval.tasks.likes.predict",
    "Query": "retrieval.tasks.likes.predict",
    "predict_likes": "retrieval.tasks.likes.predict",
    "Brief": "retrieval.tasks.generate.rag",
    "Generator": "retrieval.tasks.generate.rag",
    "generate": "retrieval.tasks.generate.rag",
    "RetrievalError": "retrieval.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
