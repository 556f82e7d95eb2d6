"""Embedding on a Ray cluster: a pool of actors, each loading the model once, behind the same
`Embedder` interface as a local model, so the build pipeline (cache, streamed shards, atomic
publish) runs unchanged on the driver and only the embedding, the hours of a big build, spreads.

Ray is optional: `pip install 'ray[data]'` (setup.sh installs the pinned one). A worker that dies
is restarted by Ray and its batch retried; the driver's cache keeps every batch already returned.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from retrieval.embed.text import Embedder, embedder_info
from retrieval.errors import RetrievalError

PIECE = 256
"""Texts per actor call: small enough that every actor of the pool gets a share of a batch."""
RESTARTS = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RetrievalError(
            "--ray needs Ray: .venv/bin/pip install 'ray[data]==2.60.0' (or run ./setup.sh)", hint="ray"
        ) from None
    return ray


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` ('auto' for the local one, started when there is none);
    workers get the caller's model folder and the offline switch."""
    ray = _ray()
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k in ("RETRIEVAL_HOME", "HF_HUB_OFFLINE", "HF_HOME")}
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "logging_level": "ERROR", "log_to_driver": False}
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **options)
            except ConnectionError:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RetrievalError(f"--ray {address}: cannot reach a Ray cluster ({str(e).splitlines()[0]})") from None


class _Worker:
    """One model per actor, loaded once; answers with plain arrays."""

    def __init__(self, make: Callable[[], Embedder]) -> None:
        self.embedder = make()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the model (`embedder_info`), and its cache key."""
        return {
            "info": embedder_info(self.embedder),
            "model_id": getattr(self.embedder, "model_id", self.embedder.name),
        }

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts)


class RayEmbedder:
    """`workers` actors (each with `cpus` cores, or a GPU when `gpus` > 0) that embed the pieces
    of every batch in parallel, results in input order."""

    def __init__(self, make: Callable[[], Embedder], workers: int, *, cpus: float = 1, gpus: float = 0) -> None:
        ray = _ray()
        from ray.util import ActorPool

        if workers < 1:
            raise RetrievalError(f"--ray-workers must be at least 1, got {workers}")
        actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=RESTARTS, max_task_retries=RESTARTS)(_Worker)
        self.actors = [actor.remote(make) for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        facts = ray.get(self.actors[0].describe.remote())
        info = dict(facts["info"])
        self.name, self.dim, self.precision = info.pop("name"), info.pop("dim"), info.pop("precision")
        self.model_id, self._record = facts["model_id"], info

    def record(self) -> dict[str, Any]:
        return self._record

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        pieces = [list(texts[i : i + PIECE]) for i in range(0, len(texts), PIECE)]
        results = self.pool.map(lambda a, piece: a.encode.remote(piece), pieces)
        return np.vstack(list(tqdm(results, total=len(pieces), desc="embedding (ray)", disable=not progress)))

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            ray.kill(a)


def ray_text_embedder(
    name: str,
    address: str,
    *,
    workers: int | None = None,
    precision: Any = None,
    batch_size: int = 64,
    cache: bool = True,
) -> Embedder:
    """`cached_text_embedder` with the model on a Ray cluster: one single-threaded actor per CPU
    (or one per GPU when the cluster has them) unless `workers` says; the cache stays with the
    driver, so a killed distributed build resumes like a local one."""
    from retrieval.embed.cache import CachedEmbedder
    from retrieval.embed.text import text_embedder

    ray = _ray()
    connect(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    workers = workers or gpus or max(1, int(resources.get("CPU", 1)))
    make = functools.partial(text_embedder, name, precision=precision, batch_size=batch_size, threads=1)
    embedder = RayEmbedder(make, workers, cpus=1, gpus=1 if gpus else 0)
    return CachedEmbedder(embedder, embedder.model_id) if cache else embedder
