"""Scale benchmark: peak memory of a streamed build against a whole-array one, and the resident
memory and latency of a loaded index with memory-mapped shards against one read into RAM.

Each measurement runs in its own process (peak RSS is per process): `build` writes an index of
--n synthetic 768-d vectors (clustered in a 48-d subspace, like sentence embeddings) through the
store, either streamed a batch at a time (`--how stream`) or from one array (`--how whole`);
`open` loads it (`--mmap` or not) and runs --queries searches. The driver (no --step) runs all
four and prints one table with the CPU it ran on; results go to bench/results/scale.jsonl.

    python bench/bench_scale.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
BLOCK = 65_536
FACTORY = "IVF1024,PQ192x4fs,Refine(SQ8)"


class Synthetic:
    """n clustered unit vectors, each block of rows drawn from its own seed, so any row can be
    made again without holding the others."""

    def __init__(self, n: int, d: int = 768, clusters: int = 4096, intrinsic: int = 48, batch: int = 8192):
        rng = np.random.default_rng(0)
        self.n, self.dim, self.batch = n, d, batch
        self.basis = rng.standard_normal((intrinsic, d)).astype("float32")
        self.centres = rng.standard_normal((clusters, intrinsic)).astype("float32")
        self.last: tuple[int, np.ndarray] = (-1, np.zeros((0, d), "float32"))

    def __len__(self) -> int:
        return self.n

    def block(self, number: int) -> np.ndarray:
        if self.last[0] == number:
            return self.last[1]
        rng = np.random.default_rng(number + 1)
        size = min(BLOCK, self.n - number * BLOCK)
        latent = self.centres[rng.integers(0, len(self.centres), size)]
        latent += 0.5 * rng.standard_normal(latent.shape).astype("float32")
        x = latent @ self.basis
        self.last = (number, x / np.linalg.norm(x, axis=1, keepdims=True))
        return self.last[1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        first, last = start // BLOCK, (stop - 1) // BLOCK
        x = np.vstack([self.block(b) for b in range(first, last + 1)])
        return x[start - first * BLOCK : stop - first * BLOCK]

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), "float32")
        for b in np.unique(rows // BLOCK):
            mask = rows // BLOCK == b
            out[mask] = self.block(int(b))[rows[mask] - b * BLOCK]
        return out

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for first in range(start, stop, self.batch):
            yield first, self.rows(first, min(first + self.batch, stop))


def metadata(n: int) -> pa.Table:
    from retrieval.schema import TWEET_SCHEMA

    columns = {f.name: pa.nulls(n, f.type) for f in TWEET_SCHEMA}
    columns["row"] = pa.array(np.arange(1, n + 1))
    return pa.table(columns, schema=TWEET_SCHEMA)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> dict[str, float]:
    """Resident memory split as the kernel keeps it: anonymous (the process's own, must stay) and
    file-backed (pages of mapped shard files, dropped under memory pressure and read again)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {kind: int(status[f"Rss{kind}"].split()[0]) / 1024 for kind in ("Anon", "File")}


def build(n: int, out: Path, how: str, factory: str) -> dict:
    from retrieval.index import store

    source = Synthetic(n)
    vectors = source if how == "stream" else source.rows(0, n)
    start = time.perf_counter()
    manifest = store.build(
        out, vectors, metadata(n), np.ones(n, bool), embedder={"name": "synthetic", "dim": 768}, factory=factory
    )
    return {
        "step": "build",
        "how": how,
        "n": n,
        "factory": factory,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "recall_at_10": manifest.text.recall_at_10,
        "nprobe": manifest.text.nprobe,
        "disk_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20),
    }


def open_and_query(out: Path, mmap: bool, queries: int) -> dict:
    from retrieval.index import faiss_ops as fx
    from retrieval.index import store
    from retrieval.index.manifest import read_manifest

    vset = read_manifest(out).text
    x = Synthetic(vset.shards[-1].first_id + vset.shards[-1].rows).take(np.arange(queries) * 997)
    before = rss_mb()
    shards = store.open_shards(out, vset, mmap=mmap)
    opened = rss_mb()
    times = []
    for q in x:
        start = time.perf_counter()
        fx.search(shards, q[None], 10, nprobe=vset.nprobe)
        times.append(time.perf_counter() - start)
    queried = rss_mb()
    return {
        "step": "open",
        "factory": vset.factory,
        "mmap": mmap,
        **{f"rss_{kind.lower()}_open_mb": round(opened[kind] - before[kind]) for kind in opened},
        **{f"rss_{kind.lower()}_queried_mb": round(queried[kind] - before[kind]) for kind in queried},
        "p50_ms": round(1000 * float(np.median(times)), 2),
        "p99_ms": round(1000 * float(np.quantile(times, 0.99)), 2),
        "queries": queries,
    }


def child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return platform.processor()
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    flags = [f for f in info.get("Flags", "").split() if f.startswith(("avx512", "avx_vnni", "amx", "asimd", "sve"))]
    return f"{info.get('Model name', '?').strip()} ({' '.join(flags) or 'no AVX-512'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--factory", default=FACTORY)
    parser.add_argument("--on-disk-factory", default="IVF1024,SQ8", help="A factory whose lists map (--on-disk).")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--step", choices=["build", "open"])
    parser.add_argument("--how", choices=["stream", "whole"], default="stream")
    parser.add_argument("--mmap", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.step == "build":
        print(json.dumps(build(args.n, args.out, args.how, args.factory)))
        return
    if args.step == "open":
        print(json.dumps(open_and_query(args.out, args.mmap, args.queries)))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=RESULTS.parent) as tmp:
        built = {}
        for how, factory in (("stream", args.factory), ("whole", args.factory), ("stream", args.on_disk_factory)):
            out = Path(tmp) / f"{how}-{len(built)}"
            flags = ["--how", how, "--n", str(args.n), "--factory", factory, "--out", str(out)]
            rows.append(child(["--step", "build", *flags]))
            built.setdefault(factory, out)
            print(rows[-1], flush=True)
        for out in built.values():
            for mmap in (True, False):
                flags = ["--step", "open", "--out", str(out), "--queries", str(args.queries)]
                rows.append(child(flags + (["--mmap"] if mmap else [])))
                print(rows[-1], flush=True)
    where = cpu()
    print(f"\n{args.n:,} vectors x 768 on {where}\n")
    print("| build | factory | seconds | peak RSS MB | recall@10 | nprobe | disk MB |\n|---|---|---|---|---|---|---|")
    for r in rows[:3]:
        cells = [r["how"], r["factory"], r["seconds"], r["peak_rss_mb"], r["recall_at_10"], r["nprobe"], r["disk_mb"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(
        f"\n| factory | shards | RSS after open, own + mapped MB | after {args.queries} queries MB | p50 ms | p99 ms |"
        "\n|---|---|---|---|---|---|"
    )
    for r in rows[3:]:
        print(
            f"| {r['factory']} | {'mapped' if r['mmap'] else 'read into RAM'} "
            f"| {r['rss_anon_open_mb']} + {r['rss_file_open_mb']} | {r['rss_anon_queried_mb']} + "
            f"{r['rss_file_queried_mb']} | {r['p50_ms']} | {r['p99_ms']} |"
        )
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "scale.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "cpu": where, "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
