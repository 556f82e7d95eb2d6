"""The command line: `tweet-retrieval --help` (or `python cli.py --help`).

Commands only parse, call the library (`retrieval`'s public functions) and render; the options
they share are in options.py, the tables in render.py, the root group in main.py.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`cli` loads on first use, so importing one command's module does not load them all."""
    if name == "cli":
        from retrieval.apps.cli.main import cli

        return cli
    raise AttributeError(f"module 'retrieval.apps.cli' has no attribute {name!r}")
