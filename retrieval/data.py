"""Read tweet files (parquet, CSV, JSON Lines, xlsx) into one clean Arrow table.

The source data is messy (HTML entities, bad dates, text in numeric columns), so
every unusable row comes back as a `Reject` with its row number instead of being
dropped silently; the caller decides whether to write them out.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from retrieval.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "tweet_id"),
    "text": ("content", "text", "tweet"),
    "username": ("username", "user", "account"),
    "company": ("company", "inferred company", "inferred_company"),
    "date": ("date", "created_at", "time"),
    "likes": ("likes", "like_count"),
    "media": ("media",),
}

# date is naive UTC; media is JSON text: [{"kind": "photo"|"video"|"gif", "url", "thumbnail"}].
TWEET_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("tweet_id", pa.int64()),
        ("date", pa.timestamp("us")),
        ("username", pa.string()),
        ("company", pa.string()),
        ("likes", pa.int64()),
        ("content", pa.string()),
        ("media", pa.string()),
    ]
)


@dataclass(frozen=True)
class Reject:
    """One row that was not loaded: its 1-based data row, the first field that failed, and why."""

    row: int
    field: str
    reason: str
    value: str


@dataclass(frozen=True)
class LoadResult:
    """The usable rows of one file plus what was read and rejected, so callers can report both."""

    path: str
    table: pa.Table
    read: int
    rejects: list[Reject]


Batch = dict[str, list[Any]]  # column name -> its values for one batch of rows

_BATCH_ROWS = 10_000
_MAX_VALUE_CHARS = 200
_INT64_MAX = 2**63 - 1
# What pyarrow, openpyxl and zipfile raise on corrupt input (XML ParseError is a SyntaxError).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, SyntaxError)
_CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)  # tweets have line breaks inside quotes
# Media parsing is the largest per-row cost, so each pattern starts with a literal the
# regex engine can jump to instead of trying every position of the long URLs.
_URL_KEYS = ("previewUrl", "fullUrl", "thumbnailUrl")
_URL_FIELDS = {key: re.compile(key + r"""=(?:'([^']*)'|"([^"]*)")""") for key in _URL_KEYS}
_VARIANT = re.compile(r"""VideoVariant\(contentType='([^']*)', url=(?:'([^']*)'|"([^"]*)"), bitrate=(\d+|None)\)""")
_JSON = json.JSONEncoder(ensure_ascii=False).encode  # built once; json.dumps(..., kwargs) builds one per call


def _message(path: Path, problem: str) -> str:
    """One line naming the file, because the CLI prints DataError messages as they are."""
    return " ".join(f"{path}: {problem}".split())[:500]


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a reader library's exception into a DataError that names the file."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise DataError(_message(path, f"cannot read file ({type(exc).__name__}: {exc})")) from exc


def _chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, _BATCH_ROWS)):
        yield chunk


# Each reader first yields an empty batch that names the file's columns, then the rows.


def _read_parquet(path: Path) -> Iterator[Batch]:
    with pq.ParquetFile(path) as file:
        yield {name: [] for name in file.schema_arrow.names}
        for batch in file.iter_batches(batch_size=_BATCH_ROWS):
            yield batch.to_pydict()


def _read_csv(path: Path) -> Iterator[Batch]:
    with pacsv.open_csv(path, parse_options=_CSV_PARSE) as probe:
        names = probe.schema.names
    yield {name: [] for name in names}
    # All strings: types inferred from the first block would fail on a later "many" in likes.
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    with pacsv.open_csv(path, parse_options=_CSV_PARSE, convert_options=convert) as reader:
        for batch in reader:
            yield batch.to_pydict()


def _jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    # Python's json, not pyarrow.json: pyarrow fails the whole file when a column mixes
    # numbers and strings, which is exactly the bad row we want to reject on its own.
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(_message(path, f"line {number} is not valid JSON ({exc.msg})")) from exc
            if not isinstance(record, dict):
                raise DataError(_message(path, f"line {number} is not a JSON object"))
            yield record


def _read_jsonl(path: Path) -> Iterator[Batch]:
    names: dict[str, None] = {}  # two passes: a key may first appear on any line
    for record in _jsonl_records(path):
        names.update(dict.fromkeys(record))
    yield {name: [] for name in names}
    for chunk in _chunks(_jsonl_records(path)):
        yield {name: [record.get(name) for record in chunk] for name in names}


def _read_xlsx(path: Path) -> Iterator[Batch]:
    import openpyxl  # only xlsx needs it, so other formats do not pay for the import

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        names = ["" if value is None else str(value).strip() for value in next(rows, ())]
        yield {name: [] for name in names}
        filled = (row for row in rows if any(value is not None for value in row))  # Excel leaves blank rows
        for chunk in _chunks(filled):
            yield {name: [row[i] if i < len(row) else None for row in chunk] for i, name in enumerate(names)}
    finally:
        book.close()


_READERS: dict[str, Callable[[Path], Iterator[Batch]]] = {
    ".parquet": _read_parquet,
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".xlsx": _read_xlsx,
}


def _resolve_columns(path: Path, names: list[str], overrides: Mapping[str, str], require_text: bool) -> dict[str, str]:
    """Map each field to a column of the file, failing early when a needed one is absent."""
    if unknown := sorted(set(overrides) - set(DEFAULT_COLUMNS)):
        raise DataError(_message(path, f"unknown field(s) {unknown} in column overrides; use {list(DEFAULT_COLUMNS)}"))
    folded: dict[str, str] = {}
    for name in names:
        folded.setdefault(name.casefold(), name)
    listing = ", ".join(names) or "(none)"
    found: dict[str, str] = {}
    for field, candidates in DEFAULT_COLUMNS.items():
        if field in overrides:
            wanted = overrides[field]
            if (column := wanted if wanted in names else folded.get(wanted.casefold())) is None:
                raise DataError(_message(path, f"column {wanted!r} (for {field}) not in file; it has: {listing}"))
            found[field] = column
        elif column := next((folded[c] for c in candidates if c in folded), None):
            found[field] = column
    needed = "text" if require_text else "likes"
    if needed not in found:
        tried = ", ".join(DEFAULT_COLUMNS[needed])
        raise DataError(_message(path, f"no {needed} column (tried {tried}); it has: {listing}"))
    return found


def _clean_str(value: Any) -> str | None:
    return None if value is None else str(value).strip() or None


def _to_datetime(value: Any) -> datetime | None:
    """Naive UTC or None, else ValueError; aware values are converted so all dates compare."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())  # ISO 8601, "YYYY-MM-DD HH:MM:SS", "Z", offsets
    elif not isinstance(value, datetime):
        if not isinstance(value, date):
            raise ValueError(f"not a date: {value!r}")
        value = datetime(value.year, value.month, value.day)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _to_int(value: Any, field: str) -> int | None:
    """A whole number (12.0 from CSV/xlsx included) or None when missing, else ValueError(reason)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text else None
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"non-numeric {field}") from None
    if isinstance(value, float) and not math.isnan(value):
        if not value.is_integer():
            raise ValueError(f"non-integer {field}" if math.isfinite(value) else f"non-numeric {field}")
        value = int(value)
    if value is None or isinstance(value, float):  # the float left is NaN: missing, as pandas writes it
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"non-numeric {field}")
    if abs(value) > _INT64_MAX:
        raise ValueError(f"{field} out of range")
    return value


def _url_field(key: str, body: str) -> str | None:
    match = _URL_FIELDS[key].search(body)
    return (match.group(1) or match.group(2) or None) if match else None


def _best_video(body: str) -> str | None:
    """The mp4 variant with the highest bitrate, else the first variant with a url."""
    variants = [
        (kind, single or double, int(rate) if rate.isdigit() else -1)
        for kind, single, double, rate in _VARIANT.findall(body)
    ]
    mp4 = [v for v in variants if v[0] == "video/mp4" and v[1]]
    if mp4:
        return max(mp4, key=lambda v: v[2])[1]
    return next((url for _, url, _ in variants if url), None)


def parse_media(value: str | None) -> list[dict[str, str | None]]:
    """Parse the dataset's Python-repr media list with regexes (never eval: it is untrusted text).

    Photos give url=fullUrl and thumbnail=previewUrl; videos and gifs give the mp4 with the
    highest bitrate and their thumbnailUrl. Anything unrecognised gives [], never an error,
    because media is decoration and must not cost us a tweet.
    """
    if not value:
        return []
    # Cut the list into objects: [prefix, kind, body, kind, body, ...]. "VideoVariant(" has no "Video(".
    marked = value.replace("Photo(", "\0photo\0").replace("Video(", "\0video\0").replace("Gif(", "\0gif\0")
    pieces = marked.split("\0")
    items: list[dict[str, str | None]] = []
    for kind, body in zip(pieces[1::2], pieces[2::2], strict=False):
        if kind == "photo":
            thumbnail = _url_field("previewUrl", body)
            url = _url_field("fullUrl", body) or thumbnail
        else:
            thumbnail, url = _url_field("thumbnailUrl", body), _best_video(body)
        if url or thumbnail:
            items.append({"kind": kind, "url": url, "thumbnail": thumbnail})
    return items


class _Rejected(Exception):
    """A row check failed; args are (field, reason, raw value) for the Reject."""


_ROW_FIELDS = ("id", "text", "date", "likes", "username", "company", "media")


def _clean_row(
    raw_id: Any,
    raw_text: Any,
    raw_date: Any,
    raw_likes: Any,
    user: Any,
    company: Any,
    media: Any,
    require_text: bool,
    seen_ids: set[int],
) -> tuple[Any, ...]:
    """Check text, date, likes, then id; an id counts as seen only once its row is kept."""
    text = None if raw_text is None else html.unescape(str(raw_text)).strip() or None
    if text is None and require_text:
        raise _Rejected("text", "empty text", raw_text)
    try:
        when = _to_datetime(raw_date)
    except ValueError:
        raise _Rejected("date", "unparseable date", raw_date) from None
    try:
        likes = _to_int(raw_likes, "likes")
    except ValueError as exc:
        raise _Rejected("likes", str(exc), raw_likes) from None
    if likes is not None and likes < 0:
        raise _Rejected("likes", "negative likes", raw_likes)
    if text is None and likes is None:
        raise _Rejected("likes", "no text and no likes", raw_likes)
    try:
        tweet_id = _to_int(raw_id, "id")
    except ValueError:
        raise _Rejected("id", "non-integer id", raw_id) from None
    if tweet_id is not None:
        if tweet_id in seen_ids:
            raise _Rejected("id", f"duplicate id {tweet_id}", raw_id)
        seen_ids.add(tweet_id)
    media_json = _JSON(parse_media(media)) if isinstance(media, str) else "[]"
    return (tweet_id, when, _clean_str(user), _clean_str(company), likes, text, media_json)


def _convert(
    batch: Batch, fields: dict[str, str], first_row: int, require_text: bool, seen_ids: set[int], rejects: list[Reject]
) -> pa.RecordBatch:
    """Clean one batch with a plain loop per row: simple, and fast enough for 300k rows."""
    absent: list[Any] = [None] * len(next(iter(batch.values())))
    columns = [batch[fields[field]] if field in fields else absent for field in _ROW_FIELDS]
    out: list[list[Any]] = [[] for _ in TWEET_SCHEMA]
    for row, values in enumerate(zip(*columns, strict=True), first_row):
        try:
            kept = (row, *_clean_row(*values, require_text, seen_ids))
        except _Rejected as bad:
            field, reason, value = bad.args
            rejects.append(Reject(row, field, reason, "" if value is None else str(value)[:_MAX_VALUE_CHARS]))
            continue
        for column, value in zip(out, kept, strict=True):
            column.append(value)
    arrays = [pa.array(column, type=field.type) for column, field in zip(out, TWEET_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=TWEET_SCHEMA)


def load_tweets(path: str | Path, columns: Mapping[str, str] | None = None, *, require_text: bool = True) -> LoadResult:
    """Load one file into a TWEET_SCHEMA table, batch by batch, returning rejects beside it.

    `columns` maps our field names to the file's columns where the defaults do not fit.
    With require_text=False, rows without text are kept (likes-only metadata) and the
    likes column is required instead of the text column.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(_message(source, "not a file" if source.exists() else "file not found"))
    reader = _READERS.get(source.suffix.lower())
    if reader is None:
        raise DataError(_message(source, f"unsupported file type {source.suffix!r}; use one of {', '.join(_READERS)}"))
    batches = reader(source)
    seen_ids: set[int] = set()
    rejects: list[Reject] = []
    kept: list[pa.RecordBatch] = []
    read = 0
    try:
        with _reading(source):
            header = next(batches)
        fields = _resolve_columns(source, list(header), columns or {}, require_text)
        while True:
            with _reading(source):
                batch = next(batches, None)
            if batch is None:
                break
            kept.append(_convert(batch, fields, read + 1, require_text, seen_ids, rejects))
            read += len(next(iter(batch.values())))
    finally:
        batches.close()
    table = pa.Table.from_batches(kept, schema=TWEET_SCHEMA)
    logger.info("%s: kept %d of %d rows (%d rejected)", source, table.num_rows, read, len(rejects))
    return LoadResult(path=str(source), table=table, read=read, rejects=rejects)


def write_rejects(rejects: Sequence[Reject], path: str | Path) -> None:
    """Write rejects as JSON Lines so a person can grep them and fix the source file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as out:
        for reject in rejects:
            out.write(json.dumps(asdict(reject), ensure_ascii=False) + "\n")
