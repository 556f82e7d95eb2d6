"""Writes that cannot lose rows or hide damage: one writer at a time, every file checksummed,
every failure one line with the old index intact, no temporary folder left behind."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import BEHAVIOUR, HASH_EMBEDDER, HashEmbedder

from retrieval.apps.cli import cli
from retrieval.errors import IndexCorrupt, IndexLocked, RetrievalError
from retrieval.index import folder, store
from retrieval.index.manifest import Manifest, read_manifest
from retrieval.index.reader import IndexReader
from retrieval.index.verify import verify
from retrieval.pipeline.build import add_to_index, build_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """500 real tweets, then three files of 100 other real tweets each."""
    folder_ = tmp_path_factory.mktemp("parts")
    table = pq.read_table(BEHAVIOUR).slice(0, 800)
    files = []
    for i, (start, n) in enumerate([(0, 500), (500, 100), (600, 100), (700, 100)]):
        files.append(folder_ / f"part{i}.parquet")
        pq.write_table(table.slice(start, n), files[-1])
    return files


@pytest.fixture()
def index(tmp_path: Path, parts: list[Path]) -> Path:
    out = tmp_path / "idx"
    build_index(parts[0], out, embedder=HashEmbedder(), progress=False)
    return out


def _flip(file: Path, at: float = 0.5) -> None:
    """Flip one byte, as a bad disk or a stray write would. The kernel's file clock ticks every
    few ms, so wait one tick first: a write within the build's own tick keeps the mtime, which
    only a full check (`--check`, `verify`) would see."""
    time.sleep(0.05)
    data = bytearray(file.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    file.write_bytes(bytes(data))


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if ".building-" in p.name or ".old-" in p.name)


def test_three_concurrent_adds_keep_every_row(index: Path, parts: list[Path]) -> None:
    script = HASH_EMBEDDER + textwrap.dedent(
        """
        import sys
        from retrieval.pipeline.build import add_to_index
        report = add_to_index(sys.argv[1], sys.argv[2], embedder=HashEmbedder(), progress=False)
        print(report.summary())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(part), str(index)], env=env, stdout=subprocess.PIPE, text=True
        )
        for part in parts[1:]
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert all(out.startswith("read 100, indexed 100, rejected 0") for out in outputs), outputs
    published = sorted(re.search(r"now version (\d+), (\d+) rows", out).groups() for out in outputs)
    assert published == [("2", "600"), ("3", "700"), ("4", "800")], "each add saw the one before it"
    manifest = read_manifest(index)
    assert manifest.next_id == 800
    assert manifest.version == 4, "one version per publish"
    assert verify(index) == []
    with IndexReader(index) as reader:
        assert reader.stats()["rows"] == 800


def test_a_second_writer_waits_or_fails_fast(index: Path, parts: list[Path]) -> None:
    with folder.writer(index):
        with pytest.raises(IndexLocked, match="another `index build` or `index add` is writing"):
            add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False, wait=False)
        with pytest.raises(IndexLocked):
            build_index(parts[1], index, embedder=HashEmbedder(), progress=False, wait=False)
    assert read_manifest(index).next_id == 500, "nothing was written while the lock was held"
    add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False, wait=False)
    assert read_manifest(index).next_id == 600


def test_no_wait_is_one_line_on_the_command_line(minilm_index: Path, parts: list[Path], tmp_path: Path) -> None:
    index = tmp_path / "copy"
    shutil.copytree(minilm_index, index)
    with folder.writer(index):
        result = CliRunner().invoke(cli, ["index", "add", str(parts[1]), "--index", str(index), "--no-wait"])
    assert result.exit_code == 1
    assert "is writing this index" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def _index_files(index: Path) -> list[str]:
    """Every file that should be checksummed: all but the last write's rejects and the lock tantivy's readers take."""
    unlisted = ("rejects.jsonl", ".tantivy-meta.lock")
    return sorted(p.relative_to(index).as_posix() for p in index.rglob("*") if p.is_file() and p.name not in unlisted)


def test_every_file_is_checksummed(index: Path) -> None:
    manifest = read_manifest(index)
    assert sorted([*manifest.files, "manifest.json"]) == _index_files(index)


@pytest.mark.parametrize("name", ["meta.duckdb", "trained.faiss", "shards/0000.faiss", "eval/truth_ids.npy"])
def test_a_flipped_byte_is_caught_by_verify_and_by_the_next_command(index: Path, parts: list[Path], name: str) -> None:
    _flip(index / name)
    assert f"{name}: checksum differs from the manifest" in verify(index)
    with pytest.raises(IndexCorrupt, match=f"damaged: {name}: checksum differs from the manifest$") as info:
        IndexReader(index)
    assert (info.value.hint, info.value.value) == ("verify", str(index))
    with pytest.raises(IndexCorrupt):
        add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    runner = CliRunner()
    for args in (["similar", "hello", "--index", str(index)], ["index", "info", "--index", str(index)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert name in result.output and len(result.output.strip().splitlines()) == 1
    checked = runner.invoke(cli, ["index", "verify", "--index", str(index)])
    assert checked.exit_code == 1 and name in checked.output


def test_a_flipped_byte_in_the_manifest_is_caught(index: Path) -> None:
    manifest = index / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"next_id": 500', '"next_id": 501'))
    with pytest.raises(IndexCorrupt, match="manifest.json: damaged"):
        IndexReader(index)
    with pytest.raises(IndexCorrupt, match="manifest.json: damaged"):
        verify(index)


def test_damage_that_keeps_the_mtime_needs_a_full_check(index: Path) -> None:
    shard = index / "shards" / "0000.faiss"
    before = shard.stat()
    _flip(shard)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    IndexReader(index).close()  # the cheap check trusts an unchanged size and mtime
    with pytest.raises(IndexCorrupt, match="shards/0000.faiss: checksum differs"):
        IndexReader(index, check=True)


def test_a_copied_index_with_new_mtimes_still_opens(index: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in _index_files(index):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((index / name).read_bytes())
    (copy / "manifest.json").write_bytes((index / "manifest.json").read_bytes())
    with IndexReader(copy) as reader:  # new mtimes: hashed again, and the hashes agree
        assert reader.stats()["rows"] == 500


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "meta.duckdb.wal")


@pytest.mark.parametrize(
    "failure",
    [
        _enospc,
        lambda *a, **k: (_ for _ in ()).throw(duckdb.TransactionException("Could not write: No space left on device")),
    ],
    ids=["oserror", "duckdb"],
)
def test_a_full_disk_is_one_line_and_keeps_the_old_index(
    index: Path, parts: list[Path], monkeypatch: pytest.MonkeyPatch, failure
) -> None:
    before = (index / "manifest.json").read_text()
    monkeypatch.setattr(store, "_write_table", failure)
    with pytest.raises(RetrievalError, match=r"could not write the index \(disk full.*the old index is unchanged"):
        add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    with pytest.raises(RetrievalError, match=r"disk full.*no index was written"):
        build_index(parts[1], index.parent / "new", embedder=HashEmbedder(), progress=False)
    assert (index / "manifest.json").read_text() == before
    assert verify(index) == []
    assert _leftovers(index) == [] and not (index.parent / "new").exists()


def test_a_faiss_write_error_is_one_line(index: Path, parts: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("Error in faiss::FileIOWriter::operator() at faiss/impl/io.cpp:98: write error")

    monkeypatch.setattr(store.faiss, "write_index", broken)
    expected = r"could not write the index \(faiss could not write it: .*write error \(0001.faiss\)\); the old"
    with pytest.raises(RetrievalError, match=expected):
        add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    assert verify(index) == []


def test_kill_9_during_the_write_keeps_the_old_index_and_the_next_add_cleans_up(index: Path, parts: list[Path]) -> None:
    script = HASH_EMBEDDER + textwrap.dedent(
        """
        import sys, time
        from retrieval.index import store
        from retrieval.pipeline.build import add_to_index
        def stuck(*args, **kwargs):  # the write phase, held open until the kill
            print("writing", flush=True)
            time.sleep(600)
        store._write_manifest = stuck
        add_to_index(sys.argv[1], sys.argv[2], embedder=HashEmbedder(), progress=False)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(parts[1]), str(index)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
    proc.kill()
    proc.wait(timeout=60)
    assert len(_leftovers(index)) == 1, "the killed add left its temporary folder"
    assert read_manifest(index).next_id == 500 and verify(index) == []
    add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    assert _leftovers(index) == [] and read_manifest(index).next_id == 600


def test_killed_runs_leave_nothing_once_the_next_writer_runs(index: Path, parts: list[Path]) -> None:
    stale = index.parent / f".{index.name}.building-dead1234"
    (stale / "shards").mkdir(parents=True)
    (stale / "shards" / "0000.faiss").write_bytes(b"x" * 1000)
    add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    assert _leftovers(index) == []


def test_an_index_caught_between_its_two_renames_is_restored(index: Path, parts: list[Path]) -> None:
    old = index.parent / f".{index.name}.old-dead1234"
    old.mkdir()
    index.rename(old / index.name)
    add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    assert read_manifest(index).next_id == 600
    assert _leftovers(index) == []


def test_folders_follow_the_umask_and_versions_count_publishes(tmp_path: Path, parts: list[Path]) -> None:
    old = os.umask(0o022)
    try:
        build_index(parts[0], tmp_path / "idx", embedder=HashEmbedder(), progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "idx").stat().st_mode & 0o777 == 0o755
    modes = {f.relative_to(tmp_path).as_posix(): f.stat().st_mode & 0o777 for f in (tmp_path / "idx").rglob("*")}
    assert {name for name, mode in modes.items() if mode not in (0o644, 0o755)} == set(), "another user may read it"
    assert read_manifest(tmp_path / "idx").version == 1
    add_to_index(parts[1], tmp_path / "idx", embedder=HashEmbedder(), progress=False)
    build_index(parts[1], tmp_path / "idx", embedder=HashEmbedder(), progress=False)
    assert read_manifest(tmp_path / "idx").version == 3


def test_verify_reads_meta_duckdb_against_the_manifest(index: Path) -> None:
    manifest = read_manifest(index)
    with duckdb.connect(str(index / "meta.duckdb")) as con:
        con.execute("DELETE FROM tweets WHERE vec_id IN (3, 4)")
    problems = verify(index)
    damaged = r"meta.duckdb: (\d+ bytes, the manifest says \d+|checksum differs from the manifest)"
    assert re.fullmatch(damaged, problems[0])
    assert "meta.duckdb: 498 rows with ids 0..499, the manifest says 500 rows with ids 0..499" in problems
    assert "shards/0000.faiss: 2 FAISS ids have no row in meta.duckdb" in problems
    assert manifest.next_id == 500


def test_an_empty_folder_is_not_taken_for_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["index", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "a folder without images" in result.output and "CLIP" not in result.output


def test_nothing_to_index_writes_the_rejects_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,content,likes\n1,,3\n2,   ,4\n")
    with pytest.raises(RetrievalError, match=r"all 2 rows rejected \(row 1, text: empty text.*see .*x.rejects.jsonl"):
        build_index(path, tmp_path / "x", embedder=HashEmbedder(), progress=False)
    rejects = [json.loads(line) for line in (tmp_path / "x.rejects.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejects] == [1, 2]


def test_a_format_1_index_opens_is_verified_and_upgraded_by_add(index: Path, parts: list[Path]) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    for key in ("files", "version", "manifest_sha256"):
        del manifest[key]
    (index / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with IndexReader(index) as reader:
        assert reader.stats()["rows"] == 500
    assert verify(index) == []
    add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
    upgraded = read_manifest(index)
    assert (upgraded.version, upgraded.next_id) == (2, 600)
    assert json.loads((index / "manifest.json").read_text())["format_version"] == 2
    assert sorted([*upgraded.files, "manifest.json"]) == _index_files(index)
    _flip(index / "shards" / "0000.faiss")
    assert verify(index) == ["shards/0000.faiss: checksum differs from the manifest"]


def test_a_reader_opened_after_an_add_sees_it_while_an_older_one_is_still_open(index: Path, parts: list[Path]) -> None:
    """A server keeps an index open while `index add` publishes; reopening must give the new
    version, not the file DuckDB already has open (it hands the same database back by path)."""
    with IndexReader(index) as old:
        add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
        with IndexReader(index) as new:
            assert (old.stats()["rows"], new.stats()["rows"]) == (500, 600)
        assert verify(index) == []


def test_a_publish_during_an_open_is_not_taken_for_damage(
    index: Path, parts: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader read the manifest, then an add published, then it checked the files: they are
    the new version's. It opens the new version instead of reporting damage."""
    real_check = store.check
    calls = []

    def publish_first(path: Path, manifest: Manifest, *, full: bool = False) -> None:
        calls.append(manifest.version)
        if len(calls) == 1:
            add_to_index(parts[1], index, embedder=HashEmbedder(), progress=False)
        real_check(path, manifest, full=full)

    monkeypatch.setattr(store, "check", publish_first)
    with IndexReader(index) as reader:
        assert reader.manifest.version == 2 and reader.stats()["rows"] == 600
    assert (calls[0], calls[-1]) == (1, 2), "the open checked the stale manifest first, then the new one"
