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
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from retrieval.errors import DataError, RetrievalError
from retrieval.io.formats import BAD, READERS, Batch, message, reading
from retrieval.io.media_values import read_media
from retrieval.schema import TWEET_SCHEMA, account

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


_MAX_VALUE_CHARS = 200
_INT64_MAX = 2**63 - 1
# What pyarrow, openpyxl and zipfile raise on corrupt input (XML ParseError is a SyntaxError).
_JSON = json.JSONEncoder(ensure_ascii=False).encode  # built once; json.dumps(..., kwargs) builds one per call


def _resolve_columns(path: Path, names: list[str], overrides: Mapping[str, str], require_text: bool) -> dict[str, str]:
    """Map each field to a column of the file, failing early when a needed one is absent."""
    if unknown := sorted(set(overrides) - set(DEFAULT_COLUMNS)):
        raise DataError(message(path, f"unknown field(s) {unknown} in column overrides; use {list(DEFAULT_COLUMNS)}"))
    folded: dict[str, str] = {}
    for name in names:
        folded.setdefault(name.casefold(), name)
    listing = ", ".join(names) or "(none)"
    found: dict[str, str] = {}
    for field, candidates in DEFAULT_COLUMNS.items():
        if field in overrides:
            wanted = overrides[field]
            if not wanted:  # mapped to nothing: the file's column of that name is not this field
                continue
            if (column := wanted if wanted in names else folded.get(wanted.casefold())) is None:
                raise DataError(message(path, f"column {wanted!r} (for {field}) not in file; it has: {listing}"))
            found[field] = column
        elif column := next((folded[c] for c in candidates if c in folded), None):
            found[field] = column
    needed = "text" if require_text else "likes"
    if not names:
        raise DataError(message(path, "empty file: no header row, no rows"))
    if needed not in found:
        tried = ", ".join(DEFAULT_COLUMNS[needed])
        raise DataError(message(path, f"no {needed} column (tried {tried}); it has: {listing}"))
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
    return (tweet_id, when, account(_clean_str(user)), _clean_str(company), likes, text, media_json)


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


@contextmanager
def _writing(spill: Path) -> Iterator[None]:
    """A failed write of the loaded rows (a full disk, a missing folder) as one line naming the file."""
    try:
        yield
    except OSError as e:
        code = e.errno or next(map(int, re.findall(r"\[errno (\d+)\]", str(e))), None)  # pyarrow's are in the text
        cause = os.strerror(code) if code else str(e).strip().splitlines()[0]
        raise RetrievalError(message(spill, f"cannot write the rows read ({cause})")) from None


def load_tweets(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    *,
    require_text: bool = True,
    encoding: str | None = None,
    spill: Path | None = None,
) -> LoadResult:
    """Load one file into a TWEET_SCHEMA table, batch by batch, returning rejects beside it.

    `columns` maps our field names to the file's columns where the defaults do not fit; a field
    mapped to "" is read from no column (`{"id": ""}`: ids that number the file's own rows).
    With require_text=False, rows without text are kept (likes-only metadata) and the
    likes column is required instead of the text column. `encoding` is for CSV files that
    are not UTF-8 (detected when not given). With `spill`, the clean rows are written to that
    Arrow file as they are read and the table comes back memory-mapped from it: a build of
    millions of tweets then holds its metadata in the page cache, which the kernel can drop,
    instead of in the process's own memory (about 1.3 KB a tweet).
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(message(source, "not a file" if source.exists() else "file not found"))
    reader = READERS.get(source.suffix.lower())
    if reader is None:
        raise DataError(message(source, f"unsupported file type {source.suffix!r}; use one of {', '.join(READERS)}"))
    batches = reader(source, encoding)
    seen = _Seen()
    kept: list[pa.RecordBatch] = []
    sink = None
    if spill:
        with _writing(spill):
            sink = pa.ipc.new_file(str(spill), TWEET_SCHEMA)
    read = 0
    try:
        with reading(source):
            header = next(batches)
        fields = _resolve_columns(source, list(header), columns or {}, require_text)
        while True:
            with reading(source):
                batch = next(batches, None)
            if batch is None:
                break
            clean = _convert(batch, fields, read + 1, require_text, seen)
            if sink:
                with _writing(spill):
                    sink.write_batch(clean)
            else:
                kept.append(clean)
            read += len(next(iter(batch.values())))
    finally:
        batches.close()
        if sink:
            with _writing(spill):
                sink.close()
    if spill:
        table = pa.ipc.open_file(pa.memory_map(str(spill))).read_all()
        pa.default_memory_pool().release_unused()  # what the batches used, kept by the allocator
    else:
        table = pa.Table.from_batches(kept, schema=TWEET_SCHEMA)
    _warn_of_future_dates(source, table)
    if seen.epoch_units:
        units = " and ".join(sorted(seen.epoch_units))
        logger.warning("%s: dates are numbers, read as Unix time in %s (UTC)", source, units)
    logger.info("%s: kept %d of %d rows (%d rejected)", source, table.num_rows, read, len(seen.rejects))
    return LoadResult(path=str(source), table=table, read=read, rejects=seen.rejects)


def _warn_of_future_dates(source: Path, table: pa.Table) -> None:
    """Rows dated after now are kept (an archive may hold scheduled posts) but said, since they
    are more often a wrong time zone, a day-month swap or a typo, and they sort first by date."""
    dates = table.column("date")
    now = pa.scalar(datetime.now(UTC).replace(tzinfo=None), dates.type)
    future = pc.sum(pc.greater(dates, now)).as_py() or 0
    if future:
        latest = pc.max(dates).as_py()
        logger.warning("%s: %d rows dated after now (the latest %s); check the date column", source, future, latest)


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
        raise DataError(message(target, f"cannot write the rejects ({e.strerror or e})")) from None
    finally:
        tmp.unlink(missing_ok=True)
