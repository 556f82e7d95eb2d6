"""Where the project keeps what it makes, and where it runs: paths and devices, for every layer."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where assembled models and the caches (embeddings, media, labels) live; RETRIEVAL_HOME moves it."""
    home = os.environ.get("RETRIEVAL_HOME")
    return Path(home) if home else Path.home() / ".cache" / "retrieval"


def default_device() -> str:
    """cuda when torch sees a GPU. Without an NVIDIA driver, cpu without importing torch (seconds
    saved on every CLI call that only queries)."""
    if not Path("/proc/driver/nvidia/version").exists():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
