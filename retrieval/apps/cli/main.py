"""The root command group: logging, threads, and every command registered under it."""

from __future__ import annotations

import logging
import os
import sys

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # model-loading bars; ours stay

from retrieval.apps.cli.dedup import dedup  # noqa: E402
from retrieval.apps.cli.evaluate import evaluate  # noqa: E402
from retrieval.apps.cli.generate import generate  # noqa: E402
from retrieval.apps.cli.index import index  # noqa: E402
from retrieval.apps.cli.models import cache, models  # noqa: E402
from retrieval.apps.cli.profile import audience, profile, recommend  # noqa: E402
from retrieval.apps.cli.query import predict, similar  # noqa: E402
from retrieval.apps.cli.serve import serve  # noqa: E402


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads for FAISS, torch, ONNX Runtime and llama.cpp (default: all cores; llama.cpp: the idle ones).",
)
def cli(verbose: int, quiet: bool, threads: int | None) -> None:
    """Vector search over brand tweets: build an index, find similar tweets, predict likes, write tweets."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)


for command in (index, models, cache, similar, dedup, profile, recommend, audience, predict, generate, evaluate, serve):
    cli.add_command(command)
