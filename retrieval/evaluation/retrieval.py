"""Search quality on a user's own judgments: MRR@10, recall@10 and nDCG@10 (binary relevance) for
each search mode, from a JSON Lines file of queries and the ids that answer them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrieval.errors import DataError
from retrieval.index.filters import Filters
from retrieval.query.ranking import DEFAULT_COLLAPSE, Ranking
from retrieval.query.search import MODES, Searcher

K = 10


def load_queries(path: str | Path) -> list[dict[str, Any]]:
    """Lines of {"query": "...", "relevant": [ids of the input file], optional filters}; a bad line
    is a one-line error naming it."""
    queries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item.get("query"), str) or not isinstance(item.get("relevant"), list):
                raise ValueError("needs a query text and a list of relevant ids")
        except (json.JSONDecodeError, ValueError, AttributeError) as e:
            raise DataError(f"{path}: line {number}: {e}") from None
        queries.append(item)
    if not queries:
        raise DataError(f"{path}: no queries")
    return queries


def _metrics(found: Sequence[set[int]], relevant: set[int]) -> tuple[float, float, float]:
    """MRR, recall and nDCG at 10 of a page whose hits each stand for a set of ids (a hit and the
    near-copies folded into it): a hit is relevant when its set meets `relevant`, recall counts
    every relevant id on the page, and a folded group counts once in nDCG."""
    hits = [bool(ids & relevant) for ids in found[:K]]
    mrr = next((1 / rank for rank, hit in enumerate(hits, 1) if hit), 0.0)
    recall = len(set().union(*found[:K]) & relevant) / len(relevant) if relevant else 0.0
    dcg = sum(1 / math.log2(rank + 1) for rank, hit in enumerate(hits, 1) if hit)
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(len(relevant), K) + 1))
    return mrr, recall, dcg / ideal if ideal else 0.0


def eval_retrieval(
    searcher: Searcher,
    queries: Sequence[dict[str, Any]],
    modes: Sequence[str] = MODES,
    collapses: Sequence[float | None] = (DEFAULT_COLLAPSE, None),
) -> dict[str, Any]:
    """Mean MRR@10, recall@10 and nDCG@10 per mode and collapse setting over the queries (their
    ids are the input file's `id`). The top-level mode keys hold the first setting (what
    `similar` does by default); `by_collapse` holds every setting."""
    report: dict[str, Any] = {"queries": len(queries), "collapse": collapses[0], "by_collapse": {}}
    for collapse in collapses:
        ranking = Ranking(collapse=collapse)
        setting = report["by_collapse"].setdefault("off" if collapse is None else str(collapse), {})
        for mode in modes:
            sums = [0.0, 0.0, 0.0]
            for q in queries:
                filters = Filters(**{k: q[k] for k in ("username", "company", "min_likes") if q.get(k) is not None})
                hits = searcher.similar(q["query"], K, filters=filters, mode=mode, ranking=ranking)
                pages = [{h.tweet["tweet_id"], *h.near_copies} for h in hits]
                for i, value in enumerate(_metrics(pages, set(q["relevant"]))):
                    sums[i] += value
            n = len(queries)
            setting[mode] = {
                "mrr_at_10": round(sums[0] / n, 4),
                "recall_at_10": round(sums[1] / n, 4),
                "ndcg_at_10": round(sums[2] / n, 4),
            }
    return report | report["by_collapse"]["off" if collapses[0] is None else str(collapses[0])]
