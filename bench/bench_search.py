"""Query latency of `similar` per mode, with and without near-copy folding and re-ranking.

Three figures per setting, in ms per query over the same queries:
  new       one query at a time, its text embedded on the spot (what `similar` and the API pay)
  batched   all queries embedded in one call, then searched one by one (a notebook's batch)
  search    the query vectors already known: search, fusion, folding, ranking and rows only

    .venv/bin/python bench/bench_search.py --index indexes/adobe --queries 100
    .venv/bin/python bench/bench_search.py --index indexes/labelled --rank engagement --rank blend
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.embed.cpu import cpu_features, cpu_model  # noqa: E402
from retrieval.evaluation.retrieval import load_queries  # noqa: E402
from retrieval.query.ranking import DEFAULT_COLLAPSE, Ranking  # noqa: E402
from retrieval.query.search import Searcher  # noqa: E402

RESULTS = Path(__file__).parent / "results"
QUERIES = Path(__file__).parent / "queries" / "behaviour_known_items.jsonl"


class Known:
    """An embedder that answers from vectors computed beforehand (the `search` and `batched` figures)."""

    def __init__(self, inner, texts: list[str]) -> None:
        self.name, self.dim, self.inner = inner.name, inner.dim, inner
        self.vectors = dict(zip(texts, inner.encode(texts)))

    def encode(self, texts, *, progress: bool = False) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def per_query_ms(searcher: Searcher, texts: list[str], mode: str, ranking: Ranking) -> float:
    start = time.perf_counter()
    for text in texts:
        searcher.similar(text, 10, mode=mode, ranking=ranking)
    return 1000 * (time.perf_counter() - start) / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/adobe"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rank", action="append", default=None, help="orders to time (default: relevance)")
    parser.add_argument("--modes", default="vector,keyword,hybrid")
    args = parser.parse_args()
    print(f"args: {vars(args)}")
    print(f"cpu: {cpu_model()} ({platform.machine()}), flags {' '.join(cpu_features())}")
    print(f"faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}")
    texts = list(dict.fromkeys(q["query"] for q in load_queries(QUERIES)))[: args.queries]

    live = Searcher.open(args.index)
    live.similar(texts[0], 10)  # load the model and warm the index before timing
    start = time.perf_counter()
    known = Known(live.embedder, texts)
    batch_ms = 1000 * (time.perf_counter() - start) / len(texts)
    searcher = Searcher(live.reader, known)
    print(f"{len(texts)} queries, {args.index}; batched embedding {batch_ms:.1f} ms/query\n")
    print(f"{'mode':8} {'rank':11} {'collapse':>8} {'new ms':>8} {'batched ms':>11} {'search ms':>10}")
    RESULTS.mkdir(exist_ok=True)
    for order in args.rank or ["relevance"]:
        for mode in args.modes.split(","):
            for collapse in (None, DEFAULT_COLLAPSE):
                ranking = Ranking(order, collapse, 180.0 if order == "blend" else None)
                search_ms = per_query_ms(searcher, texts, mode, ranking)
                new_ms = per_query_ms(live, texts, mode, ranking) if mode != "keyword" else search_ms
                batched = search_ms + (batch_ms if mode != "keyword" else 0.0)
                shown = "off" if collapse is None else f"{collapse}"
                print(f"{mode:8} {order:11} {shown:>8} {new_ms:>8.1f} {batched:>11.1f} {search_ms:>10.1f}")
                row = {"index": str(args.index), "mode": mode, "rank": order, "collapse": collapse}
                row |= {"new_ms": new_ms, "batched_ms": batched, "search_ms": search_ms, "queries": len(texts)}
                with (RESULTS / "search.jsonl").open("a") as log:
                    log.write(json.dumps({**row, "cpu": cpu_model()}) + "\n")


if __name__ == "__main__":
    main()
