"""The four tweet file formats read as batches of raw columns; turning values into tweets is tweets.py's job.

Each reader first yields an empty batch that names the file's columns, then the rows. A row
that cannot even be split into fields (malformed CSV, a line that is not JSON) comes back
under the BAD key, so it becomes a reject with its line number instead of ending the file.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import DataError

logger = logging.getLogger(__name__)

Batch = dict[str, list[Any]]  # column name -> its values for one batch of rows
BAD = "\0bad"
"""Batch key of rows a reader could not split into fields: (reason, raw text) or None per row."""

_BATCH_ROWS = 10_000
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, SyntaxError)
csv.field_size_limit(sys.maxsize)  # a tweet's text or media field may be megabytes


def message(path: Path, problem: str) -> str:
    """One line naming the file, because the CLI prints DataError messages as they are."""
    return " ".join(f"{path}: {problem}".split())[:500]


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a reader library's exception into a DataError that names the file."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise DataError(message(path, f"cannot read file ({type(exc).__name__}: {exc})")) from exc


def _chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, _BATCH_ROWS)):
        yield chunk


def _read_parquet(path: Path, encoding: str | None = None) -> Iterator[Batch]:
    # pre_buffer (pyarrow's default) reads ahead across row groups: 220 MB held for a 1M-row file
    with pq.ParquetFile(path, pre_buffer=False) as file:
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
            raise DataError(message(path, f"unknown encoding {encoding!r}"), hint="encoding") from None
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


READERS: dict[str, Callable[[Path, str | None], Iterator[Batch]]] = {
    ".parquet": _read_parquet,
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".xlsx": _read_xlsx,
}
