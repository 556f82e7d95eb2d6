"""kill -9 during `index build` at random moments, then the same command again.

An old index of the first 600 behaviour tweets is built first; then `index build` of the whole
file into the same folder is killed --kills times after a random delay, and after each kill the
folder must hold the old index or the new one, whole (`index verify`). Finally the command runs
to the end and says how many vectors came from the cache. A fresh cache folder (models linked
from the user's) makes the first runs really embed; once a run ends before its kill (everything
cached), later kills come within that run's span, so they hit loading, indexing and publishing.

    .venv/bin/python bench/bench_kill_build.py --kills 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "adobe_behaviour_test_time.parquet"
USER_HOME = Path(os.environ.get("RETRIEVAL_HOME") or Path.home() / ".cache" / "retrieval")


def cli(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, env=env, text=True, **kw)


def state(out: Path, env: dict[str, str]) -> tuple[int | None, bool]:
    """The published version (None: no index) and whether `index verify` passes."""
    if not (out / "manifest.json").exists():
        return None, True
    version = json.loads((out / "manifest.json").read_text())["version"]
    verify = cli(["index", "verify", "--index", str(out)], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return version, verify.wait() == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--max-delay",
        type=float,
        default=40.0,
        help="Seconds: each kill comes after 1..this, or 1..the last run that ended by itself.",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / "models").mkdir(parents=True)
        for model in (USER_HOME / "models").iterdir():
            (home / "models" / model.name).symlink_to(model.resolve(), target_is_directory=model.is_dir())
        env = {**os.environ, "RETRIEVAL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        small, out = Path(tmp) / "first600.parquet", Path(tmp) / "index"
        pq.write_table(pq.read_table(DATA).slice(0, 600), small)
        assert cli(["-q", "index", "build", str(small), "--out", str(out)], env).wait() == 0
        seen = []
        longest = args.max_delay
        for kill in range(args.kills):
            proc = cli(["-q", "index", "build", str(DATA), "--out", str(out)], env, stdout=subprocess.DEVNULL)
            delay = rng.uniform(1, longest)
            started = time.perf_counter()
            try:
                proc.wait(delay)
                ended = True
                longest = time.perf_counter() - started  # cached now: kill within a whole run's span
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                ended = False
            version, sound = state(out, env)
            cached = (
                sum(f.stat().st_size for f in (home / "embeddings").rglob("*.parquet"))
                if (home / "embeddings").exists()
                else 0
            )
            seen.append(
                {
                    "kill": kill + 1,
                    "after_s": round(delay, 1),
                    "finished_first": ended,
                    "version": version,
                    "verify_ok": sound,
                    "cache_mb": round(cached / 2**20, 1),
                }
            )
            print(seen[-1], flush=True)
            if version is not None and version > 1:
                shutil.rmtree(out)  # the new index was published: start again from the old one
                assert cli(["-q", "index", "build", str(small), "--out", str(out)], env).wait() == 0
        start = time.perf_counter()
        last = cli(["index", "build", str(DATA), "--out", str(out)], env, stdout=subprocess.PIPE)
        summary = last.communicate()[0]
        version, sound = state(out, env)
        line = next(x for x in summary.splitlines() if "embedding cache" in x)
        print(f"\nfinal run {time.perf_counter() - start:.0f} s: {line}\nversion {version}, verify ok: {sound}")
        bad = [s for s in seen if not s["verify_ok"]]
        print(
            f"{len(seen)} kills: {sum(not s['finished_first'] for s in seen)} killed mid-run, "
            f"{len(bad)} left a damaged index; old index kept {sum(s['version'] == 1 for s in seen)} times"
        )


if __name__ == "__main__":
    main()
