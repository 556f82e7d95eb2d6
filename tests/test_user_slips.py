"""What a user's slips do: a build pointed at a folder that is not an index, a file whose ids
clash with the index's, a handle typed with its "@", a port in use, a build stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import BEHAVIOUR, CONTENT, HashEmbedder

from retrieval.apps.cli.main import cli
from retrieval.apps.cli.options import user_errors
from retrieval.errors import DataError, RetrievalError
from retrieval.index.filters import Filters
from retrieval.index.manifest import read_manifest
from retrieval.pipeline.build import add_to_index, build_index
from retrieval.query.search import Searcher
from retrieval.tasks.dedup import write_members

ROOT = Path(__file__).resolve().parents[1]


def test_a_build_never_replaces_what_is_not_an_index(tmp_path: Path, sample_parquet: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.csv").write_text("mine")
    with pytest.raises(RetrievalError, match="not an index .* not empty"):
        build_index(sample_parquet, folder, embedder=HashEmbedder(), progress=False)
    assert (folder / "notes.csv").read_text() == "mine"
    a_file = tmp_path / "tweets.csv"
    a_file.write_text("content\nhello\n")
    with pytest.raises(RetrievalError, match="is a file, not an index folder"):
        build_index(a_file, a_file, embedder=HashEmbedder(), progress=False)
    assert a_file.read_text() == "content\nhello\n"
    index = tmp_path / "index"
    build_index(sample_parquet, index, embedder=HashEmbedder(), progress=False)
    inside = index / "more.parquet"
    pq.write_table(pq.read_table(sample_parquet).slice(0, 50), inside)
    with pytest.raises(RetrievalError, match="is inside .* which the build replaces"):
        build_index(inside, index, embedder=HashEmbedder(), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_index(sample_parquet, empty, embedder=HashEmbedder(), progress=False).indexed == 600


def test_an_add_whose_every_id_clashes_adds_nothing_and_says_how_to_add_it(tmp_path: Path) -> None:
    """The challenge's splits number their tweets from 1 each: the content file's ids are the
    behaviour file's, for other tweets. Nothing is added (no new version); read without ids, all are."""
    index = tmp_path / "index"
    build_index(BEHAVIOUR, index, embedder=HashEmbedder(), factory="Flat", progress=False)
    with pytest.raises(DataError, match=r"nothing to add: all 10000 rows rejected .*duplicate id") as error:
        add_to_index(CONTENT, index, embedder=HashEmbedder(), allow_missing_text=True, progress=False)
    assert error.value.hint == "ids" and read_manifest(index).version == 1
    report = add_to_index(
        CONTENT, index, embedder=HashEmbedder(), columns={"id": ""}, allow_missing_text=True, progress=False
    )
    assert (report.rejected, report.metadata_only, report.manifest.next_id) == (0, 10_000, 20_000)
    with pytest.raises(click.ClickException, match="read it without ids; give --column id=$"), user_errors():
        add_to_index(BEHAVIOUR, index, embedder=HashEmbedder(), progress=False)


def test_a_handle_typed_with_its_at_sign_is_the_same_account(minilm_index: Path, minilm) -> None:
    searcher = Searcher.open(minilm_index, embedder=minilm)
    name = searcher.reader.rows([0])[0]["username"]
    plain = searcher.similar("we are hiring", k=5, filters=Filters(username=name))
    typed = searcher.similar("we are hiring", k=5, filters=Filters(username=f" @{name}"))
    ids = [h.tweet["vec_id"] for h in plain]
    assert ids and [h.tweet["vec_id"] for h in typed] == ids


def test_a_tiny_exact_index_records_full_recall(tmp_path: Path, sample_parquet: Path) -> None:
    five = tmp_path / "five.parquet"
    pq.write_table(pq.read_table(sample_parquet).slice(0, 5), five)
    manifest = build_index(five, tmp_path / "index", embedder=HashEmbedder(), progress=False).manifest
    assert manifest.text.recall_at_10 == 1.0


def test_serve_on_a_port_in_use_fails_at_once_in_one_line(minilm_index: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--index", str(minilm_index), "--port", str(port), "--no-llm"])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}:" in result.output and "open http" not in result.output


def test_files_written_for_sharing_follow_the_umask(tmp_path: Path, minilm_index: Path, minilm) -> None:
    from retrieval.tasks.dedup import find_duplicates

    old = os.umask(0o022)
    try:
        searcher = Searcher.open(minilm_index, embedder=minilm)
        path = write_members(find_duplicates(searcher, threshold=0.9, progress=False), tmp_path / "groups.csv")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_sigterm_during_a_build_leaves_no_temporary_folder(tmp_path: Path) -> None:
    source = tmp_path / "tweets.parquet"
    pq.write_table(pq.read_table(BEHAVIOUR).slice(0, 3000), source)
    out = tmp_path / "index"
    command = [sys.executable, "cli.py", "index", "build", str(source), "--out", str(out), "--model", "minilm"]
    command += ["--no-cache", "--chunk", "100"]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".index.scratch-*/*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the embedding
    assert proc.poll() is None, "the build ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: the index is as it was" in err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".index.") and p.name != ".index.lock")
    assert not out.exists() and left == [], json.dumps(left)


def test_a_search_that_finds_nothing_says_which_filter_left_nothing(minilm_index: Path) -> None:
    import datetime as dt

    from retrieval.index.reader import IndexReader

    with IndexReader(minilm_index) as reader:
        first, *others = reader.rows(list(range(600)))
        other = next(r for r in others if r["company"] != first["company"])
        assert reader.why_nothing(Filters()) is None
        assert reader.why_nothing(Filters(username="@nosuchuser")) == "no tweets by nosuchuser in this index"
        assert reader.why_nothing(Filters(min_likes=10)) == "no tweets with 10 likes or more (likes known for 0 tweets)"
        late, early = dt.datetime(2023, 1, 1), dt.datetime(2021, 1, 1)
        assert "since is after until" in reader.why_nothing(Filters(since=late, until=early))
        both = Filters(username=first["username"], company=other["company"])
        assert reader.why_nothing(both) == "no tweet passes all the filters together"
    result = CliRunner().invoke(cli, ["similar", "hiring", "--index", str(minilm_index), "--username", "nosuchuser"])
    assert result.exit_code == 0 and result.output.strip() == "no tweets match: no tweets by nosuchuser in this index"


def test_an_account_stored_with_its_at_sign_by_an_older_build_still_matches() -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE tweets AS SELECT * FROM (VALUES ('@Brand'), ('Brand'), ('Other')) t(username)")
    for typed in ("Brand", "@brand", " @BRAND "):
        where, params = Filters(username=typed).where()
        assert con.execute(f"SELECT count(*) FROM tweets WHERE {where}", params).fetchone()[0] == 2


def test_why_nothing_reads_braces_in_a_name_as_text(minilm_index: Path) -> None:
    from retrieval.index.reader import IndexReader

    with IndexReader(minilm_index) as reader:
        assert reader.why_nothing(Filters(company="Acme {EU}")) == "no tweets of the company Acme {EU} in this index"
        assert reader.why_nothing(Filters(username="{0}")) == "no tweets by {0} in this index"
        assert reader.why_nothing(Filters(username="x"), space="image") == "no tweets by x in this index"
