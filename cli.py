"""Command line: parse arguments, make one library call, print. `python cli.py --help`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # model-loading bars; ours stay

from retrieval.errors import RetrievalError  # noqa: E402

INDEX_OPTION = click.option(
    "--index",
    "index_path",
    required=True,
    envvar="RETRIEVAL_INDEX",
    type=click.Path(path_type=Path),
    help="Index folder (env RETRIEVAL_INDEX).",
)
HINTS = {
    "clip_checkpoint": "give --clip-checkpoint PATH (nothing is downloaded)",
    "precision": "use --precision {value}",
    "date": "give a later --date or none",
    "verify": "run `index verify --index {value}`",
    "encoding": "give --encoding, e.g. cp1252 or latin-1",
}
"""How the CLI words what a RetrievalError asks for (retrieval.errors.HINTS)."""
SPACES = ("text", "image")
"""The vector sets of an index (retrieval.index.reader.SPACES), named the same in every command."""
DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@contextmanager
def user_errors() -> Iterator[None]:
    """A user or data error is one line on stderr and exit code 1, never a traceback."""
    import duckdb

    try:
        yield
    except RetrievalError as e:
        hint = HINTS.get(e.hint, "") if e.hint else ""
        raise click.ClickException(str(e) + ("; " + hint.format(value=e.value) if hint else "")) from None
    except OSError as e:  # the library names the file where it can; this is the last resort
        raise click.ClickException(f"{e.filename or 'error'}: {e.strerror or e}") from None
    except duckdb.Error as e:
        raise click.ClickException(f"database error: {str(e).strip().splitlines()[0]}") from None


def _parse_bytes(text: str) -> float:
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 4G or 512M") from None


def _parse_columns(pairs: tuple[str, ...]) -> dict[str, str]:
    columns = {}
    for pair in pairs:
        field, sep, name = pair.partition("=")
        if not sep or not field or not name:
            raise click.BadParameter(f"{pair!r}: expected FIELD=COLUMN, e.g. text=body", param_hint="--column")
        columns[field.strip()] = name.strip()
    return columns


def _dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads for FAISS, torch, ONNX Runtime and llama.cpp (default: all cores; llama.cpp: the idle ones).",
)
def cli(verbose: int, quiet: bool, threads: int | None) -> None:
    """Vector search over brand tweets: build an index, find similar tweets, evaluate."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)


@cli.group()
def index() -> None:
    """Build, extend, describe and check index folders."""


def _embedder_for(model: str, batch_size: int, precision: str | None, cache: bool) -> Any:
    """The model, wrapped in the embedding cache unless --no-cache: a text is embedded once."""
    from retrieval.embed.cache import CachedEmbedder
    from retrieval.embed.text import text_embedder

    embedder = text_embedder(model, precision=precision, batch_size=batch_size, threads=_root_threads())  # type: ignore[arg-type]
    return CachedEmbedder(embedder, embedder.model_id) if cache else embedder


def embed_options(command: Any) -> Any:
    """--batch-size, --precision and --no-cache, shared by the commands that embed a file."""
    command = click.option("--no-cache", is_flag=True, help="Embed every text again, ignoring the cache.")(command)
    command = click.option(
        "--precision",
        type=click.Choice(["fp32", "int8", "fp16"]),
        default=None,
        help="fp32 (plain PyTorch), int8 (ONNX Runtime, CPU) or fp16 (CUDA). Default: fp16 on CUDA, "
        "the CPU default chosen by bench/bench_embed.py otherwise; `index add` uses the index's own.",
    )(command)
    return click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)(command)


def clip_options(command: Any) -> Any:
    """--clip-checkpoint and --clip-model, shared by every command that embeds or queries images."""
    command = click.option(
        "--clip-model",
        default=None,
        help="open_clip architecture of the checkpoint (default: the index's, else ViT-B-32).",
    )(command)
    return click.option(
        "--clip-checkpoint",
        type=click.Path(path_type=Path),
        default=None,
        envvar="RETRIEVAL_CLIP_CHECKPOINT",
        help="CLIP weights file (open_clip, .safetensors or .pt); nothing is downloaded. "
        "Queries default to the one the index was built with.",
    )(command)


def _clip_for(checkpoint: Path | None, model: str | None, index_path: Path | None = None) -> Any:
    from retrieval.embed.clip import clip_for
    from retrieval.index.store import read_manifest

    built = read_manifest(index_path).get("image", {}).get("embedder", {}) if index_path is not None else None
    return clip_for(checkpoint, model, built)


def _image_source(clip: Any, images: Path | None, offline: bool) -> Any:
    from retrieval.io.media import MediaFetcher
    from retrieval.pipeline.build import ImageSource

    if clip is None:
        if images is not None:
            raise RetrievalError("--images needs a CLIP model: give --clip-checkpoint PATH")
        return None
    return ImageSource(clip, MediaFetcher(network=not offline), folder=images)


def media_options(command: Any) -> Any:
    """Where a build finds images: --images DIR (local copies by tweet id) and --offline."""
    command = click.option("--offline", is_flag=True, help="Never download media; use local files only.")(command)
    command = click.option(
        "--images",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Folder of local images named by tweet id (123.jpg, 123_2.png), preferred over media URLs.",
    )(command)
    return clip_options(command)


SOURCE = click.argument("source", type=click.Path(path_type=Path))
COLUMN_OPTION = click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a field (id, text, username, company, date, likes, media) to a column of the file.",
)
ENCODING_OPTION = click.option(
    "--encoding", default=None, help="Text encoding of a CSV file (default: UTF-8, else detected as cp1252/latin-1)."
)
NO_WAIT_OPTION = click.option(
    "--no-wait", is_flag=True, help="Fail at once if another build or add is writing the index, instead of waiting."
)
CHECK_OPTION = click.option(
    "--check", is_flag=True, help="Checksum every file of the index before answering (default: only changed files)."
)
MISSING_TEXT_OPTION = click.option(
    "--allow-missing-text",
    is_flag=True,
    help="Keep rows that have likes but no text as metadata-only rows (they feed account statistics).",
)


@index.command("build")
@SOURCE
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Index folder (default indexes/<file stem>)."
)
@click.option(
    "--model", default="mpnet", show_default=True, help="mpnet, minilm, or a local sentence-transformers folder."
)
@click.option(
    "--factory",
    default=None,
    help="Any FAISS index factory string, e.g. 'IVF100,PQ96x4fs,Refine(SQ8)' (default: chosen from N, d and --memory).",
)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True, help="Number of shard files.")
@click.option("--memory", default="4G", show_default=True, help="Memory budget for the vector codes.")
@click.option("--no-text", is_flag=True, help="Image vectors only (needs --clip-checkpoint).")
@embed_options
@media_options
@COLUMN_OPTION
@ENCODING_OPTION
@MISSING_TEXT_OPTION
@NO_WAIT_OPTION
def index_build(
    source: Path,
    out: Path | None,
    model: str,
    factory: str | None,
    shards: int,
    memory: str,
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
) -> None:
    """Build an index from a tweet file (parquet, CSV, JSON Lines, xlsx) or a folder of images.

    Text vectors (MPNet by default) always, unless --no-text; CLIP image vectors of the tweets'
    media (or of the folder's images) when --clip-checkpoint is given."""
    from retrieval.pipeline.build import build_index

    out = out or Path("indexes") / source.stem
    text = not no_text and not source.is_dir()
    with user_errors():
        clip = _clip_for(clip_checkpoint, clip_model)
        if clip is None and no_text and not source.is_dir():
            raise RetrievalError("image vectors need a CLIP model: give --clip-checkpoint PATH (nothing is downloaded)")
        report = build_index(
            source,
            out,
            embedder=_embedder_for(model, batch_size, precision, not no_cache) if text else None,
            columns=_parse_columns(columns),
            encoding=encoding,
            allow_missing_text=allow_missing_text,
            factory=factory,
            shards=shards,
            memory_budget=_parse_bytes(memory),
            images=_image_source(clip, images, offline),
            text=text,
            wait=not no_wait,
        )
    m = report.manifest
    for name, section in (("text", m), ("image", m.get("image"))):
        if section and section["shards"]:
            click.echo(
                f"{out} {name}: {section['factory']}, {len(section['shards'])} shard(s), nprobe {section['nprobe']}, "
                f"10-recall@10 {section['recall_at_10']:.3f}"
            )
    if clip is None:
        click.echo("images: not embedded (no --clip-checkpoint); the index is text only")
    click.echo(report.summary())


@index.command("add")
@SOURCE
@INDEX_OPTION
@embed_options
@media_options
@COLUMN_OPTION
@ENCODING_OPTION
@MISSING_TEXT_OPTION
@NO_WAIT_OPTION
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
) -> None:
    """Append a file's tweets to an index as a new shard, without retraining."""
    from retrieval.embed.text import index_precision
    from retrieval.index.store import read_manifest
    from retrieval.pipeline.build import add_to_index

    with user_errors():
        info = read_manifest(index_path)["embedder"]
        clip = _clip_for(clip_checkpoint, clip_model, index_path)
        text_model = info["name"]
        report = add_to_index(
            source,
            index_path,
            embedder=_embedder_for(text_model, batch_size, precision or index_precision(info), not no_cache)
            if text_model
            else None,
            columns=_parse_columns(columns),
            encoding=encoding,
            allow_missing_text=allow_missing_text,
            images=_image_source(clip, images, offline),
            wait=not no_wait,
        )
    click.echo(report.summary())


@index.command("info")
@INDEX_OPTION
@click.option("--json", "as_json", is_flag=True)
def index_info(index_path: Path, as_json: bool) -> None:
    """What the manifest and the metadata table hold."""
    from retrieval.index.reader import IndexReader

    with user_errors(), IndexReader(index_path) as reader:
        info = {**reader.manifest, "table": reader.stats()}
    if as_json:
        _dump(info)
        return
    keys = (
        "version",
        "embedder",
        "factory",
        "metric",
        "nprobe",
        "recall_at_10",
        "bytes_per_vector",
        "next_id",
        "built_at",
        "updated_at",
    )
    for name, section in (("", info), ("image ", info.get("image"))):
        if not section:
            continue
        for key in keys:
            if key in section:
                click.echo(f"{name + key:17} {section[key]}")
        for shard in section["shards"]:
            click.echo(
                f"{name + 'shard':17} {shard['file']}  ids {shard['first_id']}..{shard['first_id'] + shard['rows'] - 1}"
                f"  sha256 {shard['sha256'][:12]}"
            )
    for key, value in info["table"].items():
        click.echo(f"{key:17} {value}")


@index.command("verify")
@INDEX_OPTION
def index_verify(index_path: Path) -> None:
    """Check shard checksums and that every FAISS id has its metadata row."""
    from retrieval.index.store import verify

    with user_errors():
        problems = verify(index_path)
    if problems:
        raise click.ClickException(f"{index_path}: " + "; ".join(problems))
    click.echo(f"{index_path}: ok")


@cli.group()
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


@cli.group()
def cache() -> None:
    """The embedding cache (safe to delete: vectors are recomputed when needed)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True)
def cache_info_cmd(as_json: bool) -> None:
    """Where the cache is and how big it has grown, per model and precision."""
    from retrieval.embed.cache import cache_folder, cache_info

    entries = cache_info()
    if as_json:
        _dump({"folder": str(cache_folder()), "entries": entries})
        return
    click.echo(f"folder {cache_folder()}")
    for e in entries:
        click.echo(f"{e['model_id']:24} {e['vectors']:>10} vectors {e['bytes'] / 2**20:>9.1f} MiB")
    total = sum(int(e["bytes"]) for e in entries)
    click.echo(f"{'total':24} {sum(int(e['vectors']) for e in entries):>10} vectors {total / 2**20:>9.1f} MiB")


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached vector."""
    from retrieval.embed.cache import cache_folder

    shutil.rmtree(cache_folder(), ignore_errors=True)
    click.echo(f"removed {cache_folder()}")


def _filters(
    username: str | None,
    company: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    min_likes: int | None,
) -> Any:
    from retrieval.index.reader import Filters, whole_day

    return Filters(username=username, company=company, since=since, until=whole_day(until), min_likes=min_likes)


def _cut(text: str, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


@cli.command()
@click.argument("text", required=False)
@INDEX_OPTION
@click.option("--id", "tweet_id", type=int, default=None, help="Query by an indexed tweet's id instead of text.")
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@click.option("--username", default=None, help="Only tweets from this account.")
@click.option("--company", default=None, help="Only tweets of this company.")
@click.option("--since", type=DATE, default=None, help="Only tweets on or after this date.")
@click.option("--until", type=DATE, default=None, help="Only tweets on or before this date (whole day).")
@click.option("--min-likes", type=click.IntRange(0), default=None)
@click.option("--nprobe", type=click.IntRange(1), default=None, help="Lists to visit (default: the tuned value).")
@click.option("--image", "image_path", default=None, help="Query by an image (file or URL) over the image vectors.")
@click.option(
    "--space",
    type=click.Choice(SPACES),
    default="text",
    show_default=True,
    help="For TEXT: the text model over tweet texts, or CLIP's text tower over tweet images.",
)
@clip_options
@CHECK_OPTION
@click.option("--json", "as_json", is_flag=True)
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
    clip_checkpoint: Path | None,
    clip_model: str | None,
    check: bool,
    as_json: bool,
) -> None:
    """Similar past tweets: nearest neighbours of TEXT, of a stored tweet (--id) or of an image (--image)."""
    from retrieval.query.search import Searcher

    if sum(x is not None for x in (text, tweet_id, image_path)) != 1:
        raise click.UsageError("give one of TEXT, --id or --image")
    filters = _filters(username, company, since, until, min_likes)
    with user_errors():
        needs_clip = image_path is not None or space == "image"
        clip = _clip_for(clip_checkpoint, clip_model, index_path) if needs_clip else None
        searcher = Searcher.open(index_path, clip=clip, check=check)
        if image_path is not None:
            hits = searcher.similar_image(_load_image(image_path), k, filters=filters, nprobe=nprobe)
        elif tweet_id is not None:
            hits = searcher.similar_to_tweet(tweet_id, k, filters=filters, nprobe=nprobe)
        else:
            hits = searcher.similar(text or "", k, filters=filters, nprobe=nprobe, space=space)
    if as_json:
        _dump([h.to_json() for h in hits])
        return
    if not hits:
        click.echo("no tweets match")
        return
    width = shutil.get_terminal_size((120, 20)).columns
    click.echo(f"{'#':>3} {'score':>6} {'date':10} {'account':18} {'likes':>7}  text")
    for h in hits:
        t = h.tweet
        date = t["date"].strftime("%Y-%m-%d") if t["date"] else "-"
        likes = "-" if t["likes"] is None else str(t["likes"])
        head = f"{h.rank:>3} {h.score:6.3f} {date:10} {_cut(t['username'] or '-', 18):18} {likes:>7}  "
        click.echo(head + _cut(t["content"] or _media_text(t["media"]), width - len(head)))


def _media_text(media: str | None) -> str:
    """What to show for a tweet without text: its media files or URLs."""
    items = json.loads(media or "[]")
    return " ".join(str(m.get("url") or m.get("thumbnail")) for m in items) or "-"


def _load_image(source: str) -> Any:
    """One query image (file or URL), or a one-line error saying why it cannot be used."""
    from retrieval.io.media import MediaFetcher

    found = MediaFetcher().fetch([source])[0]
    if found.image is None:
        raise RetrievalError(f"{source}: {found.problem}")
    return found.image


@cli.group("eval")
def evaluate() -> None:
    """Measure search quality and speed."""


@evaluate.command("search")
@INDEX_OPTION
@click.option("--nprobe", type=click.IntRange(1), default=None)
@click.option("--space", type=click.Choice(SPACES), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_search_cmd(index_path: Path, nprobe: int | None, space: str, as_json: bool) -> None:
    """Recall against exact search (1-recall@1, 10-recall@10), ms per query, bytes per vector."""
    from retrieval.evaluation.likes import eval_search
    from retrieval.index.reader import IndexReader

    with user_errors(), IndexReader(index_path) as reader:
        result = eval_search(reader, nprobe=nprobe, space=space)
    if as_json:
        _dump(result)
        return
    for key, value in result.items():
        click.echo(f"{key:22} {value:.4f}" if isinstance(value, float) else f"{key:22} {value}")


def _parse_params(pairs: tuple[str, ...]) -> Any:
    from retrieval.tasks.likes.predict import PredictConfig

    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--param")
        overrides[name.strip()] = value.strip()
    with user_errors():
        return PredictConfig.with_overrides(overrides)


PARAM_OPTION = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a predictor setting (k, k_account, temperature, blend, ...); defaults are tuned.",
)


@cli.command()
@click.argument("text")
@INDEX_OPTION
@click.option("--username", required=True, help="The account that will post the tweet.")
@click.option("--company", default=None, help="Its company (default: the one the index knows for the account).")
@click.option("--date", type=DATE, default=None, help="When it will be posted: only earlier tweets are used.")
@click.option("--show", type=click.IntRange(0), default=10, show_default=True, help="Neighbours to list.")
@click.option("--image", "image_path", default=None, help="The tweet's image: its image neighbours join the text ones.")
@clip_options
@PARAM_OPTION
@CHECK_OPTION
@click.option("--json", "as_json", is_flag=True)
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
    import time

    from retrieval.index.reader import IndexReader
    from retrieval.query.search import Searcher
    from retrieval.tasks.likes.predict import IndexHistory, Query, predict_likes

    config = _parse_params(params)
    with user_errors():
        if not text.strip():
            raise RetrievalError("the tweet text is empty")
        reader = IndexReader(index_path, check=check)
        history = IndexHistory(reader)
        clip = _clip_for(clip_checkpoint, clip_model, index_path) if image_path is not None else None
        searcher = Searcher(reader, clip=clip)
        image = searcher.image_vector(_load_image(image_path)) if image_path is not None else None
        start = time.perf_counter()
        vector = searcher.embedder.encode([text.strip()])
        query = Query(username, company, date)
        found = predict_likes(history, vector, [query], config, images=[image])[0]
        elapsed_ms = (time.perf_counter() - start) * 1000
    if as_json:
        _dump({**found.to_json(), "elapsed_ms": round(elapsed_ms, 1)})
        return
    prior = found.prior
    where = {
        "account": f"account {username} ({prior.account_tweets} tweets)",
        "company": f"company {prior.company} ({prior.company_tweets} tweets; {username} has none)",
        "base": f"tweets like it ({username} and its company have none)",
    }[prior.source]
    click.echo(f"likes     {found.likes:,.0f}  (80% interval {found.low:,.0f} .. {found.high:,.0f})")
    click.echo(
        f"prior     {math.expm1(prior.value):,.0f} likes from {where}; similar tweets {found.adjustment:+.2f} log1p"
    )
    if not found.neighbours:
        click.echo("no earlier tweets with text to compare with")
        return
    width = shutil.get_terminal_size((120, 20)).columns
    click.echo(f"{'weight':>6} {'score':>6} {'space':5} {'date':10} {'account':18} {'likes':>7}  text")
    for n in found.neighbours[:show]:
        t = n.tweet
        when = t["date"].strftime("%Y-%m-%d") if t.get("date") else "-"
        account = _cut(t.get("username") or "-", 18)
        head = f"{n.weight:6.3f} {n.score:6.3f} {n.space:5} {when:10} {account:18} {n.likes:>7}  "
        click.echo(head + _cut(t.get("content") or _media_text(t.get("media")), width - len(head)))
    if rest := found.neighbours[show:]:
        click.echo(f"(+{len(rest)} more neighbours, weight {sum(n.weight for n in rest):.3f})")


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
@click.option("--model", default="mpnet", show_default=True, help="Embedder for --input (--index uses its own).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold assignment.")
@click.option(
    "--baselines",
    default="global_median,account_median,gbm",
    show_default=True,
    help="Comma-separated baselines to run beside the kNN ('' for none).",
)
@embed_options
@PARAM_OPTION
@click.option("--json", "as_json", is_flag=True)
def eval_likes_cmd(
    input_path: Path | None,
    index_path: Path | None,
    test_path: Path | None,
    extra_path: Path | None,
    model: str,
    folds: int,
    seed: int,
    baselines: str,
    batch_size: int,
    precision: str | None,
    no_cache: bool,
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Likes prediction against baselines: CV inside --input, or --index predicting --test."""
    from retrieval.evaluation.likes import BASELINES, LIKES_METRICS, likes_cv_on_file, likes_on_index_file

    cv_form = input_path is not None and index_path is None and test_path is None
    index_form = input_path is None and index_path is not None and test_path is not None
    if not (cv_form or index_form):
        raise click.UsageError("give either --input FILE, or --index DIR with --test FILE")
    if extra_path is not None and input_path is None:
        raise click.UsageError("--extra goes with --input; for an index, `index add FILE --allow-missing-text`")
    chosen = tuple(b.strip() for b in baselines.split(",") if b.strip())
    if unknown := set(chosen) - set(BASELINES):
        raise click.BadParameter(f"unknown {sorted(unknown)}; use {', '.join(BASELINES)}", param_hint="--baselines")
    config = _parse_params(params)
    with user_errors():
        if input_path is not None:
            embedder = _embedder_for(model, batch_size, precision, not no_cache)
            result = likes_cv_on_file(
                input_path, embedder, extra=extra_path, folds=folds, seed=seed, config=config, baselines=chosen
            )
        else:
            result = likes_on_index_file(index_path, test_path, config=config, baselines=chosen)
    if as_json:
        _dump(result)
        return
    source = f"{folds}-fold CV on {input_path}" if input_path else f"{index_path} predicting {test_path}"
    click.echo(f"{source}: {result['tweets']} tweets scored, {result['skipped_no_history']} with no earlier history")
    click.echo(f"{'method':16}" + "".join(f"{m:>13}" for m in LIKES_METRICS))
    for name, row in [("knn", result), *result["baselines"].items()]:
        cells = "".join(f"{'-' if row[m] is None else row[m]:>13}" for m in LIKES_METRICS)
        click.echo(f"{name:16}{cells}")


GGUF_OPTION = click.option(
    "--llm",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A GGUF chat model (default: the bundled SmolLM2-135M-Instruct).",
)


def _generate_config(exemplars: int, max_tokens: int, temperature: float, seed: int) -> Any:
    from retrieval.tasks.generate.rag import GenerateConfig

    return GenerateConfig(exemplars=exemplars, max_tokens=max_tokens, temperature=temperature, seed=seed)


def _root_threads() -> int | None:
    """The group's --threads, for the embedder and llama.cpp (which take their thread counts per model)."""
    return click.get_current_context().find_root().params.get("threads")


def generate_options(command: Any) -> Any:
    """Model and sampling options shared by `generate` and `eval generate`."""
    command = click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same tweets.")(command)
    command = click.option("--temperature", type=click.FloatRange(0), default=0.5, show_default=True)(command)
    command = click.option("--max-tokens", type=click.IntRange(16), default=96, show_default=True)(command)
    command = click.option(
        "--exemplars", type=click.IntRange(0), default=5, show_default=True, help="Past tweets in the prompt."
    )(command)
    return GGUF_OPTION(command)


@cli.command()
@INDEX_OPTION
@click.option("--username", required=True, help="The account that will post the tweet.")
@click.option("--company", default=None, help="Its company (default: the one the index knows for the account).")
@click.option("--date", type=DATE, default=None, help="When it will be posted: only earlier tweets are exemplars.")
@click.option("--media", default="", help="What the picture or video shows, in words.")
@click.option("--topic", default=None, help="What the tweet is about.")
@click.option("--likes", type=click.IntRange(0), default=None, help="The likes wanted.")
@click.option("--candidates", type=click.IntRange(1), default=1, show_default=True, help="Tweets to generate and rank.")
@click.option(
    "--image",
    "image_path",
    default=None,
    help="The picture (file or URL): CLIP describes it for --media, and its image neighbours join the exemplars.",
)
@clip_options
@generate_options
@click.option("--json", "as_json", is_flag=True)
def generate(
    index_path: Path,
    username: str,
    company: str | None,
    date: dt.datetime | None,
    media: str,
    topic: str | None,
    likes: int | None,
    candidates: int,
    image_path: str | None,
    clip_checkpoint: Path | None,
    clip_model: str | None,
    model_path: Path | None,
    exemplars: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    as_json: bool,
) -> None:
    """Write a tweet for an account from its own well-liked past tweets (offline, llama.cpp)."""
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import Brief, Generator, image_for_brief
    from retrieval.tasks.generate.rag import generate as run_generate

    config = _generate_config(exemplars, max_tokens, temperature, seed)
    stream = sys.stderr.isatty()  # tokens stream to stderr, so stdout keeps only the result

    current = [-1]

    def show(n: int, piece: str) -> None:
        if n != current[0]:
            current[0] = n
            click.echo(f"\n[candidate {n + 1}] ", nl=False, err=True)
        click.echo(piece, nl=False, err=True)

    # the model first: a bad file fails before the index and CLIP load
    with user_errors(), Generator(model_path, max_ctx=config.max_ctx, n_threads=_root_threads()) as generator:
        clip = _clip_for(clip_checkpoint, clip_model, index_path) if image_path is not None else None
        searcher = Searcher.open(index_path, clip=clip)
        image = None
        if image_path is not None:
            described, image = image_for_brief(searcher, _load_image(image_path), media)
            if described != media:
                click.echo(f"media: {described}", err=True)
            media = described
        brief = Brief(username=username, company=company, date=date, media=media, likes=likes, topic=topic)
        found, method = run_generate(
            searcher, generator, brief, config, candidates=candidates, on_token=show if stream else None, image=image
        )
        if stream:
            click.echo(err=True)
    if as_json:
        _dump({"model": generator.name, "ranked_by": method, "candidates": [c.to_json() for c in found]})
        return
    width = shutil.get_terminal_size((120, 20)).columns
    if method:
        click.echo(f"{len(found)} candidates, best first by {method.replace('_', ' ')}")
    for i, c in enumerate(found, 1):
        likes_text = f"  predicted likes {c.predicted_likes:,.0f}" if c.predicted_likes is not None else ""
        click.echo(f"\n#{i} (seed {c.seed}, {c.tokens} tokens in {c.seconds:.1f}s){likes_text}")
        click.echo(c.text or "(the model returned no usable text)")
    if found and found[0].exemplars:
        click.echo(f"\nbuilt from {len(found[0].exemplars)} past tweets:")
        click.echo(f"{'id':>8} {'level':8} {'account':18} {'likes':>7}  text")
        for e in found[0].exemplars:
            tweet_id = e.tweet_id if e.tweet_id is not None else e.vec_id
            likes_cell = "-" if e.likes is None else e.likes
            head = f"{tweet_id:>8} {e.level:8} {_cut(e.username or '-', 18):18} {likes_cell:>7}  "
            click.echo(head + _cut(e.content, width - len(head)))
    else:
        click.echo("\nno past tweets found: generated from the brief alone")


@evaluate.command("generate")
@INDEX_OPTION
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="Tweets to rewrite.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="Skip the first N tweets.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only N tweets of --input (after --offset).")
@generate_options
@click.option("--json", "as_json", is_flag=True)
def eval_generate_cmd(
    index_path: Path,
    input_path: Path,
    offset: int,
    limit: int | None,
    model_path: Path | None,
    exemplars: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    as_json: bool,
) -> None:
    """BLEU-1..4 and ROUGE-L of retrieval only, the model alone and RAG, from metadata alone."""
    from retrieval.evaluation.generation import SYSTEMS, eval_generation, load_rows
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import Generator

    config = _generate_config(max(exemplars, 1), max_tokens, temperature, seed)

    def progress(done: int, total: int) -> None:
        if not as_json and (done % 10 == 0 or done == total):
            click.echo(f"{done}/{total} tweets", err=True)

    with user_errors():
        rows = load_rows(input_path, limit, offset=offset)
        with Generator(model_path, max_ctx=config.max_ctx, n_threads=_root_threads()) as generator:
            result = eval_generation(Searcher.open(index_path), generator, rows, config, progress=progress)
    result["input"] = str(input_path)
    if as_json:
        _dump(result)
        return
    click.echo(
        f"{result['tweets']} tweets of {input_path}, index {index_path} ({result['embedder']}), {result['model']}"
    )
    metrics = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")
    click.echo(f"{'system':16}" + "".join(f"{m:>9}" for m in metrics))
    for system in SYSTEMS:
        click.echo(f"{system:16}" + "".join(f"{result[system][m]:>9.4f}" for m in metrics))
    per = result["seconds_per_tweet"]
    click.echo(f"tokens/s {result['tokens_per_s']}; s/tweet: rag {per['rag']}, llm_only {per['llm_only']}")


if __name__ == "__main__":
    cli()
