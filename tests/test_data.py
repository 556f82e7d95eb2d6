"""Tests for retrieval.io.tweets, on the real tweet files in ../shared/data read in place.

Small messy variants (CSV, JSON Lines, xlsx, parquet) are derived into tmp_path so the
same injected bad rows can be checked in every format.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from retrieval.errors import DataError
from retrieval.io.media_values import parse_media
from retrieval.io.tweets import LoadResult, Reject, load_tweets, write_rejects
from retrieval.schema import TWEET_SCHEMA

DATA = Path(os.environ.get("SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
BEHAVIOUR = DATA / "adobe_behaviour_test_time.parquet"
CONTENT = DATA / "adobe_content_test_time.parquet"
LABELLED = DATA / "adobe_labelled.parquet"
COLUMNS = ["id", "date", "likes", "content", "username", "company", "media"]

# The rows injected into the first 50 real tweets, and what load_tweets must say about them.
EXPECTED_REJECTS = [
    Reject(3, "text", "empty text", "   "),
    Reject(5, "date", "unparseable date", "yesterday"),
    Reject(7, "likes", "negative likes", "-3"),
    Reject(9, "likes", "non-numeric likes", "many"),
    Reject(11, "id", "duplicate id 1", "1"),
]
REJECTED_ROWS = {r.row for r in EXPECTED_REJECTS}


@pytest.fixture(scope="module")
def real_rows() -> list[dict[str, Any]]:
    """The first 50 rows of the real behaviour file (likes are null there)."""
    if not BEHAVIOUR.is_file():
        pytest.fail(f"real data not found at {DATA}; set SHARED_DATA to the folder holding the parquet files")
    return pq.read_table(BEHAVIOUR, columns=COLUMNS).slice(0, 50).to_pylist()


@pytest.fixture(scope="module")
def behaviour() -> LoadResult:
    return load_tweets(BEHAVIOUR)


def messy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy the rows with bad values at rows 3, 5, 7, 9, 11 and whole-float likes ("12.0") on even rows."""
    out = [dict(row, likes=12.0 if number % 2 == 0 else None) for number, row in enumerate(rows, 1)]
    out[2]["content"] = "   "
    out[4]["date"] = "yesterday"
    out[6]["likes"] = "-3"
    out[8]["likes"] = "many"
    out[10]["id"] = out[0]["id"]
    return out


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def as_strings(rows: list[dict[str, Any]]) -> pa.Table:
    """Every column as text, the way a CSV export holds it."""
    return pa.table({name: pa.array([as_text(row[name]) for row in rows], pa.string()) for name in rows[0]})


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    pacsv.write_csv(as_strings(rows), path)
    return path


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    pq.write_table(as_strings(rows), path)
    return path


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            record = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_xlsx(rows: list[dict[str, Any]], path: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(rows[0]))
    for row in rows:
        sheet.append(list(row.values()))
    sheet.cell(row=len(rows) + 4, column=1).number_format = "0.00"  # formatted but blank rows, as Excel leaves
    book.save(path)
    return path


WRITERS = {"csv": write_csv, "parquet": write_parquet, "jsonl": write_jsonl, "xlsx": write_xlsx}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_messy_rows_are_rejected_with_row_field_and_reason(
    fmt: str, real_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = WRITERS[fmt](messy(real_rows), tmp_path / f"messy.{fmt}")
    result = load_tweets(path)
    assert result.rejects == EXPECTED_REJECTS
    assert result.read == 50
    table = result.table
    assert table.schema == TWEET_SCHEMA
    assert table.num_rows == 45
    kept = [n for n in range(1, 51) if n not in REJECTED_ROWS]
    assert table["row"].to_pylist() == kept
    assert table["likes"].to_pylist() == [12 if n % 2 == 0 else None for n in kept]
    assert table["date"].to_pylist() == [real_rows[n - 1]["date"] for n in kept]
    assert table["tweet_id"].to_pylist() == [real_rows[n - 1]["id"] for n in kept]
    assert table["username"].to_pylist() == [real_rows[n - 1]["username"] for n in kept]
    first = table["content"][0].as_py()
    assert "&amp;" in real_rows[0]["content"] and "&amp;" not in first
    assert " & " in first and first.endswith("<hyperlink>")


def test_html_entities_are_unescaped_and_placeholders_kept(behaviour: LoadResult) -> None:
    raw = pq.read_table(BEHAVIOUR, columns=["content"])["content"].to_pylist()
    assert sum("&amp;" in text for text in raw) > 100
    content = behaviour.table["content"].to_pylist()
    assert not any("&amp;" in text for text in content)
    assert sum("<hyperlink>" in text for text in content) == sum("<hyperlink>" in text for text in raw)
    assert sum("<mention>" in text for text in content) == sum("<mention>" in text for text in raw)


def test_full_behaviour_file_loads_every_row(behaviour: LoadResult) -> None:
    assert behaviour.read == 10_000 and behaviour.rejects == []
    table = behaviour.table
    assert table.num_rows == 10_000 and table.schema == TWEET_SCHEMA
    assert table["likes"].null_count == 10_000
    assert table["tweet_id"].null_count == 0 and len(set(table["tweet_id"].to_pylist())) == 10_000
    dates = table["date"].to_pylist()
    assert min(dates) >= datetime(2021, 1, 1) and max(dates) < datetime(2023, 3, 1)


@pytest.mark.parametrize("kind", ["Photo", "Video", "Gif"])
def test_media_of_real_rows_is_parsed(kind: str, behaviour: LoadResult) -> None:
    raw = pq.read_table(BEHAVIOUR, columns=["media"])["media"].to_pylist()
    index = next(i for i, value in enumerate(raw) if value.startswith(f"[{kind}("))
    (item,) = json.loads(behaviour.table["media"][index].as_py())
    assert item["kind"] == kind.lower()
    assert item["url"].startswith("https://") and item["thumbnail"].startswith("https://")
    assert item["url"] != item["thumbnail"]
    if kind == "Photo":
        assert item["url"].endswith("name=large") and item["thumbnail"].endswith("name=small")
    else:
        assert ".mp4" in item["url"]


def test_video_url_is_the_highest_bitrate_mp4() -> None:
    raw = pq.read_table(CONTENT, columns=["media"])["media"].to_pylist()
    # Row 4 lists an m3u8 playlist, then mp4s at 256000, 832000 and 2176000 bit/s.
    (item,) = parse_media(raw[3])
    assert item["kind"] == "video"
    assert "/vid/1280x720/" in item["url"] and item["url"].endswith(".mp4?tag=12")
    playlist_only = (
        "[Gif(thumbnailUrl='https://t/x.jpg', variants=[VideoVariant(contentType='application/x-mpegURL', "
        "url='https://v/x.m3u8', bitrate=None)])]"
    )
    assert parse_media(playlist_only) == [{"kind": "gif", "url": "https://v/x.m3u8", "thumbnail": "https://t/x.jpg"}]


def test_several_media_objects_in_one_value() -> None:
    raw = pq.read_table(CONTENT, columns=["media"])["media"].to_pylist()
    four = next(value for value in raw if value.count("Photo(") == 4)
    assert [item["kind"] for item in parse_media(four)] == ["photo"] * 4
    mixed = next(value for value in raw if value.startswith("[Video(") and "Photo(" in value)
    kinds = [item["kind"] for item in parse_media(mixed)]
    assert kinds[0] == "video" and "photo" in kinds
    assert all(item["url"].startswith("https://") for item in parse_media(mixed))


@pytest.mark.parametrize("value", [None, "", "[]", "garbage", "[Photo(", "[Unknown(url='https://x')]"])
def test_unparseable_media_is_empty(value: str | None) -> None:
    assert parse_media(value) == []


def test_content_file_without_text_keeps_metadata_rows() -> None:
    result = load_tweets(CONTENT, require_text=False)
    assert result.read == 10_000 and result.rejects == []
    assert result.table.num_rows == 10_000
    assert result.table["content"].null_count == 10_000
    assert result.table["likes"].null_count == 0


def test_content_file_with_required_text_rejects_every_row() -> None:
    result = load_tweets(CONTENT)
    assert result.table.num_rows == 0 and len(result.rejects) == 10_000
    assert {(r.field, r.reason) for r in result.rejects} == {("text", "empty text")}


def test_labelled_file_keeps_rows_without_id() -> None:
    result = load_tweets(LABELLED)
    assert result.rejects == [] and result.table.num_rows == 1_981
    assert result.table["tweet_id"].null_count == 1_828
    assert result.table["likes"].null_count == 0


def test_column_override_reads_a_renamed_text_column(real_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    renamed = [{("body" if k == "content" else k): v for k, v in row.items()} for row in real_rows]
    path = write_csv(renamed, tmp_path / "renamed.csv")
    with pytest.raises(DataError, match="no text column.*body"):
        load_tweets(path)
    result = load_tweets(path, {"text": "body"})
    assert result.table.num_rows == 50
    assert result.table["content"].to_pylist() == [html.unescape(row["content"]).strip() for row in real_rows]


def test_bad_overrides_are_data_errors(real_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = write_csv(real_rows, tmp_path / "plain.csv")
    with pytest.raises(DataError, match=r"plain\.csv.*'nope'.*content"):
        load_tweets(path, {"text": "nope"})
    with pytest.raises(DataError, match=r"plain\.csv.*bogus"):
        load_tweets(path, {"bogus": "content"})


def write_note(path: Path) -> Path:
    path.write_text("hello", encoding="utf-8")
    return path


def write_random_bytes(path: Path) -> Path:
    path.write_bytes(os.urandom(4096))
    return path


def write_without_text(path: Path) -> Path:
    pq.write_table(pq.read_table(BEHAVIOUR, columns=["id", "likes"]).slice(0, 5), path)
    return path


def write_multiline_header(path: Path) -> Path:
    path.write_text('"the\ntext",likes\nhello,3\n', encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("absent.parquet", None, "file not found"),
        ("notes.txt", write_note, "unsupported file type"),
        ("corrupt.parquet", write_random_bytes, "cannot read file"),
        ("corrupt.xlsx", write_random_bytes, "cannot read file"),
        ("notext.parquet", write_without_text, "no text column"),
        ("multiline.csv", write_multiline_header, "no text column"),
    ],
)
def test_unreadable_inputs_raise_one_line_data_errors(name: str, make: Any, words: str, tmp_path: Path) -> None:
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(DataError) as caught:
        load_tweets(path)
    message = str(caught.value)
    assert name in message and words in message
    assert "\n" not in message


def test_metadata_rows_need_likes_when_text_is_optional(tmp_path: Path) -> None:
    path = write_jsonl([{"id": 1, "likes": 3}, {"id": 2}, {"id": 3, "content": "hi"}], tmp_path / "meta.jsonl")
    result = load_tweets(path, require_text=False)
    assert result.rejects == [Reject(2, "likes", "no text and no likes", "")]
    assert result.table["content"].to_pylist() == [None, "hi"]
    with pytest.raises(DataError, match="no likes column"):
        load_tweets(write_jsonl([{"content": "hi"}], tmp_path / "nolikes.jsonl"), require_text=False)


def test_value_edge_cases(tmp_path: Path) -> None:
    rows = [
        {"id": 5, "content": " ", "date": "2021-01-01T10:00:00+05:30"},  # rejected: its id is not taken
        {"id": 5, "content": "a", "date": "2021-01-01T10:00:00+05:30", "likes": "7"},
        {"id": "abc", "content": "b"},
        {"id": 6, "content": "c", "likes": 12.5},
        {"id": 7, "content": "d", "likes": "x" * 500},
        {"id": 8, "content": "e", "date": "2021-01-02T03:04:05Z", "likes": None, "username": "  ", "company": " co "},
    ]
    result = load_tweets(write_jsonl(rows, tmp_path / "edge.jsonl"))
    assert result.rejects == [
        Reject(1, "text", "empty text", " "),
        Reject(3, "id", "non-integer id", "abc"),
        Reject(4, "likes", "non-integer likes", "12.5"),
        Reject(5, "likes", "non-numeric likes", "x" * 200),
    ]
    assert result.table.to_pylist() == [
        {
            "row": 2,
            "tweet_id": 5,
            "date": datetime(2021, 1, 1, 4, 30),
            "username": None,
            "company": None,
            "likes": 7,
            "content": "a",
            "media": "[]",
        },
        {
            "row": 6,
            "tweet_id": 8,
            "date": datetime(2021, 1, 2, 3, 4, 5),
            "username": None,
            "company": "co",
            "likes": None,
            "content": "e",
            "media": "[]",
        },
    ]


def test_timezone_aware_parquet_dates_become_naive_utc(tmp_path: Path) -> None:
    stamps = pa.array([datetime(2021, 1, 1, 10, 0)], pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz="+05:30"))
    path = tmp_path / "tz.parquet"
    pq.write_table(pa.table({"content": ["x"], "created_at": stamps}), path)
    assert load_tweets(path).table["date"].to_pylist() == [datetime(2021, 1, 1, 10, 0)]


def test_write_rejects_writes_json_lines(tmp_path: Path) -> None:
    rejects = [Reject(3, "text", "empty text", ""), Reject(9, "likes", "non-numeric likes", "beaucoup café")]
    target = tmp_path / "out" / "nested" / "rejects.jsonl"
    write_rejects(rejects, target)
    text = target.read_text(encoding="utf-8")
    assert "café" in text
    assert [json.loads(line) for line in text.splitlines()] == [
        {"row": 3, "field": "text", "reason": "empty text", "value": ""},
        {"row": 9, "field": "likes", "reason": "non-numeric likes", "value": "beaucoup café"},
    ]


def _csv_lines(real_rows: list[dict[str, Any]], n: int) -> list[str]:
    """n real tweets as CSV lines (quoted, line breaks inside quotes kept), header first."""
    rows = [real_rows[i % len(real_rows)] for i in range(n)]
    lines = ["id,content,likes"]
    for i, row in enumerate(rows, 1):
        text = (row["content"] or "x").replace('"', '""')
        lines.append(f'{i},"{text}",{i % 7}')
    return lines


def test_one_malformed_csv_row_costs_one_row(real_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    lines = _csv_lines(real_rows, 1000)
    lines[501] = "501,too,many,fields"  # data row 501, on a line of its own after any multi-line tweets
    path = tmp_path / "one_bad.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = load_tweets(path)
    assert result.read == 1000 and result.table.num_rows == 999
    (reject,) = result.rejects
    line = 1 + "\n".join(lines[:501]).count("\n") + 1
    assert (reject.row, reject.field, reject.value) == (501, "row", "501,too,many,fields")
    assert reject.reason == f"malformed CSV row at line {line}: 4 fields, the header has 3"
    assert 501 not in result.table["row"].to_pylist() and result.table["row"].to_pylist()[-1] == 1000


def test_a_bad_json_line_costs_one_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"content": "fine"}\n{"content": \n\n[1, 2]\n{"content": "caf\xe9"}\n{"content": "also fine"}\n')
    result = load_tweets(path)
    assert result.table["content"].to_pylist() == ["fine", "also fine"]
    assert [(r.row, r.field, r.reason) for r in result.rejects] == [
        (2, "row", "line 2 is not valid JSON (Expecting value)"),
        (3, "row", "line 4 is not a JSON object"),
        (4, "row", "line 5 is not UTF-8"),
    ]


def test_a_ten_megabyte_csv_field_loads(tmp_path: Path) -> None:
    big = "word " * 2_000_000
    path = tmp_path / "big.csv"
    path.write_text(f'id,content\n1,"{big}"\n2,small\n', encoding="utf-8")
    result = load_tweets(path)
    assert result.table["tweet_id"].to_pylist() == [1, 2] and len(result.table["content"][0].as_py()) > 9_000_000


def test_a_latin1_csv_is_detected_or_taken_with_encoding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,content\n1,caf\xe9 cr\xe8me\n2,na\xefve\n".encode("latin-1"))
    result = load_tweets(path)
    assert result.table["content"].to_pylist() == ["café crème", "naïve"]
    assert "not UTF-8; read as cp1252" in caplog.text
    assert load_tweets(path, encoding="latin-1").table["content"].to_pylist() == ["café crème", "naïve"]
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        load_tweets(path, encoding="klingon")


def test_epoch_dates_nan_likes_and_string_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    when = datetime(2021, 3, 4, 5, 6, 7)
    epoch_ms = int((when - datetime(1970, 1, 1)).total_seconds() * 1000)
    path = tmp_path / "other_tool.parquet"
    table = pa.table(
        {
            "id": ["10", "11", "12"],
            "content": ["a", "b", "c"],
            "date": pa.array([epoch_ms, epoch_ms + 1000, None], pa.int64()),
            "likes": pa.array([3.0, float("nan"), None], pa.float64()),
        }
    )
    pq.write_table(table, path)
    result = load_tweets(path)
    assert result.table["tweet_id"].to_pylist() == [10, 12]
    assert result.table["date"].to_pylist() == [when, None]
    assert result.table["likes"].to_pylist() == [3, None]
    assert result.rejects == [Reject(2, "likes", "NaN likes", "nan")]
    assert "read as Unix time in milliseconds" in caplog.text


def test_nan_likes_in_a_csv_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nan.csv"
    path.write_text("id,content,likes,date\n1,a,NaN,1614834367\n2,b,,2021-03-04\n", encoding="utf-8")
    result = load_tweets(path)
    assert result.rejects == [Reject(1, "likes", "NaN likes", "NaN")]
    assert result.table["date"].to_pylist() == [datetime(2021, 3, 4)]


def test_rows_dated_in_the_future_are_kept_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "future.csv"
    path.write_text("id,content,date\n1,posted,2021-05-01\n2,scheduled,2031-05-01\n3,also,2031-06-01 10:00:00\n")
    result = load_tweets(path)
    assert result.table.num_rows == 3
    assert "2 rows dated after now (the latest 2031-06-01 10:00:00); check the date column" in caplog.text
    caplog.clear()
    load_tweets(BEHAVIOUR)
    assert "dated after now" not in caplog.text
