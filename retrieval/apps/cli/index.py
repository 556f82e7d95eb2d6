"""`index build | add | info | verify`: write and inspect index folders."""

from __future__ import annotations

from pathlib import Path

import click

from retrieval.apps.cli import render
from retrieval.apps.cli.options import (
    CHUNK,
    EMBEDDING,
    INDEX,
    INPUT_FILE,
    JSON,
    MEDIA,
    NO_WAIT,
    SOURCE,
    TEXT_MODEL,
    image_source,
    interrupted_write,
    parse_bytes,
    parse_columns,
    root_threads,
    text_embedder,
    user_errors,
)


@click.group()
def index() -> None:
    """Build, extend, describe and check index folders."""


@index.command("build")
@SOURCE
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Index folder (default indexes/<file stem>)."
)
@TEXT_MODEL
@click.option(
    "--factory",
    default=None,
    help="Any FAISS index factory string, e.g. 'IVF100,PQ96x4fs,Refine(SQ8)' (default: chosen from N, d and --memory).",
)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True, help="Number of shard files.")
@click.option("--memory", default="4G", show_default=True, help="Memory budget for the vector codes.")
@click.option(
    "--on-disk",
    is_flag=True,
    help="Codes stay in the shard files and queries page in only the lists they probe: --memory then bounds "
    "the disk, and no fast-scan PQ (its lists cannot be mapped).",
)
@click.option("--no-text", is_flag=True, help="Image vectors only (needs --clip-checkpoint).")
@EMBEDDING
@MEDIA
@INPUT_FILE
@NO_WAIT
@CHUNK
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="auto|ADDRESS",
    help="Embed on a Ray cluster ('auto': the local one, started if none runs); the rest of the build stays here.",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(1),
    default=None,
    help="Embedding actors, and shards filled at once (default: one per CPU/GPU).",
)
@click.option(
    "--dedup",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Keep one text vector per group of near-copies at this cosine (e.g. 0.95); every row stays searchable "
    "as its group's near-copy.",
)
def index_build(
    source: Path,
    out: Path | None,
    model: str,
    factory: str | None,
    shards: int,
    memory: str,
    on_disk: bool,
    no_text: bool,
    batch_size: int,
    precision: str | None,
    no_cache: bool,
    clip_checkpoint: Path | None,
    clip_model: str | None,
    images: Path | None,
    offline: bool,
    columns: tuple[str, ...],
    encoding: str | None,
    allow_missing_text: bool,
    no_wait: bool,
    chunk: int,
    ray_address: str | None,
    ray_workers: int | None,
    dedup: float | None,
) -> None:
    """Build an index from a tweet file (parquet, CSV, JSON Lines, xlsx) or a folder of images.

    Text vectors (MPNet by default) always, unless --no-text; CLIP image vectors of the tweets'
    media (or of the folder's images) when --clip-checkpoint is given."""
    from retrieval.embed.clip import clip_for
    from retrieval.pipeline.build import build_index

    out = out or Path("indexes") / source.stem
    text = not no_text and not source.is_dir()
    with user_errors(), interrupted_write():
        clip = clip_for(clip_checkpoint, clip_model)
        if clip is None and no_text and not source.is_dir():
            raise click.ClickException(
                "image vectors need a CLIP model: give --clip-checkpoint PATH (nothing is downloaded)"
            )
        embedder, fill = None, None
        if ray_address:
            from retrieval.pipeline.distributed import ray_shard_fill, ray_text_embedder

            fill = ray_shard_fill(ray_address, workers=ray_workers)
            if text:
                embedder = ray_text_embedder(
                    model,
                    ray_address,
                    workers=ray_workers,
                    precision=precision,
                    batch_size=batch_size,
                    cache=not no_cache,
                )
        elif text:
            embedder = text_embedder(model, batch_size, precision, no_cache)
        report = build_index(
            source,
            out,
            embedder=embedder,
            columns=parse_columns(columns),
            encoding=encoding,
            allow_missing_text=allow_missing_text,
            factory=factory,
            shards=shards,
            memory_budget=parse_bytes(memory),
            on_disk=on_disk,
            images=image_source(clip, images, offline),
            text=text,
            wait=not no_wait,
            dedup=dedup,
            fill=fill,
            batch=chunk,
        )
    render.vector_sets(out, report.manifest)
    if clip is None:
        click.echo("images: not embedded (no --clip-checkpoint); the index is text only")
    click.echo(report.summary())


@index.command("add")
@SOURCE
@INDEX
@EMBEDDING
@MEDIA
@INPUT_FILE
@NO_WAIT
@CHUNK
def index_add(
    source: Path,
    index_path: Path,
    batch_size: int,
    precision: str | None,
    no_cache: bool,
    clip_checkpoint: Path | None,
    clip_model: str | None,
    images: Path | None,
    offline: bool,
    columns: tuple[str, ...],
    encoding: str | None,
    allow_missing_text: bool,
    no_wait: bool,
    chunk: int,
) -> None:
    """Append a file's tweets to an index as a new shard, without retraining."""
    from retrieval.pipeline.build import add_to_index, embedder_for_adding
    from retrieval.query.search import index_clip

    with user_errors(), interrupted_write():
        embedder = embedder_for_adding(
            index_path, precision=precision, batch_size=batch_size, threads=root_threads(), cache=not no_cache
        )  # type: ignore[arg-type]
        report = add_to_index(
            source,
            index_path,
            embedder=embedder,
            columns=parse_columns(columns),
            encoding=encoding,
            allow_missing_text=allow_missing_text,
            images=image_source(index_clip(index_path, clip_checkpoint, clip_model), images, offline),
            wait=not no_wait,
            batch=chunk,
        )
    click.echo(report.summary())


@index.command("info")
@INDEX
@JSON
def index_info(index_path: Path, as_json: bool) -> None:
    """What the manifest and the metadata table hold."""
    from retrieval.index.reader import IndexReader

    with user_errors(), IndexReader(index_path) as reader:
        manifest, table = reader.manifest, reader.stats()
    if as_json:
        render.dump({**manifest.to_json(), "table": table})
    else:
        render.index_info(manifest, table)


@index.command("verify")
@INDEX
def index_verify(index_path: Path) -> None:
    """Check every file's checksum and that every FAISS id has its metadata row."""
    from retrieval.index.verify import verify

    with user_errors():
        problems = verify(index_path)
    if problems:
        raise click.ClickException(f"{index_path}: " + "; ".join(problems))
    click.echo(f"{index_path}: ok")
