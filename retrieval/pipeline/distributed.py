"""A build on a Ray cluster: a pool of actors embeds (each loading the model once), behind the
same `Embedder` interface as a local model, and Ray tasks fill the shards, behind the same
`ShardFill` interface as the local loop, so the build pipeline (cache, streamed batches, atomic
publish) runs unchanged on the driver and only the work spreads.

Ray is optional: `pip install 'ray[data]'` (setup.sh installs the pinned one). A worker that dies
is restarted by Ray and its batch or shard retried; the driver's cache keeps every batch already
returned, and the driver alone writes the index folder, so it is published once or not at all.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from retrieval.embed.text import Embedder, embedder_info
from retrieval.errors import RetrievalError
from retrieval.index import store
from retrieval.index.streams import VectorStream

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


def _fill(trained: np.ndarray, batches: list[Any]) -> np.ndarray:
    """One shard, on a worker: the trained index from its bytes, the vectors from the object store."""
    ray = _ray()
    faiss.omp_set_num_threads(1)
    shard = faiss.deserialize_index(trained)
    for ref in batches:
        shard.add(np.ascontiguousarray(ray.get(ref), dtype=np.float32))
    return faiss.serialize_index(shard)


def ray_shard_fill(address: str, *, workers: int | None = None) -> store.ShardFill:
    """A `ShardFill` of Ray tasks on the cluster at `address`, one per shard, at most `workers`
    (default: one per CPU of the cluster) at a time: the trained index's bytes go to the object
    store once, each shard's vectors batch by batch as the driver reads (and embeds) them, and
    each task sends back its shard's bytes, in order, for the driver to write. The recall
    queries' exact top-k grows on the driver as the batches pass, as in a local build: a worker's
    other thread count or CPU would round near-ties apart and pick another of two equal tweets.
    At most `workers` shards' vectors are in the object store at once (Ray spills them to disk
    past its memory). The tasks ask Ray for no CPU: the embedding actors hold the cluster's CPUs
    for the whole build, and a task that waited for one would wait for ever; each runs FAISS on
    one thread."""
    ray = _ray()
    connect(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=0, max_retries=RESTARTS)(_fill)

    def fill(
        trained: faiss.Index, vectors: VectorStream, ranges: store.Ranges, queries: np.ndarray
    ) -> Iterator[tuple[faiss.Index, store.Truth]]:
        empty = ray.put(faiss.serialize_index(trained))
        running: deque[tuple[Any, store.Truth]] = deque()

        def oldest() -> tuple[faiss.Index, store.Truth]:
            shard, truth = running.popleft()
            try:
                return faiss.deserialize_index(ray.get(shard)), truth
            except ray.exceptions.RayError as e:
                for other, _ in running:
                    ray.cancel(other)
                why = str(e).strip().splitlines()[0]
                raise RetrievalError(f"--ray: a task filling a shard failed ({why})") from None

        for a, b in ranges:
            truth, batches = None, []
            for first, batch in vectors.batches(a, b):
                truth = store.grow_truth(truth, batch, first, queries)
                batches.append(ray.put(batch))
            assert truth is not None, "a shard of no rows"
            running.append((task.remote(empty, batches), truth))
            if len(running) >= workers:
                yield oldest()
        while running:
            yield oldest()

    return fill
