"""`similar` and `predict`: questions about one tweet, answered from an index."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import (
    ACCOUNT,
    CHECK,
    CLIP,
    FILTERS,
    INDEX,
    JSON,
    MODE,
    NPROBE,
    PARAMS,
    RANKING,
    SPACE,
    image_option,
    parse_params,
    parse_ranking,
    user_errors,
)


@click.command()
@click.argument("text", required=False)
@INDEX
@click.option("--id", "tweet_id", type=int, default=None, help="Query by an indexed tweet's id instead of text.")
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@FILTERS
@NPROBE
@image_option("Query by an image (file or URL) over the image vectors.")
@SPACE
@MODE
@click.option("--min-score", type=float, default=None, help="Only hits at or above this cosine similarity (up to -k).")
@RANKING
@click.option("--explain", is_flag=True, help="Say which search path ran (exact, exact over the rows, IVF) and why.")
@CLIP
@CHECK
@JSON
def similar(
    text: str | None,
    index_path: Path,
    tweet_id: int | None,
    k: int,
    username: str | None,
    company: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    min_likes: int | None,
    nprobe: int | None,
    image_path: str | None,
    space: str,
    mode: str,
    min_score: float | None,
    collapse: float,
    no_collapse: bool,
    order: str,
    half_life: str | None,
    explain: bool,
    clip_checkpoint: Path | None,
    clip_model: str | None,
    check: bool,
    as_json: bool,
) -> None:
    """Similar past tweets: nearest neighbours of TEXT, of a stored tweet (--id) or of an image (--image).

    Near-copies fold into one hit (--collapse); --rank puts the ones that did well for their
    account, or the recent ones, first."""
    from retrieval.query.early import load_text_model

    if sum(x is not None for x in (text, tweet_id, image_path)) != 1:
        raise click.UsageError("give one of TEXT, --id or --image")
    if min_score is not None and text is None:
        raise click.UsageError("--min-score goes with a TEXT query")
    # the text model loads while the search stack imports (0.3-0.4 s less for a fresh process)
    loading = load_text_model(index_path) if text is not None and space == "text" and mode != "keyword" else None
    from retrieval.index.filters import Filters, whole_day
    from retrieval.io.media import load_image
    from retrieval.query.search import Searcher, index_clip

    filters = Filters(username=username, company=company, since=since, until=whole_day(until), min_likes=min_likes)
    with user_errors():
        ranking = parse_ranking(collapse, no_collapse, order, half_life)
        needs_clip = image_path is not None or space == "image"
        clip = index_clip(index_path, clip_checkpoint, clip_model) if needs_clip else None
        searcher = Searcher.open(index_path, loading, clip=clip, check=check)
        if image_path is not None:
            hits = searcher.similar_image(load_image(image_path), k, filters=filters, nprobe=nprobe, ranking=ranking)
        elif tweet_id is not None:
            hits = searcher.similar_to_tweet(tweet_id, k, filters=filters, nprobe=nprobe, ranking=ranking)
        else:
            hits = searcher.similar(
                text or "",
                k,
                filters=filters,
                nprobe=nprobe,
                space=space,
                mode=mode,
                min_score=min_score,
                ranking=ranking,
            )
        searched = "image" if image_path is not None else space
        plan = searcher.reader.plan(filters, nprobe=nprobe, space=searched) if explain else None
        why_none = searcher.reader.why_nothing(filters, searched) if not hits and not as_json else None
    if plan is not None and not as_json:
        click.echo(f"search: {plan.path} ({plan.reason})")
    if as_json and plan is not None:
        render.dump({"explain": plan.to_json(), "hits": [h.to_json() for h in hits]})
    elif as_json:
        render.dump([h.to_json() for h in hits])
    else:
        render.hits(hits, why_none)


@click.command()
@click.argument("text")
@INDEX
@ACCOUNT
@click.option("--show", type=click.IntRange(0), default=10, show_default=True, help="Neighbours to list.")
@image_option("The tweet's image (file or URL): its image neighbours join the text ones.")
@CLIP
@PARAMS
@CHECK
@JSON
def predict(
    text: str,
    index_path: Path,
    username: str,
    company: str | None,
    date: dt.datetime | None,
    show: int,
    image_path: str | None,
    clip_checkpoint: Path | None,
    clip_model: str | None,
    params: tuple[str, ...],
    check: bool,
    as_json: bool,
) -> None:
    """Predict the likes of TEXT: estimate, 80% interval and the past tweets that drove it."""
    from retrieval.query.early import load_text_model

    config = parse_params(params)
    if not text.strip():
        raise click.ClickException("the tweet text is empty")
    loading = load_text_model(index_path)  # while the search stack imports, as for `similar`
    from retrieval.io.media import load_image
    from retrieval.query.search import Searcher, index_clip
    from retrieval.tasks.likes.predictor import LikesPredictor

    with user_errors():
        clip = index_clip(index_path, clip_checkpoint, clip_model) if image_path is not None else None
        searcher = Searcher.open(index_path, loading, clip=clip, check=check)
        predictor = LikesPredictor(searcher, config)
        image = load_image(image_path) if image_path is not None else None
        start = time.perf_counter()
        found = predictor.predict(text, username, company, date, image=image)
        elapsed_ms = (time.perf_counter() - start) * 1000
    if as_json:
        render.dump({**found.to_json(), "elapsed_ms": round(elapsed_ms, 1)})
    else:
        render.prediction(found, username, show)
