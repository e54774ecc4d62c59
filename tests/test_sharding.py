"""IVF-PQ trained on a sample, sharded: same answer as one index, recall against exact search."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fuserank.retrieval.sharding import (
    build_sharded,
    merge_by_score,
    recall_at_k,
    search_sharded,
    train_ivfpq,
)


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    x = centres[rng.integers(50, size=n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(3000, 32, 0)
    queries = clustered(200, 32, 1)
    exact = np.argsort(-(queries @ x.T), axis=1)[:, :50]
    return x, queries, exact


def test_merge_by_score_takes_the_best_of_each_shard():
    a = (np.array([[0.9, 0.5, 0.1]], np.float32), np.array([[1, 2, 3]]))
    b = (np.array([[0.7, 0.6, -1.0]], np.float32), np.array([[10, 11, -1]]))
    scores, ids = merge_by_score([a, b], 4)
    assert ids.tolist() == [[1, 10, 11, 2]]
    np.testing.assert_allclose(scores, [[0.9, 0.7, 0.6, 0.5]])


def test_train_on_a_sample_uses_only_that_many_rows(data):
    x, _, _ = data
    index = train_ivfpq(x, n_lists=64, pq_m=8, pq_bits=8, train_sample=2000, seed=0)
    assert index.is_trained and index.ntotal == 0 and index.nlist == 2000 // 39 == 51
    with pytest.raises(ValueError, match="divisible"):
        train_ivfpq(x, 16, 7, 8, 0, 0)


def test_sharded_equals_one_index_and_recalls_exact_neighbours(data):
    x, queries, exact = data
    one = build_sharded(x, 1, n_lists=32, pq_m=8, nprobe=8, train_sample=3000, seed=2)
    three = build_sharded(x, 3, n_lists=32, pq_m=8, nprobe=8, train_sample=3000, seed=2)
    assert [s.ntotal for s in three.shards] == [1000, 1000, 1000]
    s1, i1 = search_sharded(one, queries, 50)
    s3, i3 = search_sharded(three, queries, 50)
    # Same codebooks in every shard: the merged answer is the unsharded one (scores equal).
    np.testing.assert_allclose(s3, s1, rtol=1e-5)
    assert recall_at_k(i3, exact) == pytest.approx(recall_at_k(i1, exact), abs=0.01)
    assert recall_at_k(i3, exact) > 0.5  # PQ8 on clustered 32-d data; random ids would give ~0.008
    restored = pickle.loads(pickle.dumps(three))
    np.testing.assert_array_equal(search_sharded(restored, queries, 50)[1], i3)


def test_shards_searched_on_dask_workers_give_the_same_answer(data):
    pytest.importorskip("distributed")
    from fuserank.config import DaskConfig
    from fuserank.jobs.distributed import dask_client
    from fuserank.retrieval.sharding import scatter_shards, search_sharded_dask

    x, queries, _ = data
    index = build_sharded(x, 2, n_lists=32, pq_m=8, nprobe=8, train_sample=3000, seed=2)
    local_scores, local_ids = search_sharded(index, queries, 20)
    with dask_client(DaskConfig(enabled=True, n_workers=2)) as client:
        futures = scatter_shards(client, index)
        scores, ids = search_sharded_dask(client, index, queries, 20, futures)
    np.testing.assert_allclose(scores, local_scores, rtol=1e-5)
    assert (ids == local_ids).mean() > 0.99  # only exact score ties may swap
