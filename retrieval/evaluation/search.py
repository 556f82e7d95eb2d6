"""Search quality of an index: recall against exact search, latency and bytes per vector."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from retrieval.index import faiss_ops as fx
from retrieval.index.reader import IndexReader


def _timed_ms(fn: Any, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def eval_search(
    reader: IndexReader, *, nprobe: int | None = None, single_queries: int = 200, space: str = "text"
) -> dict[str, Any]:
    """Recall of one vector set against exact search over the same vectors, with latency and memory.

    The queries are the sample of indexed vectors whose exact top-10 was stored at build
    time (and kept exact through every `index add`), so no model is needed here.
    """
    vset = reader.vector_set(space)
    queries, truth = reader.recall_sample(space)
    nprobe = nprobe or vset.nprobe
    k = min(10, truth.shape[1])
    _, found = fx.search(vset.shards, queries, k, nprobe=nprobe)
    batched_ms = _timed_ms(lambda: fx.search(vset.shards, queries, k, nprobe=nprobe), 3) / len(queries)
    few = queries[:single_queries]
    single_ms = _timed_ms(lambda: [fx.search(vset.shards, q[None], k, nprobe=nprobe) for q in few], 1) / len(few)
    return {
        "index": str(reader.path),
        "space": space,
        "factory": vset.info.factory,
        "shards": len(vset.shards),
        "vectors": vset.ntotal,
        "queries": int(len(queries)),
        "nprobe": int(nprobe),
        "nlist": vset.nlist,
        "recall_at_1": round(fx.recall_at_k(found[:, :1], truth[:, :1], 1), 4),
        "recall_at_10": round(fx.recall_at_k(found, truth, k), 4),
        "ms_per_query": round(single_ms, 4),
        "ms_per_query_batched": round(batched_ms, 4),
        "bytes_per_vector": vset.info.bytes_per_vector,
        "bytes_per_vector_flat": 4 * vset.dim,
    }
