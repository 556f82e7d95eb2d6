"""The keyword index at scale: write it for --rows real tweet texts (the behaviour file repeated),
then time BM25 queries with and without a filter, and an add of --add more texts.

A filter reaches the keyword index as the sorted vec_ids that pass it (what DuckDB answers for
`Filters`), so the query's cost grows with how many rows pass; the table shows it for filters
that admit 0.1%, 10% and 90% of the rows. Queries are four words of random tweets. Each figure
is the median over the queries, one thread.

    .venv/bin/python bench/bench_keywords.py --rows 1000000 --add 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from bench_scale import cpu

from retrieval.index import keywords

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEHAVIOUR = ROOT.parent / "shared" / "data" / "adobe_behaviour_test_time.parquet"
BATCH = 8192


def batches(texts: list[str | None], n: int, first: int = 0) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """n texts under vec_ids first.., the file's texts over and over, a batch at a time."""
    for start in range(first, first + n, BATCH):
        ids = np.arange(start, min(start + BATCH, first + n))
        yield ids, [texts[i % len(texts)] for i in ids]


def median_ms(index: keywords.KeywordIndex, queries: list[str], allowed: np.ndarray | None) -> float:
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query, 10, allowed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--add", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    texts = pq.read_table(BEHAVIOUR, columns=["content"]).column("content").to_pylist()
    some = [t for t in texts if t]
    queries = [" ".join(some[i].split()[:4]) for i in rng.choice(len(some), args.queries, replace=False)]
    row: dict = {"rows": args.rows, "cpu": cpu(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(dir=RESULTS.parent) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        keywords.write(folder, batches(texts, args.rows))
        row["write_s"] = round(time.perf_counter() - start, 1)
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        row["disk_mb"] = round(sum(f.stat().st_size for f in (folder / keywords.FOLDER).iterdir()) / 2**20, 1)
        index = keywords.KeywordIndex.open(folder)
        row["query_ms"] = round(median_ms(index, queries, None), 2)
        for share in (0.001, 0.1, 0.9):
            allowed = np.sort(rng.choice(args.rows, int(args.rows * share), replace=False))
            row[f"query_ms_filter_{share:g}"] = round(median_ms(index, queries, allowed), 2)
        start = time.perf_counter()
        keywords.write(folder, batches(texts, args.add, args.rows))
        row["add_s"] = round(time.perf_counter() - start, 2)
    print(f"\n{args.rows:,} real tweet texts (repeated), then {args.add:,} added; on {row['cpu']}\n")
    print("| write | peak RSS | on disk | query | filter 0.1% | filter 10% | filter 90% | add |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {row['write_s']} s | {row['peak_rss_mb']:,} MB | {row['disk_mb']} MB | {row['query_ms']} ms"
        f" | {row['query_ms_filter_0.001']} ms | {row['query_ms_filter_0.1']} ms | {row['query_ms_filter_0.9']} ms"
        f" | {row['add_s']} s |"
    )
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "keywords.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
