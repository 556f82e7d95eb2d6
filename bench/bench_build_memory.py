"""Build memory on real metadata: --rows tweets (the behaviour file repeated, with new ids) built
through `build_index` with a hash embedder instead of a model, so what is measured is what the
file's rows cost: the table, the texts, the tweets table written to DuckDB and the keyword index.

Each build runs in its own process, which samples its anonymous resident memory (what it must
keep; mapped file pages, which the kernel drops under pressure, are the rest of RSS) every 20 ms.
`--code DIR` imports `retrieval` from another checkout (a `git worktree` of an older commit), so
two versions are measured by the same script on the same machine. `--add N` then adds N more
tweets (new ids) to the built index, in a process of its own, as a daily `index add` would.

    python bench/bench_build_memory.py --rows 1000000 [--add 1000] [--code ../old]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_scale import cpu

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEHAVIOUR = ROOT.parent / "shared" / "data" / "adobe_behaviour_test_time.parquet"
FACTORY = "IVF256,PQ32x4fs"


class HashEmbedder:
    """768-d unit vectors seeded by each text's sha256: no model, equal texts give equal vectors."""

    name, dim = "hash", 768

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_rows(n: int, path: Path, first_id: int = 1) -> None:
    table = pq.read_table(BEHAVIOUR)
    with pq.ParquetWriter(path, table.schema) as writer:
        for first in range(0, n, table.num_rows):
            part = table.slice(0, min(table.num_rows, n - first))
            ids = pa.array(np.arange(first_id + first, first_id + first + part.num_rows), pa.int64())
            writer.write_table(part.set_column(part.schema.get_field_index("id"), "id", ids))


def anon_mb() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["RssAnon"].split()[0]) / 1024


def measure(step: str, source: Path, out: Path) -> dict:
    from retrieval.pipeline.build import add_to_index, build_index

    peak = [anon_mb()]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], anon_mb())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    if step == "build":
        report = build_index(source, out, embedder=HashEmbedder(), factory=FACTORY, progress=False)
    else:
        report = add_to_index(source, out, embedder=HashEmbedder(), progress=False)
    return {
        "step": step,
        "rows": report.indexed,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_anon_mb": round(max(peak[0], anon_mb())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--add", type=int, default=0, help="Then add this many more tweets to the index.")
    parser.add_argument("--code", type=Path, default=ROOT, help="The checkout whose `retrieval` is measured.")
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=["build", "add"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.source:
        sys.path.insert(0, str(args.code.resolve()))
        print(json.dumps(measure(args.step, args.source, args.out)))
        return
    git = ["git", "-C", str(args.code), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=RESULTS.parent) as tmp:
        steps = [("build", args.rows, 1), ("add", args.add, args.rows + 1)][: 2 if args.add else 1]
        for step, n, first_id in steps:
            source = Path(tmp) / f"{step}.parquet"
            write_rows(n, source, first_id)
            flags = ["--code", str(args.code), "--source", str(source), "--out", str(Path(tmp) / "index")]
            done = subprocess.run([sys.executable, __file__, *flags, "--step", step], capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "commit": commit.stdout.strip()})
    print(f"\n{args.rows:,} real tweets (repeated), hash vectors, {FACTORY}, code at {rows[0]['commit']}")
    print(f"on {cpu()}\n")
    print("| step | rows | seconds | peak RSS MB | peak anonymous MB |\n|---|---:|---:|---:|---:|")
    for row in rows:
        memory = f"{row['peak_rss_mb']:,} | {row['peak_anon_mb']:,}"
        print(f"| {row['step']} | {row['rows']:,} | {row['seconds']} | {memory} |")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "build_memory.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps({**row, "cpu": cpu(), "factory": FACTORY, "date": time.strftime("%Y-%m-%d")}) + "\n")


if __name__ == "__main__":
    main()
