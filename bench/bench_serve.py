"""Serving benchmark: requests per second and p50/p95/p99 latency of /v1/similar and /v1/predict
at several concurrencies, against the same queries through a fresh CLI process, and search
latency while a generation runs.

    .venv/bin/python bench/bench_serve.py --index indexes/adobe --predict-index indexes/labelled

Starts `cli.py serve` on a free port of 127.0.0.1, sends a fixed number of requests (nothing
else is reached), stops the server, prints a table and appends a JSON line to
bench/results/serve.jsonl with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.embed.cpu import cpu_features, cpu_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHARED = ROOT.parent / "shared" / "data"
CLI = [sys.executable, str(ROOT / "cli.py")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive connection per thread, as a real client keeps."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def post(self, path: str, body: dict) -> tuple[int, float]:
        """Status and milliseconds; a kept-alive connection the server closed while idle is
        opened again once, as HTTP clients do (status 0: the request failed)."""
        data = json.dumps(body).encode()
        start = time.perf_counter()
        for _ in range(2):
            conn = getattr(self.local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                return response.status, (time.perf_counter() - start) * 1000
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if not reused:
                    break
        return 0, (time.perf_counter() - start) * 1000


def _wait_ready(port: int, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server not ready")


def _load(client: Client, path: str, bodies: list[dict], concurrency: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda b: client.post(path, b), bodies))
    wall = time.perf_counter() - start
    ms = np.array([t for _, t in results])
    errors = sum(status != 200 for status, _ in results)
    return {
        "endpoint": path,
        "concurrency": concurrency,
        "requests": len(bodies),
        "errors": errors,
        "rps": round(len(bodies) / wall, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)},
    }


def _cli_ms(index: str, texts: list[str]) -> float:
    """Median wall time of `cli.py similar` as a fresh process, per query."""
    times = []
    for text in texts:
        start = time.perf_counter()
        subprocess.run([*CLI, "similar", text, "--index", index, "-k", "10", "--json"], capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default="indexes/adobe", help="Index for /v1/similar.")
    parser.add_argument("--predict-index", default=None, help="Index with likes for /v1/predict (default: none).")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--cli-queries", type=int, default=5)
    parser.add_argument("--no-generation", action="store_true", help="Skip search-during-generation.")
    args = parser.parse_args()

    table = pq.read_table(SHARED / "adobe_behaviour_test_time.parquet", columns=["content", "username"])
    texts = list(dict.fromkeys(t[:200] for t in table.column("content").to_pylist() if t))
    users = [u for u in table.column("username").to_pylist() if u]
    port = _free_port()
    indexes = [args.index] + ([args.predict_index] if args.predict_index else [])
    command = [*CLI, "serve", "--port", str(port), *[a for i in indexes for a in ("--index", i)]]
    command += ["--no-llm"] if args.no_generation else []
    started = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    rows = []
    try:
        _wait_ready(port, proc)
        start_s = time.perf_counter() - started
        client = Client(port)
        name = Path(args.index).name
        levels = [int(x) for x in args.concurrency.split(",")]
        client.post("/v1/similar", {"index": name, "text": "warm-up", "k": 10})
        fresh = iter(texts)  # every level gets queries the server has never seen (no query-cache hits)
        for c in levels:
            similar = [{"index": name, "text": next(fresh), "k": 10} for _ in range(args.requests)]
            rows.append({**_load(client, "/v1/similar", similar, c), "queries": "new"})
        rows.append({**_load(client, "/v1/similar", similar, levels[-1]), "queries": "repeated"})
        if args.predict_index:
            pname = Path(args.predict_index).name
            for c in levels:
                predict = [
                    {"index": pname, "text": next(fresh), "username": users[i % len(users)]}
                    for i in range(args.requests // 4)
                ]
                rows.append({**_load(client, "/v1/predict", predict, c), "queries": "new"})
        during = None
        if not args.no_generation:
            during = _during_generation(
                client, name, users[0], [{"index": name, "text": next(fresh)} for _ in range(400)]
            )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    cli_ms = _cli_ms(args.index, texts[-args.cli_queries :])

    print(
        f"{'endpoint':14} {'queries':8} {'conc':>4} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    )
    for r in rows:
        print(
            f"{r['endpoint']:14} {r['queries']:8} {r['concurrency']:>4} {r['requests']:>8} {r['errors']:>6} "
            f"{r['rps']:>8} {r['p50_ms']:>7} {r['p95_ms']:>7} {r['p99_ms']:>7}"
        )
    one = next(r for r in rows if r["endpoint"] == "/v1/similar" and r["concurrency"] == 1)
    print(f"fresh CLI process per search: {cli_ms:.0f} ms median; warm server p50 {one['p50_ms']} ms "
          f"({cli_ms / one['p50_ms']:.0f}x); server start {start_s:.1f} s")  # fmt: skip
    if during:
        print(f"search while a generation runs: p50 {during['p50_ms']} ms, max {during['max_ms']} ms "
              f"over {during['requests']} searches during a {during['generation_s']} s generation")  # fmt: skip
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; flags {' '.join(cpu_features())}")
    RESULTS.mkdir(exist_ok=True)
    record = {
        "bench": "serve",
        "index": args.index,
        "rows": rows,
        "cli_similar_ms": round(cli_ms, 1),
        "server_start_s": round(start_s, 1),
        "during_generation": during,
        "cpu": cpu_model(),
        "cpu_features": list(cpu_features()),
        "cores": os.cpu_count(),
    }
    with (RESULTS / "serve.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


def _during_generation(client: Client, index: str, username: str, searches: list[dict]) -> dict:
    """Searches one after another while a 4-candidate generation holds the model."""
    done = threading.Event()
    result: dict = {}

    def generate() -> None:
        start = time.perf_counter()
        body = {"index": index, "username": username, "media": "a photo of a new product", "candidates": 4}
        result["status"], _ = Client(client.port).post("/v1/generate", body)
        result["seconds"] = time.perf_counter() - start
        done.set()

    threading.Thread(target=generate).start()
    time.sleep(0.5)
    times = []
    i = 0
    while not done.is_set():
        status, ms = client.post("/v1/similar", searches[i % len(searches)])
        times.append(ms if status == 200 else float("inf"))
        i += 1
    done.wait()
    return {
        "requests": len(times),
        "p50_ms": round(float(np.median(times)), 1) if times else None,
        "max_ms": round(max(times), 1) if times else None,
        "generation_status": result["status"],
        "generation_s": round(result["seconds"], 1),
    }


if __name__ == "__main__":
    main()
