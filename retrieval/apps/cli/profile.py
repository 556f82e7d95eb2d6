"""`profile`, `recommend` and `audience`: people's interests, what to show them, whom a post fits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import CHECK, CLIP, FILTERS, INDEX, JSON, user_errors


@click.group()
def profile() -> None:
    """Profiles kept beside an index: what a person liked or wrote, and their interests."""


def _ids(text: str | None) -> list[int]:
    """--liked 12,15,20 as ids."""
    if not text:
        return []
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of tweet ids", param_hint="--liked") from None


@profile.command("add")
@click.argument("name")
@INDEX
@click.option(
    "--liked",
    default=None,
    metavar="ID[,ID...]",
    help="Tweet ids (the input file's id column) the person liked or posted.",
)
@click.option("--text", "texts", multiple=True, help="A text the person wrote or cares about (repeatable).")
@click.option(
    "--image",
    "images",
    multiple=True,
    help="An image (file or URL) the person liked or posted; needs --clip-checkpoint.",
)
@CLIP
@JSON
def profile_add(
    name: str,
    index_path: Path,
    liked: str | None,
    texts: tuple[str, ...],
    images: tuple[str, ...],
    clip_checkpoint: Path | None,
    clip_model: str | None,
    as_json: bool,
) -> None:
    """Create profile NAME, or add liked tweets, texts and images to it; its interests are found again."""
    from retrieval.query.early import load_text_model

    loading = load_text_model(index_path) if texts else None  # while the search stack imports
    from retrieval.index.profiles import ProfileStore
    from retrieval.io.media import load_image
    from retrieval.query.search import Searcher, index_clip
    from retrieval.tasks.recommend.recommend import add_to_profile

    with user_errors():
        clip = index_clip(index_path, clip_checkpoint, clip_model) if images else None
        pictures = [(source, load_image(source)) for source in images]
        searcher = Searcher.open(index_path, loading, clip=clip)
        found = add_to_profile(searcher, ProfileStore(index_path), name, _ids(liked), texts, pictures)
    if as_json:
        render.dump(found.to_json())
    else:
        render.profile(found)


@profile.command("show")
@click.argument("name")
@INDEX
@JSON
def profile_show(name: str, index_path: Path, as_json: bool) -> None:
    """A profile's liked tweets, texts and interests."""
    from retrieval.index.profiles import ProfileStore

    with user_errors():
        found = ProfileStore(index_path).get(name)
    if as_json:
        render.dump(found.to_json())
    else:
        render.profile(found)


@profile.command("list")
@INDEX
@JSON
def profile_list(index_path: Path, as_json: bool) -> None:
    """Every profile of the index, with its size and top interests."""
    from retrieval.index.profiles import ProfileStore

    with user_errors():
        found = ProfileStore(index_path).all()
    if as_json:
        render.dump([p.to_json() for p in found])
        return
    if not found:
        click.echo("no profiles yet; add one with `profile add NAME --liked IDS --index DIR`")
    for p in found:
        top = ", ".join(phrase for phrase, _ in p.interests[:5]) or "-"
        click.echo(f"{p.name:20} {len(p.liked):>4} liked {len(p.texts):>3} texts  interests: {top}")


@profile.command("delete")
@click.argument("name")
@INDEX
def profile_delete(name: str, index_path: Path) -> None:
    """Remove a profile."""
    from retrieval.index.profiles import ProfileStore

    with user_errors():
        ProfileStore(index_path).delete(name)
    click.echo(f"deleted profile {name}")


@click.command()
@click.argument("name")
@INDEX
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@FILTERS
@click.option(
    "--diversity",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Weight of variety in maximal marginal relevance (0: by relevance alone).",
)
@CHECK
@JSON
def recommend(
    name: str,
    index_path: Path,
    k: int,
    username: str | None,
    company: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    min_likes: int | None,
    diversity: float,
    check: bool,
    as_json: bool,
) -> None:
    """Tweets for profile NAME that it has not liked, each with what made it come up."""
    from retrieval.index.filters import Filters, whole_day
    from retrieval.index.profiles import ProfileStore
    from retrieval.query.search import Searcher
    from retrieval.tasks.recommend.recommend import recommend as recommend_for

    filters = Filters(username=username, company=company, since=since, until=whole_day(until), min_likes=min_likes)
    with user_errors():
        person = ProfileStore(index_path).get(name)
        found = recommend_for(Searcher.open(index_path, check=check), person, k, filters=filters, diversity=diversity)
    if as_json:
        render.dump([r.to_json() for r in found])
    else:
        render.recommendations(found)


@click.command()
@click.argument("text", required=False)
@INDEX
@click.option("--id", "tweet_id", type=int, default=None, help="A stored tweet instead of TEXT.")
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@JSON
def audience(text: str | None, index_path: Path, tweet_id: int | None, k: int, as_json: bool) -> None:
    """The profiles a post (TEXT or --id) fits best, with the interests it touches."""
    from retrieval.query.early import load_text_model

    if (text is None) == (tweet_id is None):
        raise click.UsageError("give one of TEXT or --id")
    loading = load_text_model(index_path)  # both embed a text; the model loads while the search stack imports
    from retrieval.errors import RetrievalError
    from retrieval.index.profiles import ProfileStore
    from retrieval.query.search import Searcher
    from retrieval.tasks.recommend.recommend import audience as audience_of

    with user_errors():
        searcher = Searcher.open(index_path, loading)
        if tweet_id is not None:
            row = searcher.reader.find_tweet(tweet_id)
            if row is None or not row["content"]:
                raise RetrievalError(f"{index_path}: no tweet with id {tweet_id} and text")
            text = row["content"]
        found = audience_of(searcher, ProfileStore(index_path).all(), text or "", k)
    if as_json:
        render.dump([f.to_json() for f in found])
        return
    for f in found:
        touches = ", ".join(f.interests) or "-"
        click.echo(f"{f.score:6.3f} {f.profile:20} closest {f.closest}; interests: {touches}")
