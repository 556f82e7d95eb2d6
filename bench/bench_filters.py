"""Where a filtered search should leave the IVF lists for an exact scan of the admitted rows.

A filter admitting a fraction f of N vectors is searched either over nprobe / f IVF lists with
FAISS's id selector (the `ivf` path), or by reading the admitted vectors back and comparing the
query with each (`exact_rows`, recall 1.0 over the stored codes). This bench times both through
`retrieval.index.vector_search` for admitted counts from a few hundred to half the index, on
synthetic clustered 768-d vectors, and prints ms/query and the IVF path's 10-recall@10 against
the exact one. The crossing point is what EXACT_FILTER_BELOW should be.

    .venv/bin/python bench/bench_filters.py --n 200000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import faiss
import numpy as np
from bench_index import synthetic_vectors

from retrieval.embed.cpu import cpu_features, cpu_model
from retrieval.index import faiss_ops as fx
from retrieval.index.vector_search import SearchPlan, VectorSet, vector_search

RESULTS = Path(__file__).parent / "results"


def timed(vset: VectorSet, plan: SearchPlan, queries: np.ndarray, k: int) -> tuple[float, list[list[int]]]:
    """ms per query, one query at a time (a user's search), and the ids found."""
    found = []
    start = time.perf_counter()
    for q in queries:
        found.append([i for i, _ in vector_search(vset, plan, q[None], k)[0]])
    return 1000 * (time.perf_counter() - start) / len(queries), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--factory", action="append", help="default: IVF{nlist},Flat and IVF{nlist},SQ8")
    parser.add_argument("--nprobe", type=int, default=16, help="the unfiltered nprobe (the tuned value on real tweets)")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--admitted", default="500,2000,5000,10000,20000,50000,100000")
    args = parser.parse_args()
    print(f"args: {vars(args)}")
    print(f"cpu: {cpu_model()} ({platform.machine()}), flags {' '.join(cpu_features())}")
    print(f"faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}")

    vectors = synthetic_vectors(args.n)
    rng = np.random.default_rng(1)
    queries = vectors[rng.choice(args.n, args.queries, replace=False)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape).astype("float32")
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    nlist = fx.nlist_for(args.n)
    sizes = [int(s) for s in args.admitted.split(",") if int(s) < args.n]
    RESULTS.mkdir(exist_ok=True)
    for factory in args.factory or [f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]:
        start = time.perf_counter()
        index = fx.train(factory, vectors.shape[1], fx.training_sample(vectors, factory))
        index.add(vectors)
        vset = VectorSet("text", None, [fx.Shard(index, 0)])
        print(f"\n{factory}: built in {time.perf_counter() - start:.0f}s, N={args.n:,}, nprobe {args.nprobe}")
        print(
            f"{'admitted':>9} {'share':>7} {'lists':>6} {'ivf ms':>8} {'exact ms':>9} {'ratio':>6} {'ivf recall':>11}"
        )
        for size in sizes:
            allowed = np.sort(rng.choice(args.n, size, replace=False)).astype(np.int64)
            widened = min(nlist, math.ceil(args.nprobe / (size / args.n)))
            ivf = SearchPlan("text", "ivf", args.n, allowed, widened, "")
            exact = SearchPlan("text", "exact_rows", args.n, allowed, nlist, "")
            timed(vset, exact, queries[:2], 10)  # the direct map is made on first use, not timed
            exact_ms, truth = timed(vset, exact, queries, 10)
            ivf_ms, found = timed(vset, ivf, queries, 10)
            recall = np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth)])
            row = {"factory": factory, "n": args.n, "admitted": size, "lists": widened, "nprobe": args.nprobe}
            row |= {"ivf_ms": round(ivf_ms, 2), "exact_rows_ms": round(exact_ms, 2), "ivf_recall_at_10": recall}
            print(
                f"{size:>9,} {size / args.n:>7.2%} {widened:>6} {ivf_ms:>8.2f} {exact_ms:>9.2f} "
                f"{ivf_ms / exact_ms:>6.2f} {recall:>11.3f}"
            )
            with (RESULTS / "filters.jsonl").open("a") as log:
                log.write(json.dumps({**row, "cpu": cpu_model(), "threads": faiss.omp_get_max_threads()}) + "\n")


if __name__ == "__main__":
    main()
