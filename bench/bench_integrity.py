"""What the safety of writes costs: opening an index with the cheap check (stat) against a full
check (sha256 of every file), `verify`, the hashing an `add` does; reading a CSV row by row with
Python's csv module against parquet; embedding-cache lookups over many segments against one.

Indexes hold the 10,000 real tweets' metadata with random 768-d vectors (the checks read bytes,
not meaning), repeated to --n rows.

    .venv/bin/python bench/bench_integrity.py --n 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.embed import cache as embed_cache  # noqa: E402
from retrieval.embed.cpu import cpu_features, cpu_model  # noqa: E402
from retrieval.index import store  # noqa: E402
from retrieval.index.reader import IndexReader  # noqa: E402
from retrieval.index.verify import verify  # noqa: E402
from retrieval.io.tweets import load_tweets  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BEHAVIOUR = ROOT.parent / "shared" / "data" / "adobe_behaviour_test_time.parquet"


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest of a few runs, in seconds: the least disturbed by other jobs on the machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _vectors(n: int, d: int = 768) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_costs(work: Path, tweets: pa.Table, n: int) -> dict[str, float]:
    repeats = -(-n // tweets.num_rows)
    table = pa.concat_tables([tweets] * repeats).slice(0, n)
    table = table.set_column(table.schema.get_field_index("tweet_id"), "tweet_id", pa.array(range(n), pa.int64()))
    out = work / f"idx{n}"
    store.build(out, _vectors(n), table, np.ones(n, bool), embedder={"name": "random", "dim": 768}, factory="Flat")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    extra = table.slice(0, 1000).set_column(
        table.schema.get_field_index("tweet_id"), "tweet_id", pa.array(range(n, n + 1000), pa.int64())
    )
    start = time.perf_counter()
    store.add(out, _vectors(1000), extra, np.ones(1000, bool))
    add_s = time.perf_counter() - start
    return {
        "rows": n,
        "index_mib": round(size / 2**20, 1),
        "open_ms": round(1000 * best_of(lambda: IndexReader(out).close()), 1),
        "open_check_ms": round(1000 * best_of(lambda: IndexReader(out, check=True).close()), 1),
        "verify_ms": round(1000 * best_of(lambda: verify(out)), 1),
        "add_1000_s": round(add_s, 2),
    }


def csv_costs(work: Path) -> dict[str, float]:
    table = pq.read_table(BEHAVIOUR)
    csv_path = work / "behaviour.csv"
    pacsv.write_csv(table, csv_path)
    return {
        "rows": table.num_rows,
        "csv_s": round(best_of(lambda: load_tweets(csv_path)), 2),
        "parquet_s": round(best_of(lambda: load_tweets(BEHAVIOUR)), 2),
    }


class Random:
    name, dim = "random", 768

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        return _vectors(len(texts))


def cache_costs(work: Path, n: int = 10_000) -> dict[str, float]:
    texts = [f"tweet number {i}" for i in range(n)]
    folder = work / "cache"
    embed_cache.COMPACT_AT = 10**9  # keep every segment, to measure the worst case
    embed_cache.CachedEmbedder(Random(), "random", folder).encode(texts)
    (entry,) = embed_cache.cache_info(folder)
    many = best_of(lambda: embed_cache.CachedEmbedder(Random(), "random", folder).encode(texts))
    embed_cache.COMPACT_AT = 2
    embed_cache.compact(folder / "random")
    one = best_of(lambda: embed_cache.CachedEmbedder(Random(), "random", folder).encode(texts))
    return {"texts": n, "segments": entry["segments"], "lookup_many_s": round(many, 2), "lookup_one_s": round(one, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    tweets = load_tweets(BEHAVIOUR).table
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        work = Path(tmp)
        indexes = [index_costs(work, tweets, n) for n in args.n]
        csv = csv_costs(work)
        cache = cache_costs(work)
    print(f"{'rows':>8} {'MiB':>7} {'open ms':>8} {'open --check ms':>15} {'verify ms':>9} {'add 1,000 s':>11}")
    for r in indexes:
        print(
            f"{r['rows']:>8} {r['index_mib']:>7} {r['open_ms']:>8} {r['open_check_ms']:>15} "
            f"{r['verify_ms']:>9} {r['add_1000_s']:>11}"
        )
    print(f"\nload {csv['rows']} tweets: CSV (Python csv, row by row) {csv['csv_s']} s, parquet {csv['parquet_s']} s")
    print(
        f"cache lookup of {cache['texts']} texts: {cache['segments']} segments {cache['lookup_many_s']} s, "
        f"1 segment {cache['lookup_one_s']} s"
    )
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; flags {' '.join(cpu_features())}")
    RESULTS.mkdir(exist_ok=True)
    record = {"bench": "integrity", "indexes": indexes, "csv": csv, "cache": cache, "cpu": cpu_model()}
    with (RESULTS / "integrity.jsonl").open("a") as out:
        out.write(json.dumps({**record, "cpu_features": list(cpu_features()), "cores": os.cpu_count()}) + "\n")


if __name__ == "__main__":
    main()
