"""Recommendations judged by what accounts posted next: leave-later-out over the index's own tweets.

For each account with at least MIN_TWEETS dated tweets, a profile is made of its earlier 70%
(the most recent 50 of them as liked tweets) and the later 30% are what it should be shown.
Recommendations come from the whole index, every account, with the profile's own earlier
tweets left out; a hit is a later tweet among the top 10. Two baselines run on the same
profiles: `mean_vector` (one search by the mean of the profile's vectors) and `popular` (the
most-liked tweets, or the newest where the index has no likes)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from retrieval.errors import RetrievalError
from retrieval.index.profiles import Profile
from retrieval.query.search import Searcher
from retrieval.tasks.recommend.recommend import MAX_QUERIES, profile_vectors, recommend

K = 10
MIN_TWEETS = 20
EARLIER = 0.7


def _scores(found: Sequence[int], later: set[int]) -> tuple[float, float]:
    hits = [i in later for i in found[:K]]
    dcg = sum(1 / math.log2(rank + 1) for rank, hit in enumerate(hits, 1) if hit)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(later), K) + 1))
    return float(any(hits)), dcg / ideal if ideal else 0.0


def eval_recommend(
    searcher: Searcher,
    *,
    limit: int = 100,
    diversity: float = 0.3,
    seed: int = 0,
    min_tweets: int = MIN_TWEETS,
    progress: bool = True,
) -> dict[str, Any]:
    """Hit rate@10 and nDCG@10 of `recommend` and of the two baselines, over up to `limit` accounts."""
    by_account: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
    for vec_id, tweet_id, username, _ in searcher.reader.dated_tweets():
        by_account[username.lower()].append((vec_id, tweet_id))
    accounts = sorted(a for a, rows in by_account.items() if len(rows) >= min_tweets)
    if not accounts:
        raise RetrievalError(f"{searcher.reader.path}: no account has {min_tweets} dated tweets to evaluate on")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(accounts, min(limit, len(accounts)), replace=False).tolist())
    stats = searcher.reader.likes_span()[0]
    popular_by = "likes" if stats else "date"
    sums = {name: [0.0, 0.0] for name in ("recommend", "mean_vector", "popular")}
    for account in tqdm(chosen, desc="profiles", unit="account", disable=not progress):
        rows = by_account[account]
        cut = int(len(rows) * EARLIER)
        earlier, later = rows[:cut], {vec_id for vec_id, _ in rows[cut:]}
        liked = [t for _, t in earlier if t is not None][-MAX_QUERIES:]
        profile = Profile(account, tuple(liked))
        own = frozenset(vec_id for vec_id, _ in earlier)
        found = {
            "recommend": [r.tweet["vec_id"] for r in recommend(searcher, profile, K, diversity=diversity, exclude=own)]
        }
        mean = profile_vectors(searcher, profile).vectors.mean(axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        found["mean_vector"] = [i for i, _ in searcher.reader.search(mean[None], K, exclude=set(own))[0]]
        found["popular"] = [i for i in searcher.reader.top_vec_ids(popular_by, K + len(own)) if i not in own][:K]
        for name, ids in found.items():
            hit, ndcg = _scores(ids, later)
            sums[name][0] += hit
            sums[name][1] += ndcg
    n = len(chosen)
    result = {name: {"hit_rate_at_10": round(h / n, 4), "ndcg_at_10": round(g / n, 4)} for name, (h, g) in sums.items()}
    return {
        "profiles": n,
        "accounts_eligible": len(accounts),
        "diversity": diversity,
        "popular_by": popular_by,
        "recommend": result["recommend"],
        "baselines": {"mean_vector": result["mean_vector"], "popular": result["popular"]},
    }
