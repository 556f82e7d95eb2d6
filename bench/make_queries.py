"""Known-item queries from the real tweets, for `eval retrieval`: bench/queries/behaviour_known_items.jsonl.

    .venv/bin/python bench/make_queries.py --n 200

Protocol. 200 tweets drawn at random (seed 0) among the behaviour tweets with at least eight
distinct words. Two queries each:
- `words`: the tweet's four rarest words (lowest document frequency in the file, ties by their
  order in the tweet), in the order they appear: what a user remembers of a tweet ("that post
  with the Zamboni driver").
- `gist`: the tweet's first eight words with its hashtags, handles and placeholders removed, as
  a user would start to retype it.
Relevant: the tweet and every tweet with the same text (verbatim reposts), by the file's `id`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.io.tweets import load_tweets  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
WORD = re.compile(r"[A-Za-z][A-Za-z'’]+")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "queries" / "behaviour_known_items.jsonl")
    args = parser.parse_args()
    table = load_tweets(SHARED / "adobe_behaviour_test_time.parquet").table
    rows = [r for r in table.select(["tweet_id", "content"]).to_pylist() if r["content"]]
    plain = {r["tweet_id"]: re.sub(r"<hyperlink>|<mention>|[#@]\w+", " ", r["content"]) for r in rows}
    words = {i: [w.lower() for w in WORD.findall(text)] for i, text in plain.items()}
    df = Counter(w for ws in words.values() for w in set(ws))
    same = defaultdict(list)
    for r in rows:
        same[r["content"]].append(r["tweet_id"])
    eligible = [r for r in rows if len(set(words[r["tweet_id"]])) >= 8]
    random.Random(0).shuffle(eligible)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for r in eligible[: args.n]:
            ws = words[r["tweet_id"]]
            distinct = list(dict.fromkeys(ws))
            rare = sorted(distinct, key=lambda w: (df[w], distinct.index(w)))[:4]
            relevant = sorted(same[r["content"]])
            rare_query = " ".join(w for w in distinct if w in rare)
            for kind, query in (("words", rare_query), ("gist", " ".join(plain[r["tweet_id"]].split()[:8]))):
                out.write(json.dumps({"query": query, "relevant": relevant, "kind": kind}, ensure_ascii=False) + "\n")
    print(f"wrote {2 * min(args.n, len(eligible))} queries to {args.out}")


if __name__ == "__main__":
    main()
