"""FAISS side of the index: choosing parameters, training, shards, filtered search, nprobe tuning.

Each shard holds a contiguous range of global ids [first_id, first_id + ntotal); inside the
shard FAISS uses positions 0..ntotal-1, so every index type (Flat, IVF, PQ, refine, HNSW)
works the same way and an id selector is a range shift away.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)

EXACT_BELOW = 50_000
"""Below this many vectors, exact search is fast enough (a few ms) and IVF does not pay."""

RECALL_TARGET = 0.95
REFINE_K_FACTOR = 8
"""A refine stage re-ranks k x 8 candidates: with k_factor 1 it only reorders a bad top-k."""
SMALL_POOL = 512
"""Vectors compared pairwise in numpy for near-copies; a larger set goes through FAISS."""
NEAR_COPY_NPROBE = 16
"""Lists probed for near-copies: a pair at cosine 0.95 almost always shares a list or a neighbour."""
NPROBE_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class Shard:
    """One FAISS index with the global id of its first vector."""

    index: faiss.Index
    first_id: int


def nlist_for(n: int) -> int:
    """About 4 x sqrt(N) lists, as a power of two, with >= 39 training points per list."""
    target = 4 * math.sqrt(n)
    nlist = 2 ** max(4, round(math.log2(target)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def candidate_factories(n: int, d: int) -> list[tuple[str, float]]:
    """Factory strings for n vectors of width d, from most to least memory, with bytes/vector.

    Measured on the 10,000 real MPNet vectors (docs/benchmarks.md): SQ8 and SQ6 reach
    10-recall@10 >= 0.95 at nprobe 16; at half a byte per dimension SQ4 stops at 0.94 and 4-bit
    RaBitQ reaches 0.952 at nprobe 32 (404 bytes for 768-d), so RaBitQ takes that rung; PQ codes
    alone stop well below (0.66-0.88), so PQ is the last resort when nothing else fits the budget.
    """
    if n < EXACT_BELOW:
        return [("Flat", 4.0 * d)]
    nlist = nlist_for(n)
    m = d // 4 if d % 4 == 0 else d
    return [
        (f"IVF{nlist},Flat", 4.0 * d),
        (f"IVF{nlist},SQ8", 1.0 * d),
        (f"IVF{nlist},SQ6", 0.75 * d),
        (f"IVF{nlist},RaBitQ4", 0.5 * d + 20),
        (f"IVF{nlist},PQ{m}x4fs", m / 2),
    ]


def choose_factory(n: int, d: int, memory_budget: float = 4 * 2**30, on_disk: bool = False) -> str:
    """The most accurate candidate whose codes for n vectors fit in memory_budget bytes. With
    `on_disk` the codes stay in the shard files and are paged in by the lists a query probes, so
    the budget bounds the disk instead, and fast-scan PQ, whose lists cannot be mapped, is left out."""
    candidates = [c for c in candidate_factories(n, d) if not (on_disk and c[0].endswith("fs"))]
    for factory, per_vector in candidates:
        if n * per_vector <= memory_budget:
            return factory
    return candidates[-1][0]


def bytes_per_vector(index: faiss.Index) -> float:
    """Bytes of codes (plus refine codes) per stored vector, read from the index itself."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return bytes_per_vector(index.index)
    if isinstance(index, faiss.IndexRefine):
        return bytes_per_vector(index.base_index) + bytes_per_vector(index.refine_index)
    if isinstance(index, faiss.IndexIVF):
        return float(index.code_size)
    if isinstance(index, faiss.IndexHNSW):
        return bytes_per_vector(index.storage) + 4.0 * index.hnsw.nb_neighbors(0)
    return float(getattr(index, "code_size", 4 * index.d))


def training_sample(vectors: np.ndarray, factory: str, seed: int = 0) -> np.ndarray:
    """The vectors `training_rows` picks, for callers that hold them all."""
    rows = training_rows(len(vectors), factory, seed)
    return vectors if rows is None else vectors[rows]


def training_rows(n: int, factory: str, seed: int = 0) -> np.ndarray | None:
    """Which of n vectors to train on, so a streamed build can embed them first: 64 points per
    IVF list, inside the 30-256 that FAISS asks for, and k-means on 2 cores stays in minutes at a
    million vectors; at least 10,000 so 8-bit PQ codebooks get the 39 x 256 points they need.
    None (all of them) when that is all or the index is not IVF."""
    nlist = _nlist_of(factory)
    limit = max(64 * nlist, 10_000) if nlist else n
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def needs_training(factory: str, d: int) -> bool:
    """Whether the factory's index learns from data (IVF, PQ, SQ do; Flat and HNSW do not), so a
    streamed build embeds a training sample first only when it is used."""
    try:
        return not faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT).is_trained
    except RuntimeError as e:
        raise RetrievalError(f"invalid FAISS factory string {factory!r}: {str(e).splitlines()[0]}") from None


def _nlist_of(factory: str) -> int:
    for part in factory.split(","):
        if part.startswith("IVF") and part[3:].split("_")[0].isdigit():
            return int(part[3:].split("_")[0])
    return 0


def train(factory: str, d: int, sample: np.ndarray) -> faiss.Index:
    """An empty, trained index that every shard is cloned from (one quantizer for all)."""
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise RetrievalError(f"invalid FAISS factory string {factory!r}: {str(e).splitlines()[0]}") from None
    if not index.is_trained:
        if len(sample) < _nlist_of(factory):
            raise RetrievalError(f"{factory!r} needs at least {_nlist_of(factory)} vectors to train, got {len(sample)}")
        _train_on_best_device(index, sample)
    refine = faiss.downcast_index(index)
    if isinstance(refine, faiss.IndexRefine) and refine.k_factor == 1:
        refine.k_factor = REFINE_K_FACTOR
    return index


def _train_on_best_device(index: faiss.Index, sample: np.ndarray) -> None:
    """Cluster on the GPU when faiss-gpu sees one; index types it lacks train on the CPU."""
    if faiss.get_num_gpus() > 0 and isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        ivf = faiss.extract_index_ivf(index)
        clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
        ivf.clustering_index = clustering_index
    index.train(sample)


def new_shard(trained: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    """A copy of the trained empty index holding these vectors at positions 0..n-1."""
    shard = faiss.clone_index(trained)
    shard.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return shard


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    if _ivf_or_none(index) is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)


def _ivf_or_none(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def nlist_of_index(index: faiss.Index) -> int:
    ivf = _ivf_or_none(index)
    return int(ivf.nlist) if ivf is not None else 0


def _search_params(index: faiss.Index, nprobe: int, sel: faiss.IDSelector | None, keep: list) -> object:
    """SearchParameters matching the index's nesting; `keep` holds references FAISS only points to."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        base = _search_params(index.base_index, nprobe, sel, keep)
        keep.append(base)
        return faiss.IndexRefineSearchParameters(k_factor=index.k_factor, base_index_params=base)
    if isinstance(index, faiss.IndexPreTransform):
        return _search_params(index.index, nprobe, sel, keep)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=min(nprobe, index.nlist), sel=sel)
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(16, 4 * nprobe), sel=sel)
    return faiss.SearchParameters(sel=sel)


def _selector(shard: Shard, allowed: np.ndarray | None, keep: list) -> faiss.IDSelector | None | bool:
    """The shard-local selector of the allowed global ids: None when all are allowed, False when
    none of this shard's are."""
    if allowed is None:
        return None
    local = allowed[(allowed >= shard.first_id) & (allowed < shard.first_id + shard.index.ntotal)]
    if len(local) == 0:
        return False
    sel = faiss.IDSelectorBatch(local - shard.first_id)
    keep.append(sel)
    return sel


def search(
    shards: list[Shard], queries: np.ndarray, k: int, *, nprobe: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, global ids) over all shards, best first; id -1 pads missing results.

    `allowed` (sorted global ids) restricts the search inside FAISS, so filters do not eat
    into k the way post-filtering would.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    all_scores, all_ids = [], []
    for shard in shards:
        keep: list = []
        sel = _selector(shard, allowed, keep)
        if sel is False:
            continue
        params = _search_params(shard.index, nprobe, sel, keep)
        scores, ids = shard.index.search(queries, k, params=params)
        all_scores.append(scores)
        all_ids.append(np.where(ids >= 0, ids + shard.first_id, -1))
    if not all_scores:
        return np.full((len(queries), k), -np.inf, "float32"), np.full((len(queries), k), -1, "int64")
    scores = np.hstack(all_scores)
    ids = np.hstack(all_ids)
    scores[ids < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def range_search(
    shards: list[Shard], query: np.ndarray, min_score: float, *, nprobe: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Every (score, global id) of one query at or above min_score in the lists probed, best
    first; None when an index type has no range search (the caller then widens a top-k)."""
    found = range_pairs(shards, query.reshape(1, -1), min_score, nprobe=nprobe, allowed=allowed)
    if found is None:
        return None
    _, ids, scores = found
    order = np.argsort(-scores, kind="stable")
    return scores[order], ids[order]


def range_pairs(
    shards: list[Shard], queries: np.ndarray, min_score: float, *, nprobe: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(query row, global id, score) of every stored vector at or above min_score of each query,
    in the lists probed; None when an index type has no range search."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows, ids, scores = [np.zeros(0, "int64")], [np.zeros(0, "int64")], [np.zeros(0, "float32")]
    for shard in shards:
        keep: list = []
        sel = _selector(shard, allowed, keep)
        if sel is False:
            continue
        try:
            lims, found_scores, found_ids = shard.index.range_search(
                queries, min_score, params=_search_params(shard.index, nprobe, sel, keep)
            )
        except RuntimeError:
            return None
        rows.append(np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64)))
        ids.append(found_ids + shard.first_id)
        scores.append(found_scores)
    return np.concatenate(rows), np.concatenate(ids), np.concatenate(scores)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A group label for each of n items from the linked pairs (a[i], b[i]): connected components."""
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def near_copy_groups(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """A group label per vector: connected components of the pairs at or above the cosine, so no
    two vectors of different groups are that close (rows of zeros, tweets without text, stay alone).

    A result page's pool (50 to a few hundred) is compared with einsum, not `@`: either takes
    microseconds, but OpenBLAS's threads keep spinning after `@` and slowed the next query's
    embedding by 15 ms (bench/bench_search.py). A larger set goes through a FAISS range search
    (over IVF lists from EXACT_BELOW vectors, so a build's million vectors stay tractable)."""
    n = len(vectors)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if n <= SMALL_POOL:
        rows, cols = np.nonzero(np.einsum("id,jd->ij", vectors, vectors) >= threshold)
    else:
        factory = candidate_factories(n, vectors.shape[1])[0][0]
        index = train(factory, vectors.shape[1], training_sample(vectors, factory))
        index.add(vectors)
        rows, cols, _ = range_pairs([Shard(index, 0)], vectors, threshold, nprobe=NEAR_COPY_NPROBE)
    keep = (rows < cols) & (np.abs(vectors).sum(1) > 0)[rows]
    return components(n, rows[keep], cols[keep])


def can_reconstruct(index: faiss.Index) -> bool:
    """Whether stored vectors can be read back by id: Flat, IVF with Flat or scalar-quantized
    codes, HNSW, and refine indexes (read from their refine codes). FAISS 1.15 crashes reading
    back IVF fast-scan codes and stalls on a memory-mapped OPQ transform, and RaBitQ's read-back
    is far off (cosine 0.67 to the vector), so those say no."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        return can_reconstruct(index.refine_index)
    rabitq = tuple(getattr(faiss, name) for name in ("IndexIVFRaBitQ", "IndexRaBitQ") if hasattr(faiss, name))
    if isinstance(index, (faiss.IndexIVFFastScan, faiss.IndexFastScan, faiss.IndexPreTransform, *rabitq)):
        return False
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVF, faiss.IndexHNSW, faiss.IndexScalarQuantizer))


_direct_map_lock = threading.Lock()


def reconstruct(shards: list[Shard], ids: np.ndarray) -> np.ndarray | None:
    """The stored (decoded) vectors of global ids, in their order; None when a shard's index
    type cannot give them back. IVF shards get their id -> list map on first use."""
    ids = np.asarray(ids, dtype=np.int64)
    d = max((s.index.d for s in shards), default=0)
    vectors = np.zeros((len(ids), d), dtype=np.float32)
    for shard in shards:
        inside = (ids >= shard.first_id) & (ids < shard.first_id + shard.index.ntotal)
        if not inside.any():
            continue
        if not can_reconstruct(shard.index):
            return None
        _ensure_direct_map(shard.index)
        vectors[inside] = shard.index.reconstruct_batch(ids[inside] - shard.first_id)
    return vectors


def _ensure_direct_map(index: faiss.Index) -> None:
    ivf = _ivf_or_none(index)
    if ivf is None or ivf.direct_map.type != faiss.DirectMap.NoMap:
        return
    with _direct_map_lock:
        if ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, first_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force (inner product), ids offset by first_id."""
    scores, ids = faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(vectors), k, faiss.METRIC_INNER_PRODUCT)
    return scores, np.where(ids >= 0, ids + first_id, -1)


def merge_results(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of two (scores, ids) result sets, for ground truth that grows shard by shard."""
    scores = np.hstack([a[0], b[0]])
    ids = np.hstack([a[1], b[1]])
    scores = np.where(ids < 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """k-recall@k: the share of the true top-k that the found top-k holds (FAISS's definition)."""
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"results for {found.shape[0]} queries, truth for {truth.shape[0]}")
    # an index of fewer than k rows has fewer true neighbours (-1 pads the rest)
    hits = [len(set(f[:k]) & set(t[:k]) - {-1}) / max(1, len(set(t[:k]) - {-1})) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def tune_nprobe(
    shards: list[Shard], queries: np.ndarray, truth: np.ndarray, target: float = RECALL_TARGET, k: int = 10
) -> tuple[int, float]:
    """The smallest nprobe on the grid whose 10-recall@10 reaches target (else the best seen)."""
    nlist = max(nlist_of_index(s.index) for s in shards)
    if nlist == 0:
        _, found = search(shards, queries, k, nprobe=1)
        return 1, recall_at_k(found, truth, k)
    best = (1, 0.0)
    for nprobe in [p for p in NPROBE_GRID if p < nlist] + [nlist]:
        _, found = search(shards, queries, k, nprobe=nprobe)
        recall = recall_at_k(found, truth, k)
        log.info("nprobe %d: 10-recall@10 %.3f", nprobe, recall)
        if recall > best[1]:
            best = (nprobe, recall)
        if recall >= target:
            return nprobe, recall
    return best
