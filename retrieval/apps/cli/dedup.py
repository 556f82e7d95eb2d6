"""`dedup`: the near-copy groups of a whole index."""

from __future__ import annotations

from pathlib import Path

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import CHECK, INDEX, JSON, NPROBE, user_errors


@click.command()
@INDEX
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.95,
    show_default=True,
    help="Cosine at or above which two tweets are near-copies (the same as similar --collapse).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write every group's members (.parquet or .csv)."
)
@click.option("--show", type=click.IntRange(0), default=5, show_default=True, help="Largest groups to print.")
@NPROBE
@CHECK
@JSON
def dedup(
    index_path: Path, threshold: float, out: Path | None, show: int, nprobe: int | None, check: bool, as_json: bool
) -> None:
    """Near-duplicate groups of the index: tweets within THRESHOLD of each other, chained, with
    each group's best performer (the highest likes relative to its account's usual)."""
    from retrieval.query.search import Searcher
    from retrieval.tasks.dedup import find_duplicates, write_members

    with user_errors():
        found = find_duplicates(Searcher.open(index_path, check=check), threshold, nprobe=nprobe, progress=not as_json)
        written = write_members(found, out) if out is not None else None
    if as_json:
        render.dump({**found.summary(), "largest": found.largest(show), "out": str(written) if written else None})
    else:
        render.duplicates(found, show)
        if written is not None:
            click.echo(f"wrote {found.in_groups} rows ({found.groups} groups) to {written}")
