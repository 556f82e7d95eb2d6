"""`models prepare` and `cache info | clear`: the text models and the embedding cache."""

from __future__ import annotations

import shutil

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import JSON, user_errors


@click.group()
def models() -> None:
    """The text models: weights from installed packages, int8 models made for this CPU."""


@models.command("prepare")
@click.argument("names", nargs=-1)
def models_prepare(names: tuple[str, ...]) -> None:
    """Assemble NAMES (default: mpnet minilm) and choose this CPU's int8 recipe for each now,
    instead of in the first `index build` (minutes for MPNet; ./setup.sh runs this)."""
    from retrieval.embed.text import text_embedder

    with user_errors():
        for name in names or ("mpnet", "minilm"):
            embedder = text_embedder(name, precision="int8")
            click.echo(f"{name}: {embedder.model_id}")


@click.group()
def cache() -> None:
    """The embedding cache (safe to delete: vectors are recomputed when needed)."""


@cache.command("info")
@JSON
def cache_info_cmd(as_json: bool) -> None:
    """Where the cache is and how big it has grown, per model and precision."""
    from retrieval.embed.cache import cache_folder, cache_info

    entries = cache_info()
    if as_json:
        render.dump({"folder": str(cache_folder()), "entries": entries})
    else:
        render.cache(cache_folder(), entries)


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached vector."""
    from retrieval.embed.cache import cache_folder

    shutil.rmtree(cache_folder(), ignore_errors=True)
    click.echo(f"removed {cache_folder()}")
