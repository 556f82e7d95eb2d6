"""`eval search | likes | generate`: measure quality and speed, the figures in docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import (
    DRAFTS,
    EMBEDDING,
    GENERATION,
    INDEX,
    JSON,
    NPROBE,
    PARAMS,
    SPACE,
    TEXT_MODEL,
    generate_config,
    parse_params,
    root_threads,
    text_embedder,
    user_errors,
)


@click.group("eval")
def evaluate() -> None:
    """Measure search quality and speed, likes prediction and generation."""


@evaluate.command("search")
@INDEX
@NPROBE
@SPACE
@JSON
def eval_search_cmd(index_path: Path, nprobe: int | None, space: str, as_json: bool) -> None:
    """Recall against exact search (1-recall@1, 10-recall@10), ms per query, bytes per vector."""
    from retrieval.evaluation.search import eval_search
    from retrieval.index.reader import IndexReader

    with user_errors(), IndexReader(index_path) as reader:
        result = eval_search(reader, nprobe=nprobe, space=space)
    if as_json:
        render.dump(result)
    else:
        render.key_values(result)


@evaluate.command("likes")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None, help="Labelled file: k-fold CV.")
@click.option("--index", "index_path", type=click.Path(path_type=Path), default=None, help="Index of reference tweets.")
@click.option("--test", "test_path", type=click.Path(path_type=Path), default=None, help="Tweets to score (--index).")
@click.option(
    "--extra",
    "extra_path",
    type=click.Path(path_type=Path),
    default=None,
    help="With --input: a file of likes (text ignored) added to every fold as metadata-only rows for the priors.",
)
@TEXT_MODEL
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold assignment.")
@click.option(
    "--split",
    type=click.Choice(["tweets", "accounts"]),
    default="tweets",
    show_default=True,
    help="With --input: folds of tweets, or of accounts (each tweet then from an account its history never saw).",
)
@click.option(
    "--baselines",
    default="global_median,account_median,gbm",
    show_default=True,
    help="Comma-separated baselines to run beside the kNN ('' for none).",
)
@EMBEDDING
@PARAMS
@JSON
def eval_likes_cmd(
    input_path: Path | None,
    index_path: Path | None,
    test_path: Path | None,
    extra_path: Path | None,
    model: str,
    folds: int,
    seed: int,
    split: str,
    baselines: str,
    batch_size: int,
    precision: str | None,
    no_cache: bool,
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Likes prediction against baselines: CV inside --input, or --index predicting --test."""
    from retrieval.evaluation.likes import LIKES_METRICS, likes_cv_on_file, likes_on_index_file

    if not ((input_path and not index_path and not test_path) or (not input_path and index_path and test_path)):
        raise click.UsageError("give either --input FILE, or --index DIR with --test FILE")
    if split != "tweets" and input_path is None:
        raise click.UsageError("--split goes with --input (cross-validation)")
    if extra_path is not None and input_path is None:
        raise click.UsageError("--extra goes with --input; for an index, `index add FILE --allow-missing-text`")
    chosen, config = _baselines(baselines), parse_params(params)
    with user_errors():
        if input_path is not None:
            embedder = text_embedder(model, batch_size, precision, no_cache)
            result = likes_cv_on_file(
                input_path,
                embedder,
                extra=extra_path,
                folds=folds,
                seed=seed,
                split=split,
                config=config,
                baselines=chosen,
            )
        else:
            result = likes_on_index_file(index_path, test_path, config=config, baselines=chosen)
    if as_json:
        render.dump(result)
        return
    source = f"{folds}-fold CV by {split} on {input_path}" if input_path else f"{index_path} predicting {test_path}"
    click.echo(f"{source}: {result['tweets']} tweets scored, {result['skipped_no_history']} with no earlier history")
    render.metrics_table({"knn": result, **result["baselines"]}, LIKES_METRICS, 13)


def _baselines(text: str) -> tuple[str, ...]:
    from retrieval.evaluation.likes import BASELINES

    chosen = tuple(b.strip() for b in text.split(",") if b.strip())
    if unknown := set(chosen) - set(BASELINES):
        raise click.BadParameter(f"unknown {sorted(unknown)}; use {', '.join(BASELINES)}", param_hint="--baselines")
    return chosen


@evaluate.command("generate")
@INDEX
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="Tweets to rewrite.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="Skip the first N tweets.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only N tweets of --input (after --offset).")
@GENERATION
@DRAFTS
@JSON
def eval_generate_cmd(
    index_path: Path,
    input_path: Path,
    offset: int,
    limit: int | None,
    llm_path: str | None,
    exemplars: int,
    max_tokens: int,
    min_tokens: int,
    diversity: float,
    temperature: float,
    seed: int,
    grammar: bool,
    candidates: int,
    rank: str,
    original: bool,
    as_json: bool,
) -> None:
    """BLEU-1..4 and ROUGE-L of retrieval only, the model alone and RAG (what `generate` gives
    with the same options: its best candidate), from metadata alone."""
    from retrieval.evaluation.generation import SYSTEMS, eval_generation, load_rows
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import Generator

    config = generate_config(max(exemplars, 1), max_tokens, min_tokens, diversity, temperature, seed, grammar)

    def progress(done: int, total: int) -> None:
        if not as_json and (done % 10 == 0 or done == total):
            click.echo(f"{done}/{total} tweets", err=True)

    with user_errors():
        rows = load_rows(input_path, limit, offset=offset)
        with Generator(llm_path, max_ctx=config.max_ctx, n_threads=root_threads()) as generator:
            result = eval_generation(
                Searcher.open(index_path),
                generator,
                rows,
                config,
                candidates=candidates,
                rank=rank,
                original=original,
                progress=progress,
            )
    result["input"] = str(input_path)
    if as_json:
        render.dump(result)
        return
    click.echo(
        f"{result['tweets']} tweets of {input_path}, index {index_path} ({result['embedder']}), {result['model']}"
    )
    metrics = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "near_copy_share", "novelty", "brand_voice")
    render.metrics_table({s: result[s] for s in SYSTEMS}, metrics, 16, ".4f")
    per = result["seconds_per_tweet"]
    click.echo(f"tokens/s {result['tokens_per_s']}; s/tweet: rag {per['rag']}, llm_only {per['llm_only']}")


@evaluate.command("retrieval")
@INDEX
@click.option(
    "--queries",
    "queries_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help='JSON Lines of {"query": "...", "relevant": [ids], "username": ...} (bench/queries/ has one).',
)
@click.option("--modes", default="vector,keyword,hybrid", show_default=True, help="Comma-separated search modes.")
@click.option(
    "--collapse",
    "collapses",
    default="0.95,off",
    show_default=True,
    help="Comma-separated collapse thresholds to compare (off: every near-copy a hit); the first is the headline.",
)
@JSON
def eval_retrieval_cmd(index_path: Path, queries_path: Path, modes: str, collapses: str, as_json: bool) -> None:
    """MRR@10, recall@10 and nDCG@10 of each search mode and collapse setting on your own judgments."""
    from retrieval.evaluation.retrieval import eval_retrieval, load_queries
    from retrieval.query.search import MODES, Searcher

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if unknown := set(chosen) - set(MODES):
        raise click.BadParameter(f"unknown {sorted(unknown)}; use {', '.join(MODES)}", param_hint="--modes")
    settings = [_threshold(c) for c in collapses.split(",") if c.strip()]
    with user_errors():
        result = eval_retrieval(Searcher.open(index_path), load_queries(queries_path), chosen, settings)
    if as_json:
        render.dump(result)
        return
    click.echo(f"{result['queries']} queries of {queries_path} on {index_path}")
    rows = {f"{m} {name}": by[m] for name, by in result["by_collapse"].items() for m in chosen}
    render.metrics_table(rows, ("mrr_at_10", "recall_at_10", "ndcg_at_10"), 14, ".4f")


def _threshold(text: str) -> float | None:
    """A --collapse value: off, or a cosine in (0, 1]."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise click.BadParameter(f"{text.strip()!r} is neither off nor a cosine in (0, 1]", param_hint="--collapse")
    return value


@evaluate.command("recommend")
@INDEX
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="Accounts made into profiles.")
@click.option("--diversity", type=click.FloatRange(0, 1), default=0.3, show_default=True)
@JSON
def eval_recommend_cmd(index_path: Path, limit: int, diversity: float, as_json: bool) -> None:
    """Hit rate@10 and nDCG@10 of recommendations on accounts' later tweets, against two baselines."""
    from retrieval.evaluation.recommend import eval_recommend
    from retrieval.query.search import Searcher

    with user_errors():
        result = eval_recommend(Searcher.open(index_path), limit=limit, diversity=diversity, progress=not as_json)
    if as_json:
        render.dump(result)
        return
    click.echo(
        f"{result['profiles']} profiles (of {result['accounts_eligible']} accounts with enough dated tweets), "
        f"earlier 70% -> later 30%; popular by {result['popular_by']}"
    )
    rows = {"recommend": result["recommend"], **result["baselines"]}
    render.metrics_table(rows, ("hit_rate_at_10", "ndcg_at_10"), 16, ".4f")
