"""What every command shares: its options (one meaning per name), their parsing, and how a
library error becomes one line on stderr."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from retrieval.errors import RetrievalError

HINTS = {
    "clip_checkpoint": "give --clip-checkpoint PATH (nothing is downloaded)",
    "precision": "use --precision {value}",
    "date": "give a later --date or none",
    "verify": "run `index verify --index {value}`",
    "encoding": "give --encoding, e.g. cp1252 or latin-1",
    "ids": "give --column id=",
}
"""How the CLI words what a RetrievalError asks for (retrieval.errors.HINTS)."""
SPACES = ("text", "image")
"""The vector sets of an index (retrieval.index.reader.SPACES), named the same in every command."""
DATE = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


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


def combine(*decorators: Decorator) -> Decorator:
    """Several options as one decorator, applied in the order listed (as if stacked)."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


INDEX = click.option(
    "--index",
    "index_path",
    required=True,
    envvar="RETRIEVAL_INDEX",
    type=click.Path(path_type=Path),
    help="Index folder (env RETRIEVAL_INDEX).",
)
SOURCE = click.argument("source", type=click.Path(path_type=Path))
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
CHECK = click.option(
    "--check", is_flag=True, help="Checksum every file of the index before answering (default: only changed files)."
)
NO_WAIT = click.option(
    "--no-wait", is_flag=True, help="Fail at once if another build or add is writing the index, instead of waiting."
)
CHUNK = click.option(
    "--chunk",
    type=click.IntRange(1),
    default=8192,
    show_default=True,
    help="Texts embedded and added at a time: with --shards it bounds the build's memory, not the file's size.",
)
TEXT_MODEL = click.option(
    "--model",
    default="mpnet",
    show_default=True,
    help="Text model: mpnet, minilm, or a local sentence-transformers folder.",
)
SPACE = click.option(
    "--space",
    type=click.Choice(SPACES),
    default="text",
    show_default=True,
    help="text: the text model over tweet texts; image: CLIP over tweet images.",
)
MODE = click.option(
    "--mode",
    type=click.Choice(["vector", "keyword", "hybrid"]),
    default="vector",
    show_default=True,
    help="vector: by meaning; keyword: BM25 over the words (hashtags and handles kept); hybrid: both, fused by rank.",
)
NPROBE = click.option(
    "--nprobe", type=click.IntRange(1), default=None, help="Lists to visit (default: the tuned value)."
)


def image_option(help: str) -> Decorator:
    """--image FILE|URL, with what the command does with it."""
    return click.option("--image", "image_path", default=None, help=help)


RANKING = combine(
    click.option(
        "--collapse",
        type=click.FloatRange(0, 1, min_open=True),
        default=0.95,
        show_default=True,
        help="Fold hits within this cosine of each other into one (the best performer, with its near-copies).",
    ),
    click.option("--no-collapse", is_flag=True, help="Show every near-copy as a hit of its own."),
    click.option(
        "--rank",
        "order",
        type=click.Choice(["relevance", "engagement", "recent", "blend"]),
        default="relevance",
        show_default=True,
        help="relevance: by similarity; engagement: likes relative to the account's usual; recent: newest "
        "first; blend: similarity x engagement factor (x half-life decay).",
    ),
    click.option(
        "--half-life", default=None, help="With --rank blend: age at which a tweet counts half (180d, 6w, 1y)."
    ),
)


def parse_ranking(collapse: float, no_collapse: bool, order: str, half_life: str | None) -> Any:
    """The RANKING options as the query layer's Ranking."""
    from retrieval.query.ranking import Ranking

    if half_life is not None and order != "blend":
        raise click.UsageError("--half-life goes with --rank blend")
    return Ranking(order, None if no_collapse else collapse, parse_days(half_life) if half_life else None)


def parse_days(text: str) -> float:
    """An age such as 180d, 6w, 3m or 1y (a bare number is days) in days."""
    units = {"d": 1, "w": 7, "m": 30.4375, "y": 365.25}
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dwmy]?)\s*", text.lower())
    if found is None or float(found[1]) <= 0:
        raise click.BadParameter(f"{text!r} is not an age such as 180d, 6w or 1y", param_hint="--half-life")
    return float(found[1]) * units[found[2] or "d"]


@contextmanager
def interrupted_write() -> Iterator[None]:
    """Ctrl-C during a build or add (or SIGTERM, which the CLI turns into one): say what is kept."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            "interrupted: the index is as it was (a build or add publishes whole or not at all); "
            "the texts embedded so far are in the cache, so the same command goes on from there",
            err=True,
        )
        sys.exit(130)


INPUT_FILE = combine(
    click.option(
        "--column",
        "columns",
        multiple=True,
        metavar="FIELD=COLUMN",
        help="Map a field (id, text, username, company, date, likes, media) to a column of the file; "
        "id= reads no ids (for a file whose ids number its own rows, not tweets).",
    ),
    click.option(
        "--encoding",
        default=None,
        help="Text encoding of a CSV file (default: UTF-8, else detected as cp1252/latin-1).",
    ),
    click.option(
        "--allow-missing-text",
        is_flag=True,
        help="Keep rows that have likes but no text as metadata-only rows (they feed account statistics).",
    ),
)
EMBEDDING = combine(
    click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "int8", "fp16"]),
        default=None,
        help="fp32 (plain PyTorch), int8 (ONNX Runtime, CPU) or fp16 (CUDA). Default: fp16 on CUDA, "
        "the CPU default chosen by bench/bench_embed.py otherwise; `index add` uses the index's own.",
    ),
    click.option("--no-cache", is_flag=True, help="Embed every text again, ignoring the cache."),
)
CLIP = combine(
    click.option(
        "--clip-checkpoint",
        type=click.Path(path_type=Path),
        default=None,
        envvar="RETRIEVAL_CLIP_CHECKPOINT",
        help="CLIP weights file (open_clip, .safetensors or .pt); nothing is downloaded. "
        "Queries default to the one the index was built with.",
    ),
    click.option(
        "--clip-model",
        default=None,
        help="open_clip architecture of the checkpoint (default: the index's, else ViT-B-32).",
    ),
)
MEDIA = combine(
    CLIP,
    click.option(
        "--images",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Folder of local images named by tweet id (123.jpg, 123_2.png), preferred over media URLs.",
    ),
    click.option("--offline", is_flag=True, help="Never download media; use local files only."),
)
FILTERS = combine(
    click.option("--username", default=None, help="Only tweets from this account."),
    click.option("--company", default=None, help="Only tweets of this company."),
    click.option("--since", type=DATE, default=None, help="Only tweets on or after this date."),
    click.option("--until", type=DATE, default=None, help="Only tweets on or before this date (whole day)."),
    click.option("--min-likes", type=click.IntRange(0), default=None),
)
ACCOUNT = combine(
    click.option("--username", required=True, help="The account that will post the tweet."),
    click.option("--company", default=None, help="Its company (default: the one the index knows for the account)."),
    click.option("--date", type=DATE, default=None, help="When it will be posted: only earlier tweets are used."),
)
PARAMS = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a predictor setting (k, k_account, temperature, blend, ...); defaults are tuned.",
)
LLM = click.option(
    "--llm",
    "llm_path",
    default=None,
    metavar="smollm2|gemma3-270m|PATH",
    help="The language model: a packaged one by name (default: gemma3-270m; smollm2 is SmolLM2-135M-Instruct)"
    " or a GGUF file.",
)
GENERATION = combine(
    LLM,
    click.option(
        "--exemplars", type=click.IntRange(0), default=5, show_default=True, help="Past tweets in the prompt."
    ),
    click.option("--max-tokens", type=click.IntRange(16), default=96, show_default=True),
    click.option(
        "--min-tokens",
        type=click.IntRange(0),
        default=32,
        show_default=True,
        help="Tokens before a draft may end (a base model such as Gemma ends its line early).",
    ),
    click.option(
        "--diversity",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Choose exemplars unlike each other (MMR): 0.3 gives more original drafts that score"
        " lower against the real tweets (docs/generation.md).",
    ),
    click.option("--temperature", type=click.FloatRange(0), default=0.5, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same tweets."),
    click.option(
        "--grammar",
        is_flag=True,
        help="Constrain sampling to one paragraph with at most 3 emoji in a row (slower; see docs/generation.md).",
    ),
)
DRAFTS = combine(
    click.option(
        "--candidates",
        type=click.IntRange(1),
        default=4,
        show_default=True,
        help="Drafts to write and rank; the first is the best.",
    ),
    click.option(
        "--rank",
        type=click.Choice(["consensus", "voice", "likes"]),
        default="consensus",
        show_default=True,
        help="Best first by consensus (shares most with the other drafts and the exemplars), brand voice"
        " (closest to the account's own tweets) or predicted likes; near-copies of past tweets last.",
    ),
    click.option(
        "--original",
        is_flag=True,
        help="Write a draft again (up to 3 times) when it is a near-copy (cosine >= 0.95) of a past tweet.",
    ),
)


def parse_bytes(text: str) -> float:
    """A size such as 4G or 512M in bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 4G or 512M", param_hint="--memory") from None


def parse_columns(pairs: tuple[str, ...]) -> dict[str, str]:
    """--column FIELD=COLUMN pairs as a mapping."""
    columns = {}
    for pair in pairs:
        field, sep, name = pair.partition("=")
        if not sep or not field or not (name or field.strip() == "id"):
            expected = "expected FIELD=COLUMN, e.g. text=body (or id= for no ids)"
            raise click.BadParameter(f"{pair!r}: {expected}", param_hint="--column")
        columns[field.strip()] = name.strip()
    return columns


def parse_params(pairs: tuple[str, ...]) -> Any:
    """--param NAME=VALUE pairs as a PredictConfig."""
    from retrieval.tasks.likes.predict import PredictConfig

    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--param")
        overrides[name.strip()] = value.strip()
    with user_errors():
        return PredictConfig.with_overrides(overrides)


def root_threads() -> int | None:
    """The group's --threads, for the embedder and llama.cpp (which take their thread counts per model)."""
    return click.get_current_context().find_root().params.get("threads")


def text_embedder(model: str, batch_size: int, precision: str | None, no_cache: bool) -> Any:
    """The text model the options ask for, behind the embedding cache unless --no-cache."""
    from retrieval.embed.cache import cached_text_embedder

    return cached_text_embedder(
        model, precision=precision, batch_size=batch_size, threads=root_threads(), cache=not no_cache
    )  # type: ignore[arg-type]


def image_source(clip: Any, images: Path | None, offline: bool) -> Any:
    """How a build gets images: from --images and the media URLs, embedded by CLIP (None: no images)."""
    from retrieval.io.media import MediaFetcher
    from retrieval.pipeline.build import ImageSource

    if clip is None:
        if images is not None:
            raise click.ClickException("--images needs a CLIP model: give --clip-checkpoint PATH")
        return None
    return ImageSource(clip, MediaFetcher(network=not offline), folder=images)


def generate_config(
    exemplars: int, max_tokens: int, min_tokens: int, diversity: float, temperature: float, seed: int, grammar: bool
) -> Any:
    from retrieval.tasks.generate.rag import GenerateConfig

    return GenerateConfig(
        exemplars=exemplars,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        diversity=diversity,
        temperature=temperature,
        seed=seed,
        grammar=grammar,
    )
