"""`generate`: a tweet for an account, written from its own well-liked past tweets."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import (
    ACCOUNT,
    CLIP,
    DRAFTS,
    GENERATION,
    INDEX,
    JSON,
    generate_config,
    image_option,
    root_threads,
    user_errors,
)


class TokenStream:
    """The first draft's tokens as they come, on stderr (so stdout keeps only the result). The
    drafts are written together, a token of each in turn, so one is shown: every draft is
    printed, ranked, when they are done."""

    def __init__(self, candidates: int) -> None:
        self.started = False
        self.candidates = candidates

    def __call__(self, n: int, piece: str) -> None:
        if n:
            return
        if not self.started:
            self.started = True
            others = f" (and {self.candidates - 1} more beside it)" if self.candidates > 1 else ""
            click.echo(f"writing draft 1{others}: ", nl=False, err=True)
        click.echo(piece, nl=False, err=True)


@click.command()
@INDEX
@ACCOUNT
@click.option("--media", default="", help="What the picture or video shows, in words.")
@click.option("--topic", default=None, help="What the tweet is about.")
@click.option("--likes", type=click.IntRange(0), default=None, help="The likes wanted.")
@DRAFTS
@image_option("The picture (file or URL): CLIP describes it for --media, and its image neighbours join the exemplars.")
@CLIP
@GENERATION
@JSON
def generate(
    index_path: Path,
    username: str,
    company: str | None,
    date: dt.datetime | None,
    media: str,
    topic: str | None,
    likes: int | None,
    candidates: int,
    rank: str,
    original: bool,
    image_path: str | None,
    clip_checkpoint: Path | None,
    clip_model: str | None,
    llm_path: str | None,
    exemplars: int,
    max_tokens: int,
    min_tokens: int,
    diversity: float,
    temperature: float,
    seed: int,
    grammar: bool,
    as_json: bool,
) -> None:
    """Write a tweet for an account from its own well-liked past tweets (offline, llama.cpp)."""
    from concurrent.futures import ThreadPoolExecutor

    from retrieval.tasks.generate.rag import Brief, Generator, image_for_brief
    from retrieval.tasks.generate.rag import generate as run_generate

    config = generate_config(exemplars, max_tokens, min_tokens, diversity, temperature, seed, grammar)
    stream = TokenStream(candidates) if sys.stderr.isatty() else None
    with user_errors(), ThreadPoolExecutor(1) as pool:
        # llama.cpp loads the model in native code, without the GIL, while Python imports the
        # search stack and opens the index and the text model loads on a third thread (as for
        # `similar`): the wait is the longest of the three, not their sum
        loading = pool.submit(Generator, llm_path, max_ctx=config.max_ctx, n_threads=root_threads())
        try:
            from retrieval.query.early import load_text_model

            text_model = load_text_model(index_path)
            from retrieval.io.media import load_image
            from retrieval.query.search import Searcher, index_clip

            clip = index_clip(index_path, clip_checkpoint, clip_model) if image_path is not None else None
            searcher = Searcher.open(index_path, text_model, clip=clip)
        except BaseException:
            loading.add_done_callback(lambda done: done.exception() or done.result().close())
            raise
        generator = loading.result()
    with user_errors(), generator:
        image = None
        if image_path is not None:
            described, image = image_for_brief(searcher, load_image(image_path), media)
            if described != media:
                click.echo(f"media: {described}", err=True)
            media = described
        brief = Brief(username=username, company=company, date=date, media=media, likes=likes, topic=topic)
        found, method = run_generate(
            searcher,
            generator,
            brief,
            config,
            candidates=candidates,
            rank=rank,
            on_token=stream,
            image=image,
            original=original,
        )
        if stream:
            click.echo(err=True)
    if as_json:
        render.dump({"model": generator.name, "ranked_by": method, "candidates": [c.to_json() for c in found]})
    else:
        render.candidates(found, method)
