"""The root command group: logging, threads, and every command registered under it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TextIO

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
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (`timeout`, `docker stop`, a job scheduler) unwinds like Ctrl-C, so a build's
        # temporary folders are removed on the way out instead of left beside the index
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if not logging.getLogger().handlers:  # as basicConfig checks, so a second call dups no descriptor
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=log_stream())
    # faiss-cpu 1.15 is one library that picks its SIMD level at run time (get_compile_options: "DD
    # AVX2 AVX512"); its loader still tries the old per-level modules and reports each as missing
    logging.getLogger("faiss.loader").setLevel(max(level, logging.WARNING))
    if threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)


def log_stream() -> TextIO:
    """Where log lines go: a duplicate of stderr's file descriptor, so they still reach the
    terminal while llama.cpp's loader points descriptor 2 at /dev/null (`generate` loads the
    model on a thread for 0.5 s while the index and the text model load beside it: a warning of
    theirs, such as the int8 recipe being chosen for a new CPU, would be lost). Plain stderr
    where it has no descriptor (a test runner's capture)."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, errors="backslashreplace")
    except (AttributeError, OSError, ValueError):
        return sys.stderr


for command in (index, models, cache, similar, dedup, profile, recommend, audience, predict, generate, evaluate, serve):
    cli.add_command(command)
