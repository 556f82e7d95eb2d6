"""Read tweet files (parquet, CSV, JSON Lines, xlsx) into one clean Arrow table.

The source data is messy (HTML entities, bad dates, text in numeric columns), so
every unusable row comes back as a `Reject` with its row number instead of being
dropped silently; the caller decides whether to write them out.
"""

from __future__ import annotations

import codecs
import csv
import html
import json
import logging
import math
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import DataError
from retrieval.schema import TWEET_SCHEMA

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
BAD = "\0bad"
"""Batch key of rows a reader could not split into fields: (reason, raw text) or None per row."""

_BATCH_ROWS = 10_000
_MAX_VALUE_CHARS = 200
_INT64_MAX = 2**63 - 1
# What pyarrow, openpyxl and zipfile raise on corrupt input (XML ParseError is a SyntaxError).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, SyntaxError)
csv.field_size_limit(sys.maxsize)  # a tweet's text or media field may be megabytes
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


def _read_parquet(path: Path, encoding: str | None = None) -> Iterator[Batch]:
    with pq.ParquetFile(path) as file:
        yield {name: [] for name in file.schema_arrow.names}
        for batch in file.iter_batches(batch_size=_BATCH_ROWS):
            yield batch.to_pydict()


def _text_encoding(path: Path, encoding: str | None) -> str:
    """UTF-8 unless the bytes say otherwise; then cp1252 (what Excel writes in the West), which
    also reads latin-1 text, else latin-1, which reads anything. `encoding` overrides."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(_message(path, f"unknown encoding {encoding!r}"), hint="encoding") from None
        return encoding
    candidates = ["utf-8-sig", "cp1252"]
    with path.open("rb") as file:
        decoders = [codecs.getincrementaldecoder(name)() for name in candidates]
        while True:
            chunk = file.read(2**20)
            for i, decoder in enumerate(decoders):
                try:
                    if decoder is not None:
                        decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError:
                    decoders[i] = None
            if not chunk:
                break
        chosen = next((name for name, d in zip(candidates, decoders) if d is not None), "latin-1")
    if chosen != "utf-8-sig":
        logger.warning("%s: not UTF-8; read as %s (name the encoding to read it otherwise)", path, chosen)
    return chosen


def _read_csv(path: Path, encoding: str | None = None) -> Iterator[Batch]:
    """Python's csv reader, row by row: a row with the wrong number of fields is a reject with
    its line number instead of the end of the file, and a field may be of any size."""
    with path.open(encoding=_text_encoding(path, encoding), newline="") as file:
        rows = csv.reader(file)
        names = next(rows, [])
        yield {name: [] for name in names}
        records: list[dict[str, Any] | tuple[str, str]] = []
        line = rows.line_num
        while True:
            try:
                fields = next(rows, None)
            except csv.Error as e:
                records.append((f"malformed CSV row at line {line + 1} ({e})", ""))
                line = rows.line_num
                continue
            if fields is None:
                break
            if fields and len(fields) != len(names):
                problem = f"malformed CSV row at line {line + 1}: {len(fields)} fields, the header has {len(names)}"
                records.append((problem, ",".join(fields)))
            elif fields:
                records.append(dict(zip(names, fields)))
            line = rows.line_num
            if len(records) == _BATCH_ROWS:
                yield _records_batch(names, records)
                records = []
        if records:
            yield _records_batch(names, records)


def _records_batch(names: Iterable[str], records: Sequence[dict[str, Any] | tuple[str, str]]) -> Batch:
    """Columns of the good records (dicts), None where a record is bad, and BAD saying why."""
    batch: Batch = {name: [r.get(name) if isinstance(r, dict) else None for r in records] for name in names}
    batch[BAD] = [None if isinstance(r, dict) else r for r in records]
    return batch


def _jsonl_records(path: Path) -> Iterator[dict[str, Any] | tuple[str, str]]:
    """One object per non-blank line, or (why, raw line) for a line that is not one.

    Python's json, not pyarrow.json: pyarrow fails the whole file when a column mixes numbers
    and strings, which is exactly the bad row we want to reject on its own."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield (f"line {number} is not UTF-8", raw.decode("utf-8", "replace"))
                continue
            except json.JSONDecodeError as exc:
                yield (f"line {number} is not valid JSON ({exc.msg})", raw.decode("utf-8", "replace"))
                continue
            if not isinstance(record, dict):
                yield (f"line {number} is not a JSON object", raw.decode("utf-8", "replace"))
                continue
            yield record


def _read_jsonl(path: Path, encoding: str | None = None) -> Iterator[Batch]:
    names: dict[str, None] = {}  # two passes: a key may first appear on any line
    for record in _jsonl_records(path):
        if isinstance(record, dict):
            names.update(dict.fromkeys(record))
    yield {name: [] for name in names}
    for chunk in _chunks(_jsonl_records(path)):
        yield _records_batch(names, chunk)


def _read_xlsx(path: Path, encoding: str | None = None) -> Iterator[Batch]:
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


_READERS: dict[str, Callable[[Path, str | None], Iterator[Batch]]] = {
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


_EPOCH_UNITS = ((1e11, "seconds", 1.0), (1e14, "milliseconds", 1e3), (1e17, "microseconds", 1e6))


def _from_epoch(value: float, units: set[str]) -> datetime:
    """A Unix time in the unit its size implies (seconds up to the year 5138, then ms, us, ns):
    files from other tools store dates as int64 epochs in any of the four."""
    unit, per_second = next(((u, p) for limit, u, p in _EPOCH_UNITS if abs(value) < limit), ("nanoseconds", 1e9))
    units.add(unit)
    try:
        return datetime.fromtimestamp(value / per_second, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"epoch out of range: {value!r}") from None


def _to_datetime(value: Any, units: set[str]) -> datetime | None:
    """Naive UTC or None, else ValueError; aware values are converted so all dates compare.
    Numbers (and strings of digits) are Unix epochs; the unit each was read in goes into `units`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if isinstance(value, float) and math.isnan(value) else _from_epoch(value, units)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())  # ISO 8601, "YYYY-MM-DD HH:MM:SS", "Z", offsets
    elif not isinstance(value, datetime):
        if not isinstance(value, date):
            raise ValueError(f"not a date: {value!r}")
        value = datetime(value.year, value.month, value.day)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _to_int(value: Any, field: str, nan_missing: bool = True) -> int | None:
    """A whole number (12.0 from CSV/xlsx included) or None when missing, else ValueError(reason).
    NaN is missing where pandas writes it for a missing value (ids), else a reject (likes)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text else None
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"non-numeric {field}") from None
    if isinstance(value, float) and math.isnan(value) and not nan_missing:
        raise ValueError(f"NaN {field}")
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


_VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".m3u8")


def _medium(item: Any) -> dict[str, str | None] | None:
    """One medium from a URL or path (kind from its extension) or a {kind, url, thumbnail} object."""
    if isinstance(item, str) and item.strip():
        url = item.strip()
        suffix = url.split("?")[0].lower()
        kind = "gif" if suffix.endswith(".gif") else "video" if suffix.endswith(_VIDEO_SUFFIXES) else "photo"
        return {"kind": kind, "url": url, "thumbnail": None}
    if isinstance(item, dict) and (item.get("url") or item.get("thumbnail")):
        kind = item.get("kind") if item.get("kind") in ("photo", "video", "gif") else "photo"
        return {"kind": kind, "url": item.get("url") or None, "thumbnail": item.get("thumbnail") or None}
    return None


def read_media(value: Any) -> list[dict[str, str | None]]:
    """A media value as users have it, as a list of {kind, url, thumbnail}: the dataset's
    `[Photo(...)]` text, a JSON list (of URLs, paths or objects), a list, or one URL or path.

    Anything unrecognised gives [], never an error: media is decoration and must not cost a tweet."""
    if isinstance(value, list | tuple):
        items: Any = list(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("[") and ("Photo(" in text or "Video(" in text or "Gif(" in text):
            return parse_media(text)
        try:
            items = json.loads(text) if text[0] in "[{" else [text]
        except json.JSONDecodeError:
            return []
    else:
        return []
    items = items if isinstance(items, list) else [items]
    return [m for m in map(_medium, items) if m is not None]


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
    seen: _Seen,
) -> tuple[Any, ...]:
    """Check text, date, likes, then id; an id counts as seen only once its row is kept."""
    text = None if raw_text is None else html.unescape(str(raw_text)).strip() or None
    if text is None and require_text:
        raise _Rejected("text", "empty text", raw_text)
    try:
        when = _to_datetime(raw_date, seen.epoch_units)
    except ValueError:
        raise _Rejected("date", "unparseable date", raw_date) from None
    try:
        likes = _to_int(raw_likes, "likes", nan_missing=False)
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
        if tweet_id in seen.ids:
            raise _Rejected("id", f"duplicate id {tweet_id}", raw_id)
        seen.ids.add(tweet_id)
    media_json = _JSON(read_media(media))
    return (tweet_id, when, _clean_str(user), _clean_str(company), likes, text, media_json)


@dataclass
class _Seen:
    """What loading one file accumulates across its batches."""

    ids: set[int] = dataclass_field(default_factory=set)
    rejects: list[Reject] = dataclass_field(default_factory=list)
    epoch_units: set[str] = dataclass_field(default_factory=set)


def _convert(batch: Batch, fields: dict[str, str], first_row: int, require_text: bool, seen: _Seen) -> pa.RecordBatch:
    """Clean one batch with a plain loop per row: simple, and fast enough for 300k rows."""
    absent: list[Any] = [None] * len(next(iter(batch.values())))
    columns = [batch[fields[field]] if field in fields else absent for field in _ROW_FIELDS]
    unsplit = batch.get(BAD, absent)
    out: list[list[Any]] = [[] for _ in TWEET_SCHEMA]
    for row, values, bad_row in zip(range(first_row, first_row + len(absent)), zip(*columns, strict=True), unsplit):
        try:
            if bad_row is not None:
                raise _Rejected("row", *bad_row)
            kept = (row, *_clean_row(*values, require_text, seen))
        except _Rejected as bad:
            field_name, reason, value = bad.args
            value = "" if value is None else str(value)[:_MAX_VALUE_CHARS]
            seen.rejects.append(Reject(row, field_name, reason, value))
            continue
        for column, value in zip(out, kept, strict=True):
            column.append(value)
    arrays = [pa.array(column, type=field.type) for column, field in zip(out, TWEET_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=TWEET_SCHEMA)


def load_tweets(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    *,
    require_text: bool = True,
    encoding: str | None = None,
) -> LoadResult:
    """Load one file into a TWEET_SCHEMA table, batch by batch, returning rejects beside it.

    `columns` maps our field names to the file's columns where the defaults do not fit.
    With require_text=False, rows without text are kept (likes-only metadata) and the
    likes column is required instead of the text column. `encoding` is for CSV files that
    are not UTF-8 (detected when not given).
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(_message(source, "not a file" if source.exists() else "file not found"))
    reader = _READERS.get(source.suffix.lower())
    if reader is None:
        raise DataError(_message(source, f"unsupported file type {source.suffix!r}; use one of {', '.join(_READERS)}"))
    batches = reader(source, encoding)
    seen = _Seen()
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
            kept.append(_convert(batch, fields, read + 1, require_text, seen))
            read += len(next(iter(batch.values())))
    finally:
        batches.close()
    table = pa.Table.from_batches(kept, schema=TWEET_SCHEMA)
    if seen.epoch_units:
        units = " and ".join(sorted(seen.epoch_units))
        logger.warning("%s: dates are numbers, read as Unix time in %s (UTC)", source, units)
    logger.info("%s: kept %d of %d rows (%d rejected)", source, table.num_rows, read, len(seen.rejects))
    return LoadResult(path=str(source), table=table, read=read, rejects=seen.rejects)


def write_rejects(rejects: Sequence[Reject], path: str | Path) -> None:
    """Write rejects as JSON Lines so a person can grep them and fix the source file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for reject in rejects:
                out.write(json.dumps(asdict(reject), ensure_ascii=False) + "\n")
        tmp.replace(target)
    except OSError as e:
        raise DataError(_message(target, f"cannot write the rejects ({e.strerror or e})")) from None
    finally:
        tmp.unlink(missing_ok=True)
