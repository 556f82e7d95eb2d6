"""Vector search paths on small random vectors: exact over a narrow filter's rows, and down to a score."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval.index import faiss_ops as fx
from retrieval.index.manifest import VectorSetInfo
from retrieval.index.vector_search import EXACT_FILTER_BELOW, VectorSet, plan_search, vector_search


def _vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ivf() -> tuple[VectorSet, np.ndarray]:
    """Two shards of an IVF index probed with nprobe 1 of 64 lists: approximate unless a path makes it exact."""
    x = _vectors(4000)
    trained = fx.train("IVF64,SQ8", x.shape[1], x)
    shards = [fx.Shard(fx.new_shard(trained, x[:2500]), 0), fx.Shard(fx.new_shard(trained, x[2500:]), 2500)]
    return VectorSet("text", VectorSetInfo({}, "IVF64,SQ8", nprobe=1), shards), x


def _exact(x: np.ndarray, allowed: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = x[allowed] @ query
    return [int(allowed[i]) for i in np.argsort(-scores)[:k]]


def test_a_narrow_filter_is_searched_exactly_over_its_rows(ivf: tuple[VectorSet, np.ndarray]) -> None:
    vset, x = ivf
    allowed = np.arange(0, 4000, 7, dtype=np.int64)
    assert len(allowed) < EXACT_FILTER_BELOW
    plan = plan_search(vset, allowed, nprobe=1)
    assert plan.path == "exact_rows" and "exact" in plan.reason and plan.admitted == len(allowed)
    queries = _vectors(20, seed=1)
    found = vector_search(vset, plan, queries, 10)
    stored = fx.reconstruct(vset.shards, np.arange(4000))
    for query, hits in zip(queries, found):
        assert [i for i, _ in hits] == _exact(stored, allowed, query, 10)


def test_unfiltered_ivf_plan_probes_the_tuned_lists(ivf: tuple[VectorSet, np.ndarray]) -> None:
    plan = plan_search(ivf[0], None, nprobe=1)
    assert plan.path == "ivf" and plan.nprobe == 1 and plan.to_json()["admitted"] == 4000


@pytest.mark.parametrize("narrow", [False, True])
def test_min_score_keeps_every_hit_at_or_above_it(ivf: tuple[VectorSet, np.ndarray], narrow: bool) -> None:
    vset, x = ivf
    allowed = np.arange(0, 4000, 3, dtype=np.int64) if narrow else None
    plan = plan_search(vset, allowed, nprobe=64)
    query = x[5] if not narrow else x[6]
    hits = vector_search(vset, plan, query[None], 1000, min_score=0.3)[0]
    scores = [s for _, s in hits]
    assert hits and min(scores) >= 0.3 and scores == sorted(scores, reverse=True)
    pool = np.arange(4000) if allowed is None else allowed
    above = {int(i) for i in pool if x[i] @ query >= 0.31}
    assert above <= {i for i, _ in hits}


def test_vectors_read_back_by_id_unless_the_type_cannot(ivf: tuple[VectorSet, np.ndarray]) -> None:
    vset, x = ivf
    ids = np.array([3, 2600, 17])
    got = fx.reconstruct(vset.shards, ids)
    assert got is not None and np.allclose((got * x[ids]).sum(1), 1.0, atol=0.02)
    fast = faiss.index_factory(32, "IVF4,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    fast.train(x)
    assert not fx.can_reconstruct(fast) and fx.can_reconstruct(vset.shards[0].index)
