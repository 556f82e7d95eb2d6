"""The command line as a user runs it: build, similar, info, verify, eval search, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.apps.cli import cli


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_build_then_query(runner: CliRunner, sample_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    result = runner.invoke(
        cli,
        [
            "index",
            "build",
            str(sample_parquet),
            "--out",
            str(out),
            "--model",
            "minilm",
            "--shards",
            "2",
            "--factory",
            "IVF8,Flat",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "read 600, indexed 600, rejected 0" in result.output
    found = runner.invoke(cli, ["similar", "pharmacy manager saves lives", "--index", str(out), "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and hits[0]["tweet_id"] == 1
    ev = runner.invoke(cli, ["eval", "search", "--index", str(out), "--json"])
    report = json.loads(ev.stdout)
    assert report["recall_at_10"] >= 0.95
    assert set(report) >= {"recall_at_10", "ms_per_query", "bytes_per_vector", "nprobe"}
    assert runner.invoke(cli, ["index", "verify", "--index", str(out)]).output.strip().endswith(": ok")


def test_similar_table_and_filters(runner: CliRunner, minilm_index: Path) -> None:
    result = runner.invoke(
        cli, ["similar", "formula one race", "--index", str(minilm_index), "-k", "4", "--username", "redbullracing"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["#", "score", "id", "date", "account"]
    assert all(line.split()[2].isdigit() for line in lines[1:])
    assert len(lines) == 5 and all("redbullracing" in line for line in lines[1:])
    since = runner.invoke(
        cli,
        ["similar", "sale", "--index", str(minilm_index), "--since", "2022-06-01", "--until", "2022-06-30", "--json"],
    )
    dates = [h["date"] for h in json.loads(since.stdout)]
    assert dates and all("2022-06-01" <= d <= "2022-06-30T23:59:59" for d in dates)


def test_info_reports_manifest_and_table(runner: CliRunner, minilm_index: Path) -> None:
    info = json.loads(runner.invoke(cli, ["index", "info", "--index", str(minilm_index), "--json"]).stdout)
    assert info["embedder"] == {"name": "minilm", "dim": 384, "precision": "fp32"}
    assert info["table"]["vectors"] == 600 and info["factory"] == "Flat"


@pytest.mark.parametrize(
    "args, message",
    [
        (["similar", "x", "--index", "{tmp}/missing"], "not an index"),
        (["index", "build", "{tmp}/nope.parquet", "--out", "{tmp}/o", "--model", "minilm"], "nope.parquet"),
        (["index", "build", "{tmp}/bad.parquet", "--out", "{tmp}/o", "--model", "minilm"], "bad.parquet"),
        (["index", "build", "{sample}", "--out", "{tmp}/o", "--model", "/no/such/model"], "/no/such/model"),
        (
            ["index", "build", "{sample}", "--out", "{tmp}/o", "--model", "minilm", "--factory", "IVF,Nope"],
            "invalid FAISS factory string",
        ),
    ],
)
def test_bad_input_is_one_line(
    runner: CliRunner, tmp_path: Path, sample_parquet: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    args = [a.format(tmp=tmp_path, sample=sample_parquet) for a in args]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "o").exists()


def test_log_lines_reach_stderr_while_its_descriptor_is_silenced() -> None:
    """`generate` loads llama.cpp's model on a thread with descriptor 2 on /dev/null; a warning
    logged meanwhile (the text model loading beside it) still reaches the terminal."""
    import subprocess
    import sys

    script = (
        "import logging, os, sys\n"
        "from retrieval.apps.cli.main import log_stream\n"
        "logging.basicConfig(stream=log_stream(), format='%(message)s')\n"
        "saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)\n"
        "os.dup2(devnull, 2)\n"
        "print('plain stderr while silenced', file=sys.stderr, flush=True)\n"
        "logging.warning('a warning while silenced')\n"
        "os.dup2(saved, 2)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert run.stderr.splitlines() == ["a warning while silenced"]
