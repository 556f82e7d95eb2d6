"""The tweet row, written once: its Arrow schema (what loading a file gives) and the `tweets`
table of an index (the same fields plus where each row sits), so the two cannot drift apart."""

from __future__ import annotations

import json

import pyarrow as pa

Medium = dict[str, str | None]
"""One medium of a tweet: {"kind": "photo" | "video" | "gif", "url": ..., "thumbnail": ...}."""

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

INDEX_SCHEMA = pa.schema(
    [
        ("vec_id", pa.int64()),
        ("has_vector", pa.bool_()),
        *(f for f in TWEET_SCHEMA if f.name != "row"),
        ("source", pa.string()),
        TWEET_SCHEMA.field("row"),
    ]
)
"""Columns of the index's `tweets` table: vec_id is the FAISS id, has_vector is false for
metadata-only rows, source and row say which file and row each came from."""

_SQL_TYPES = {pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN", pa.timestamp("us"): "TIMESTAMP", pa.string(): "VARCHAR"}
_NOT_NULL = {"vec_id": " PRIMARY KEY", "has_vector": " NOT NULL"}

TWEETS_TABLE_SQL = (
    "CREATE TABLE tweets (\n"
    + ",\n".join(f'    "{f.name}" {_SQL_TYPES[f.type]}{_NOT_NULL.get(f.name, "")}' for f in INDEX_SCHEMA)
    + "\n)"
)


def account(name: str | None) -> str | None:
    """An account as the index keeps it and a query names it: without surrounding spaces or a
    leading "@" (people type handles both ways); None for a blank one."""
    name = (name or "").strip().lstrip("@").strip()
    return name or None


ACCOUNT_SQL = "lower(ltrim(username, '@'))"
"""`account` in SQL, lower-cased, over the `tweets` table: an index built before handles lost
their "@" still stores `@Brand`, so filters and account statistics compare this."""


def stored_media(value: str | None) -> list[Medium]:
    """The media of a row of an index, which keeps them as JSON text of `Medium` objects (a file's
    media in any other form are read by `retrieval.io.media_values.read_media`)."""
    return json.loads(value or "[]")
