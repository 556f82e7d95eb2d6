"""Latency of `generate`: end to end as a fresh CLI process (interpreter start, model and index
loads included) and warm (models loaded once, as `serve` holds them), for the default number of drafts and for 1.

    .venv/bin/python bench/bench_generate.py --index indexes/adobe [--runs 3]

Three briefs of the behaviour file's accounts, each run `--runs` times per setting, a pause
between runs so the 1-minute load settles; prints a table and appends a JSON line to
bench/results/generate.jsonl with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.embed.cpu import cpu_features, cpu_model  # noqa: E402
from retrieval.tasks.generate.rag import DEFAULT_CANDIDATES  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BRIEFS = [("TimHortonsUS", "photo of a new sandwich"), ("WalmartWorld", "a photo"), ("CNN", "a video")]
DRAFTED = re.compile(r"written in ([0-9.]+)s")


def cold(index: str, user: str, media: str, candidates: int, seed: int) -> tuple[float, float]:
    """(wall seconds of a fresh `cli.py generate`, seconds its drafting took)."""
    command = [sys.executable, str(ROOT / "cli.py"), "generate", "--index", index, "--username", user]
    command += ["--media", media, "--candidates", str(candidates), "--seed", str(seed)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    wall = time.perf_counter() - start
    drafted = DRAFTED.search(done.stdout)
    return wall, float(drafted.group(1)) if drafted else float("nan")


def warm(index: str, runs: int, pause: float) -> dict[int, list[float]]:
    """Seconds of `generate()` with the index, the embedder and the model already loaded."""
    from retrieval.query.early import load_text_model
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import Brief, GenerateConfig, Generator, generate

    searcher = Searcher.open(index, load_text_model(index))
    out: dict[int, list[float]] = {DEFAULT_CANDIDATES: [], 1: []}
    with Generator() as generator:
        for candidates in out:
            for run in range(runs):
                for user, media in BRIEFS:
                    time.sleep(pause)
                    start = time.perf_counter()
                    brief, config = Brief(user, media=media), GenerateConfig(seed=run)
                    generate(searcher, generator, brief, config, candidates=candidates)
                    out[candidates].append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pause", type=float, default=8.0, help="seconds between runs")
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cores; flags {' '.join(cpu_features())}")
    rows = []
    for candidates in (DEFAULT_CANDIDATES, 1):
        walls, drafting = [], []
        for run in range(args.runs):
            for user, media in BRIEFS:
                time.sleep(args.pause)
                wall, drafted = cold(args.index, user, media, candidates, run)
                walls.append(wall)
                drafting.append(drafted)
        rows.append(("fresh CLI process", candidates, walls, drafting))
    for candidates, seconds in warm(args.index, args.runs, args.pause / 4).items():
        rows.append(("warm (models loaded)", candidates, seconds, []))
    print("| run | drafts | n | median s | min-max s | drafting median s |")
    print("|---|---:|---:|---:|---:|---:|")
    record = []
    for kind, candidates, seconds, drafting in rows:
        drafted = f"{np.median(drafting):.2f}" if drafting else ""
        print(
            f"| {kind} | {candidates} | {len(seconds)} | {np.median(seconds):.2f} | "
            f"{min(seconds):.2f}-{max(seconds):.2f} | {drafted} |"
        )
        record.append({"run": kind, "drafts": candidates, "seconds": seconds, "drafting": drafting})
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "generate.jsonl").open("a") as f:
        line = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu": cpu_model(), "cpu_features": list(cpu_features())}
        f.write(json.dumps({**line, "cores": os.cpu_count(), "rows": record}) + "\n")


if __name__ == "__main__":
    main()
