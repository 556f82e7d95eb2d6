"""Does a stacked model beat the kNN likes predictor? (issue #18, measured before building it in)

5-fold CV on a labelled file, the protocol of `eval likes --input`: each fold's tweets are
predicted from the other folds. The stacked model is gradient boosting (scikit-learn's
HistGradientBoostingRegressor) over what the kNN knows about a tweet (its estimate and
interval, the account and company level and counts, the mean residual of the neighbours and
its spread, the top and mean similarity, the weight of the own account's neighbours, where the
level came from), the account's median and 10th-90th percentiles, and the post itself (length
in characters and words, links, mentions, hashtags, emoji, ! and ?, photos, videos, GIFs).
Its training rows get their kNN features by cross-fitting (5 inner folds of the training
folds), so it never learns from a kNN that saw the row. Quantile fits (0.1, 0.9) give its
interval. The table adds the mean of the kNN and the stacked estimate, and splits the error
by where the account level came from (the account, its company, or neither).

    .venv/bin/python cli.py index build ../shared/data/adobe_labelled.parquet --out /tmp/labelled
    .venv/bin/python bench/bench_likes_stacking.py --index /tmp/labelled \
        --input ../shared/data/adobe_labelled.parquet [--extra ../shared/data/adobe_content_test_time.parquet]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import pyarrow as pa

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.evaluation.likes import (  # noqa: E402
    Estimates,
    _folds,
    _median_baselines,
    _with_history,
    likes_metrics,
)
from retrieval.index.reader import IndexReader  # noqa: E402
from retrieval.io.tweets import load_tweets  # noqa: E402
from retrieval.tasks.likes.history import ArrayHistory  # noqa: E402
from retrieval.tasks.likes.predict import PredictConfig, predict_likes  # noqa: E402

SOURCES = ("account", "company", "base")


def post_features(text: str, media: str) -> list[float]:
    return [
        len(text),
        len(text.split()),
        text.count("<hyperlink>"),
        text.count("<mention>"),
        text.count("#"),
        sum(1 for ch in text if ord(ch) > 0x2000),
        text.count("!"),
        text.count("?"),
        media.count("Photo("),
        media.count("Video("),
        media.count("Gif("),
    ]


class Features:
    """The stacked model's inputs for rows of one history, and the kNN estimate they start from."""

    def __init__(self, history: ArrayHistory, texts: list[str], media: list[str]) -> None:
        self.history, self.texts, self.media = history, texts, media

    def __call__(self, fold: ArrayHistory, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = [self.history.queries[r] for r in rows]
        found = predict_likes(fold, self.history.vectors[rows], queries, PredictConfig())
        median = _median_baselines(fold, queries)["account_median"]
        out = []
        for j, (r, p) in enumerate(zip(rows, found)):
            w = np.array([n.weight for n in p.neighbours])
            res = np.array([n.residual for n in p.neighbours])
            sim = np.array([n.score for n in p.neighbours]) if p.neighbours else np.zeros(1)
            shift = float(w @ res) if len(w) else 0.0
            spread = float(np.sqrt(w @ (res - shift) ** 2)) if len(w) else 0.0
            own = sum(n.weight for n in p.neighbours if n.same_account)
            knn = [p.log_likes, p.log_low, p.log_high, p.prior.value, shift, spread, sim.max(), sim.mean(), own]
            level = [
                math.log1p(p.prior.account_tweets),
                math.log1p(p.prior.company_tweets),
                SOURCES.index(p.prior.source),
                median.point[j],
                median.low[j],
                median.high[j],
            ]
            out.append(knn + level + post_features(self.texts[r], self.media[r]))
        return np.array(out), np.array([p.log_likes for p in found])


def boosted(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> Estimates:
    from sklearn.ensemble import HistGradientBoostingRegressor

    fits = []
    for loss, q in (("squared_error", None), ("quantile", 0.1), ("quantile", 0.9)):
        model = HistGradientBoostingRegressor(
            loss=loss,
            quantile=q,
            max_iter=300,
            learning_rate=0.03,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            random_state=0,
        )
        fits.append(model.fit(x, y).predict(x_test))
    return Estimates(fits[0], np.minimum(fits[1], fits[0]), np.maximum(fits[2], fits[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an index of --input (its vectors are reused)")
    parser.add_argument("--input", required=True)
    parser.add_argument("--extra", help="likes-only rows added to every fold's history")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()

    table = load_tweets(args.input).table
    if table.column("content").null_count or table.column("likes").null_count:
        raise SystemExit(f"{args.input}: every row needs text and likes here")
    n = table.num_rows
    reader = IndexReader(args.index)
    stored = [r["content"] for r in reader.rows(list(range(min(n, reader.stats()["vectors"]))))]
    if stored != table.column("content").to_pylist():
        raise SystemExit(f"{args.index} is not an index of {args.input} alone: build one (see --help)")
    vectors = reader.text_vectors(np.arange(n))
    full = table
    if args.extra:
        extra = load_tweets(args.extra, require_text=False).table.select(table.column_names).cast(table.schema)
        extra = extra.set_column(extra.schema.get_field_index("content"), "content", pa.nulls(len(extra), pa.string()))
        full = pa.concat_tables([table, extra])
    history = ArrayHistory(full, vectors)
    media = [m or "" for m in table.column("media").to_pylist()]
    features = Features(history, table.column("content").to_pylist(), media)

    start = time.perf_counter()
    fold_of = _folds(history, n, args.folds, 0, "tweets")  # the folds of `eval likes --input`

    def with_history(part: ArrayHistory, rows: np.ndarray) -> np.ndarray:
        return rows[_with_history(part, [history.queries[r] for r in rows])]

    parts: dict[str, list[Estimates]] = {"account_median": [], "knn": [], "stacked": []}
    y, source = [], []
    for f in range(args.folds):
        visible = fold_of != f
        fold = history.restrict(visible)
        test = with_history(fold, np.flatnonzero(fold_of[:n] == f))
        train = np.flatnonzero(fold_of[:n] != f)
        inner = np.random.default_rng(1 + f).permutation(len(train)) % 5
        xs, ys = [], []
        for g in range(5):
            hidden = visible.copy()
            hidden[train[inner == g]] = False
            part = fold.restrict(hidden)
            rows = with_history(part, train[inner == g])
            xs.append(features(part, rows)[0])
            ys.append(history.values[rows])
        x_test, _ = features(fold, test)
        knn = Estimates(x_test[:, 0], x_test[:, 1], x_test[:, 2])
        parts["knn"].append(knn)
        parts["stacked"].append(boosted(np.vstack(xs), np.concatenate(ys), x_test))
        parts["account_median"].append(_median_baselines(fold, [history.queries[i] for i in test])["account_median"])
        y.append(history.values[test])
        source.append(x_test[:, 11].astype(int))
        print(f"fold {f + 1}/{args.folds}: {len(test)} tweets, {time.perf_counter() - start:.0f} s", flush=True)

    truth, where = np.concatenate(y), np.concatenate(source)
    found = {name: Estimates.stack(p) for name, p in parts.items()}
    knn, stacked = found["knn"], found["stacked"]
    found["mean of knn and stacked"] = Estimates(
        (knn.point + stacked.point) / 2, (knn.low + stacked.low) / 2, (knn.high + stacked.high) / 2
    )
    reference = likes_metrics(truth, found["account_median"])["rmse_log1p"]
    header = "| method | rmse_log1p | vs account median | mae_log1p | spearman | coverage_80 |"
    header += "".join(f" rmse, level from {s} |" for s in SOURCES)
    print(f"\n{n} tweets, {len(truth)} scored, {args.folds}-fold CV, extra rows: {len(history.values) - n}\n")
    print(header)
    print("|---" * (6 + len(SOURCES)) + "|")
    for name, est in found.items():
        m = likes_metrics(truth, est)
        by = [
            f"{math.sqrt(np.mean((est.point[where == i] - truth[where == i]) ** 2)):.3f} ({(where == i).sum()})"
            for i in range(len(SOURCES))
        ]
        change = (m["rmse_log1p"] / reference - 1) * 100
        row = [name, m["rmse_log1p"], f"{change:+.1f}%", m["mae_log1p"], m["spearman"], m["coverage_80"], *by]
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
