"""FAISS side: parameter choice, sharded and filtered search, recall tuning (synthetic vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.index import faiss_ops as fx


def test_parameters_follow_size_and_memory() -> None:
    assert fx.choose_factory(10_000, 768) == "Flat"
    big = fx.choose_factory(1_000_000, 768)
    assert big.startswith("IVF4096,") and big.endswith(",Flat")
    assert fx.choose_factory(1_000_000, 768, memory_budget=1 * 2**30) == "IVF4096,SQ8"
    assert fx.choose_factory(1_000_000, 768, memory_budget=0.6 * 2**30) == "IVF4096,SQ6"
    assert fx.choose_factory(1_000_000, 768, memory_budget=0.1 * 2**30) == "IVF4096,PQ192x4fs"
    assert fx.nlist_for(100_000) == 1024
    assert 39 * fx.nlist_for(20_000) <= 20_000


def test_invalid_factory_is_one_line_error(clustered: np.ndarray) -> None:
    with pytest.raises(RetrievalError, match="invalid FAISS factory string 'IVF,Nope'"):
        fx.train("IVF,Nope", 64, clustered)


def _ivfpq_shards(clustered: np.ndarray, parts: int) -> list[fx.Shard]:
    trained = fx.train("IVF32,PQ32x4fs,Refine(SQ8)", 64, clustered)
    bounds = np.linspace(0, len(clustered), parts + 1).astype(int)
    return [fx.Shard(fx.new_shard(trained, clustered[a:b]), int(a)) for a, b in zip(bounds[:-1], bounds[1:])]


def test_sharded_ivfpq_reaches_recall_target(clustered: np.ndarray) -> None:
    shards = _ivfpq_shards(clustered, 4)
    queries = clustered[::30]
    _, truth = fx.exact_search(clustered, queries, 10)
    nprobe, recall = fx.tune_nprobe(shards, queries, truth)
    assert recall >= 0.95
    _, found = fx.search(shards, queries, 10, nprobe=nprobe)
    assert fx.recall_at_k(found, truth, 10) == pytest.approx(recall)
    assert nprobe < 32, "tuning should stop at the first nprobe that reaches the target"


def test_sharded_flat_equals_exact(clustered: np.ndarray) -> None:
    trained = fx.train("Flat", 64, clustered)
    shards = [
        fx.Shard(fx.new_shard(trained, clustered[:2500]), 0),
        fx.Shard(fx.new_shard(trained, clustered[2500:]), 2500),
    ]
    scores, ids = fx.search(shards, clustered[:20], 5, nprobe=1)
    exact_scores, exact_ids = fx.exact_search(clustered, clustered[:20], 5)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)


def test_filter_is_applied_inside_faiss_across_shards(clustered: np.ndarray) -> None:
    shards = _ivfpq_shards(clustered, 3)
    allowed = np.sort(np.random.default_rng(1).choice(len(clustered), 40, replace=False))
    _, ids = fx.search(shards, clustered[:5], 10, nprobe=32, allowed=allowed)
    assert set(ids.ravel()) <= set(allowed.tolist())
    assert (ids >= 0).all(), "with every list probed, 10 of the 40 allowed ids must come back"


def test_merge_results_keeps_best(clustered: np.ndarray) -> None:
    q = clustered[:3]
    a = fx.exact_search(clustered[:3000], q, 10)
    b = fx.exact_search(clustered[3000:], q, 10, first_id=3000)
    merged = fx.merge_results(a, b, 10)
    np.testing.assert_array_equal(merged[1], fx.exact_search(clustered, q, 10)[1])


def test_recall_at_k_counts_overlap() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert fx.recall_at_k(found, truth, 4) == pytest.approx((2 / 4 + 1) / 2)


def test_bytes_per_vector_counts_refine(clustered: np.ndarray) -> None:
    trained = fx.train("IVF32,PQ32x4fs,Refine(SQ8)", 64, clustered)
    assert fx.bytes_per_vector(trained) == 32 / 2 + 64
    assert fx.bytes_per_vector(fx.train("Flat", 64, clustered)) == 4 * 64
