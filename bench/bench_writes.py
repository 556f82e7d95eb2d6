"""Stress test of concurrent writers and readers: N `index add`s into one index at once, while a
reader reopens and queries it in a loop, for a bounded number of rounds and seconds.

Each round copies a 500-row index of real tweets, starts `--adders` CLI processes that each add
100 other real tweets, and queries until they are done. A round passes when the index ends with
500 + 100 x adders rows, every add printed `indexed 100` and the row count it published (600,
700, 800: each saw the ones before it), `index verify` says ok and no query failed. Prints one
line per round and a summary, and appends a JSON line to bench/results/writes.jsonl.

    .venv/bin/python bench/bench_writes.py --rounds 20 --adders 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.embed.cpu import cpu_features, cpu_model  # noqa: E402
from retrieval.errors import RetrievalError  # noqa: E402
from retrieval.index.manifest import read_manifest  # noqa: E402
from retrieval.index.reader import IndexReader  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHARED = ROOT.parent / "shared" / "data"
CLI = [sys.executable, str(ROOT / "cli.py")]


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _query_loop(index: Path, stop: threading.Event, counts: dict[str, int], dim: int) -> None:
    """Reopen the index and search it until told to stop, as a server reloading each version would."""
    rng = np.random.default_rng(0)
    while not stop.is_set():
        try:
            with IndexReader(index) as reader:
                vector = rng.standard_normal((1, dim)).astype("float32")
                reader.search(vector / np.linalg.norm(vector), 10)
            counts["queries"] += 1
        except RetrievalError as e:
            counts["failures"] += 1
            counts.setdefault("first_failure", str(e))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--adders", type=int, default=3)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-seconds", type=float, default=1200, help="Stop starting rounds after this long.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-writes-"))
    table = pq.read_table(SHARED / "adobe_behaviour_test_time.parquet").slice(0, 500 + 100 * args.adders)
    pq.write_table(table.slice(0, 500), work / "base.parquet")
    parts = []
    for i in range(args.adders):
        parts.append(work / f"part{i}.parquet")
        pq.write_table(table.slice(500 + 100 * i, 100), parts[-1])
    base = work / "base"
    built = _cli("index", "build", str(work / "base.parquet"), "--out", str(base), "--model", args.model, timeout=900)
    if built.returncode:
        raise SystemExit(f"base build failed: {built.stderr.strip()}")
    dim = int(read_manifest(base).text.embedder["dim"])
    expected = 500 + 100 * args.adders

    start = time.monotonic()
    results = []
    print(f"{'round':>5} {'rows':>5} {'adds ok':>7} {'verify':>6} {'queries':>7} {'failed':>6} {'seconds':>7}")
    for number in range(1, args.rounds + 1):
        if time.monotonic() - start > args.max_seconds:
            print(f"stopping after {number - 1} rounds: --max-seconds {args.max_seconds:.0f} reached")
            break
        index = work / f"round{number}"
        shutil.copytree(base, index)  # copy2 keeps mtimes, so the cheap open check stays cheap
        counts = {"queries": 0, "failures": 0}
        stop = threading.Event()
        reader = threading.Thread(target=_query_loop, args=(index, stop, counts, dim))
        began = time.monotonic()
        reader.start()
        adders = [
            subprocess.Popen(
                [*CLI, "index", "add", str(p), "--index", str(index)],
                cwd=ROOT,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for p in parts
        ]
        outputs = [a.communicate(timeout=600)[0] for a in adders]
        stop.set()
        reader.join()
        seconds = time.monotonic() - began
        rows = read_manifest(index).next_id
        adds_ok = sum(a.returncode == 0 and "indexed 100," in out for a, out in zip(adders, outputs))
        published = sorted(int(m.group(1)) for out in outputs if (m := re.search(r"now version \d+, (\d+) rows", out)))
        if published != [500 + 100 * (i + 1) for i in range(args.adders)]:
            adds_ok = min(adds_ok, len(published))  # each add must have seen the ones before it
        verified = _cli("index", "verify", "--index", str(index), timeout=300).returncode == 0
        ok = rows == expected and adds_ok == args.adders and verified and counts["failures"] == 0
        results.append(
            {
                "round": number,
                "rows": rows,
                "adds_ok": adds_ok,
                "verify": verified,
                **counts,
                "seconds": round(seconds, 1),
                "ok": ok,
            }
        )
        print(
            f"{number:>5} {rows:>5} {adds_ok:>7} {'ok' if verified else 'FAIL':>6} {counts['queries']:>7} "
            f"{counts['failures']:>6} {seconds:>7.1f}"
        )
        shutil.rmtree(index)
    shutil.rmtree(work)

    passed = sum(r["ok"] for r in results)
    queries = sum(r["queries"] for r in results)
    print(
        f"\n{passed} of {len(results)} rounds ended with {expected} rows, every add reported, verify ok and no "
        f"failed query ({queries} queries during the writes)"
    )
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; flags {' '.join(cpu_features())}")
    RESULTS.mkdir(exist_ok=True)
    record = {
        "bench": "writes",
        "adders": args.adders,
        "model": args.model,
        "rounds": results,
        "passed": passed,
        "cpu": cpu_model(),
        "cpu_features": list(cpu_features()),
        "cores": os.cpu_count(),
    }
    with (RESULTS / "writes.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
