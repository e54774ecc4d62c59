"""Stage-1 retrieval: FAISS search against brute force, exclusion, queries, candidate sources."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from fuserank.retrieval import index as retrieval
from fuserank.schema import CANDIDATES, INTERACTIONS, ITEM_ID, RETRIEVAL_RANK, SOURCE, USER_ID


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def ids(n: int, prefix: str = "i") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def brute_force(items: np.ndarray, queries: np.ndarray, k: int, exclude: list[np.ndarray]) -> tuple:
    scores = queries @ items.T
    for q, rows in enumerate(exclude):
        scores[q, rows] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, axis=1)


def interactions(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    users, items, times = zip(*rows, strict=True)
    return pl.DataFrame(
        {USER_ID: users, ITEM_ID: items, "timestamp": times, "rating": [None] * len(rows)}, schema=INTERACTIONS
    )


def candidates(rows: list[tuple[str, str, str, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=CANDIDATES, orient="row")


NO_EXCLUSION = np.array([], dtype=np.int64)


def test_flat_search_equals_brute_force():
    items, queries = unit_vectors(300, 16, seed=0), unit_vectors(25, 16, seed=1)
    exclude = [np.arange(q % 7) * 11 for q in range(25)]
    index = retrieval.build_index(items, ids(300), kind="flat", use_gpu="never")
    rows, scores = retrieval.search(index, queries, k=10, exclude=exclude, batch_size=4)
    want_rows, want_scores = brute_force(items, queries, 10, exclude)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert index.kind == "flat" and not index.on_gpu and index.item_ids == tuple(ids(300))


def test_hnsw_recall_against_flat():
    items, queries = unit_vectors(5000, 32, seed=2), unit_vectors(200, 32, seed=3)
    exclude = [NO_EXCLUSION] * 200
    flat_rows, _ = retrieval.search(retrieval.build_index(items, ids(5000), "flat"), queries, 10, exclude)
    hnsw = retrieval.build_index(items, ids(5000), "hnsw", hnsw_m=16, hnsw_ef_search=64)
    hnsw_rows, _ = retrieval.search(hnsw, queries, 10, exclude)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_rows, flat_rows, strict=True)])
    assert recall >= 0.95


def test_hnsw_raises_ef_search_to_k_for_the_call_only():
    items = unit_vectors(400, 8, seed=4)
    index = retrieval.build_index(items, ids(400), "hnsw", hnsw_m=8, hnsw_ef_search=16)
    rows, scores = retrieval.search(index, items[:3], k=60, exclude=[NO_EXCLUSION] * 3)
    assert (rows >= 0).all() and all(len(set(r)) == 60 for r in rows)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert index.index.hnsw.efSearch == 16


@pytest.mark.parametrize("kind", ["IVF16,Flat", "PQ4x4np"])
def test_factory_string_builds_and_returns_valid_results(kind):
    items = unit_vectors(1000, 16, seed=5)
    index = retrieval.build_index(items, ids(1000), kind=kind)
    assert index.index.is_trained and index.index.ntotal == 1000
    rows, scores = retrieval.search(index, items[:20], k=5, exclude=[NO_EXCLUSION] * 20)
    assert rows.shape == (20, 5) and ((rows >= -1) & (rows < 1000)).all()
    assert (rows[:, 0] >= 0).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    if kind == "IVF16,Flat":  # a query equal to an item probes that item's own list
        np.testing.assert_array_equal(rows[:, 0], np.arange(20))


def test_bad_factory_string_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="NotAnIndex99"):
        retrieval.build_index(unit_vectors(50, 8, seed=6), ids(50), kind="NotAnIndex99")


def test_build_index_rejects_bad_arguments():
    items = unit_vectors(10, 4, seed=7)
    with pytest.raises(ValueError, match="use_gpu"):
        retrieval.build_index(items, ids(10), use_gpu="always")
    with pytest.raises(ValueError, match="9 item ids"):
        retrieval.build_index(items, ids(9))


def test_build_index_prints_closing_line(capsys):
    retrieval.build_index(unit_vectors(12, 4, seed=8), ids(12), kind="flat")
    assert "12 items x 4-d, flat" in capsys.readouterr().err


def test_exclusion_exact_k_and_padding():
    items, queries = unit_vectors(20, 8, seed=9), unit_vectors(4, 8, seed=10)
    order, _ = brute_force(items, queries, 20, [NO_EXCLUSION] * 4)
    exclude = [order[0, :3], order[1, :17], np.arange(20), NO_EXCLUSION]
    index = retrieval.build_index(items, ids(20))
    rows, scores = retrieval.search(index, queries, k=5, exclude=exclude, batch_size=2)
    for q in range(4):
        assert not set(rows[q]) & set(exclude[q].tolist())
    np.testing.assert_array_equal(rows[0], order[0, 3:8])  # exactly k, next-best in order
    np.testing.assert_array_equal(rows[1], [*order[1, 17:20], -1, -1])  # only 3 items remain
    assert np.isneginf(scores[1, 3:]).all() and np.isfinite(scores[1, :3]).all()
    assert (rows[2] == -1).all() and np.isneginf(scores[2]).all()
    np.testing.assert_array_equal(rows[3], order[3, :5])
    same_rows, _ = retrieval.search(index, queries, k=5, exclude=exclude, batch_size=1024)
    np.testing.assert_array_equal(rows, same_rows)


def test_user_queries_weights_by_hand():
    vectors = np.eye(4, dtype=np.float32)
    history = interactions(
        [("u1", "a", 1), ("u1", "c", 3), ("u1", "b", 2), ("u1", "zz", 4),  # zz is not in the catalog
         ("u0", "d", 5), ("u0", "a", 5),  # same timestamp: row order breaks the tie, "a" is newest
         ("u2", "zz", 1)]
    )  # fmt: skip
    users, queries, histories = retrieval.user_queries(history, ["a", "b", "c", "d"], vectors, half_life=1.0)
    assert users == ["u0", "u1", "u2"]
    want_u1 = np.array([0.25, 0.5, 1.0, 0.0]) / math.sqrt(0.25**2 + 0.5**2 + 1.0)
    want_u0 = np.array([1.0, 0.0, 0.0, 0.5]) / math.sqrt(1.25)
    np.testing.assert_allclose(queries[1], want_u1, atol=1e-6)
    np.testing.assert_allclose(queries[0], want_u0, atol=1e-6)
    np.testing.assert_array_equal(queries[2], np.zeros(4))
    assert [h.tolist() for h in histories] == [[0, 3], [0, 1, 2], []]
    _, recent, _ = retrieval.user_queries(history, ["a", "b", "c", "d"], vectors, query_items=2, half_life=1.0)
    np.testing.assert_allclose(recent[1], np.array([0.0, 0.5, 1.0, 0.0]) / math.sqrt(1.25), atol=1e-6)


def test_user_query_with_short_half_life_points_at_last_item():
    vectors = unit_vectors(50, 16, seed=11)
    item_ids = ids(50)
    history = interactions([("u", item_ids[i], t) for t, i in enumerate([3, 17, 8, 42, 29])])
    _, queries, _ = retrieval.user_queries(history, item_ids, vectors, half_life=0.05)
    assert int(np.argmax(vectors @ queries[0])) == 29
    np.testing.assert_allclose(np.linalg.norm(queries[0]), 1.0, atol=1e-6)


def two_cluster_catalog() -> tuple[list[str], np.ndarray, pl.DataFrame]:
    rng = np.random.default_rng(12)
    centres = np.zeros((2, 16), dtype=np.float32)
    centres[0, 0] = centres[1, 1] = 1.0
    vectors = np.repeat(centres, 10, axis=0) + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    item_ids = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
    history = interactions(
        [("ua", "a0", 1), ("ua", "a1", 2), ("ua", "a2", 3), ("ub", "b5", 1), ("ub", "b6", 2), ("uz", "ghost", 1)]
    )
    return item_ids, vectors, history


def test_retrieve_returns_own_cluster_without_history():
    item_ids, vectors, history = two_cluster_catalog()
    index = retrieval.build_index(vectors, item_ids)
    frame = retrieval.retrieve(index, history, vectors, n=5)
    assert frame.schema == pl.Schema(CANDIDATES)
    assert frame[USER_ID].unique().sort().to_list() == ["ua", "ub"]  # uz has no known history
    for user, prefix, seen in [("ua", "a", {"a0", "a1", "a2"}), ("ub", "b", {"b5", "b6"})]:
        mine = frame.filter(pl.col(USER_ID) == user)
        assert mine[RETRIEVAL_RANK].to_list() == [1, 2, 3, 4, 5]
        assert all(item.startswith(prefix) for item in mine[ITEM_ID])
        assert not seen & set(mine[ITEM_ID])
        assert (mine[SOURCE] == "ann").all()
        assert (mine["retrieval_score"].diff().drop_nulls() <= 0).all()
    only = retrieval.retrieve(index, history, vectors, n=3, users=["ub", "nobody"])
    assert only[USER_ID].to_list() == ["ub"] * 3
    assert only.equals(frame.filter((pl.col(USER_ID) == "ub") & (pl.col(RETRIEVAL_RANK) <= 3)))


def test_popular_candidates_order_and_exclusion():
    # counts: x 3, y 2, z 2, w 1 -> ranking x, y, z (tie by item_id), w
    history = interactions(
        [("u1", "x", 1), ("u2", "x", 1), ("u3", "x", 1), ("u1", "w", 2),
         ("u2", "y", 2), ("u3", "y", 2), ("u2", "z", 3), ("u3", "z", 3)]
    )  # fmt: skip
    from fuserank.retrieval.popularity import popular_candidates

    frame = popular_candidates(history, ["u3", "u1", "new", "u2"], n=2)
    assert frame.schema == pl.Schema(CANDIDATES)
    want = candidates(
        [("new", "x", "popular", 3.0, 1), ("new", "y", "popular", 2.0, 2),
         ("u1", "y", "popular", 2.0, 1), ("u1", "z", "popular", 2.0, 2),
         ("u2", "w", "popular", 1.0, 1),
         ("u3", "w", "popular", 1.0, 1)]
    )  # fmt: skip
    assert frame.equals(want)


def test_merge_candidates_keeps_first_source_and_orders():
    ann = candidates([("u1", "a", "ann", 0.9, 1), ("u1", "b", "ann", 0.8, 2), ("u2", "c", "ann", 0.7, 1)])
    popular = candidates(
        [("u1", "b", "popular", 9.0, 1), ("u1", "d", "popular", 8.0, 2),
         ("u0", "a", "popular", 9.0, 1), ("u2", "e", "popular", 7.0, 1)]
    )  # fmt: skip
    merged = retrieval.merge_candidates([ann, popular])
    want = candidates(
        [("u0", "a", "popular", 9.0, 1),
         ("u1", "a", "ann", 0.9, 1), ("u1", "b", "ann", 0.8, 2), ("u1", "d", "popular", 8.0, 2),
         ("u2", "c", "ann", 0.7, 1), ("u2", "e", "popular", 7.0, 1)]
    )  # fmt: skip
    assert merged.equals(want)
    assert retrieval.merge_candidates([popular, ann]).filter(pl.col(ITEM_ID) == "b")[SOURCE].to_list() == ["popular"]
    assert retrieval.merge_candidates([]).schema == pl.Schema(CANDIDATES)


@pytest.mark.parametrize("seed", [0, 1])
def test_merge_candidates_equals_sorting_then_dropping_repeated_pairs(seed):
    rng = np.random.default_rng(seed)

    def random_frame(source):  # unsorted, with repeated pairs inside one frame too
        n = int(rng.integers(0, 60))
        return pl.DataFrame({USER_ID: [f"u{u}" for u in rng.integers(0, 8, n)],
                             ITEM_ID: [f"i{i}" for i in rng.integers(0, 12, n)], SOURCE: [source] * n,
                             "retrieval_score": rng.random(n).astype(np.float32),
                             RETRIEVAL_RANK: rng.integers(1, 20, n).astype(np.int32)}, schema=CANDIDATES)

    frames = [random_frame(name) for name in ("ann", "ease", "popular")]
    tagged = [f.with_columns(pl.lit(i, dtype=pl.Int32).alias("_frame")) for i, f in enumerate(frames)]
    want = (pl.concat(tagged).sort(USER_ID, "_frame", RETRIEVAL_RANK, maintain_order=True)
            .unique(subset=[USER_ID, ITEM_ID], keep="first", maintain_order=True).drop("_frame"))
    assert retrieval.merge_candidates(frames).equals(want)


def test_candidate_recall_by_hand():
    cands = candidates([("u1", "a", "ann", 1.0, 1), ("u1", "b", "ann", 0.5, 2), ("u2", "c", "popular", 3.0, 1)])
    targets = pl.DataFrame({USER_ID: ["u1", "u1", "u2", "u3", "u2"], ITEM_ID: ["a", "z", "c", "a", "a"]})
    assert retrieval.candidate_recall(cands, targets) == pytest.approx(2 / 5)
    assert math.isnan(retrieval.candidate_recall(cands, targets.head(0)))


@pytest.mark.gpu
def test_gpu_flat_matches_cpu_including_large_k():
    faiss = pytest.importorskip("faiss")
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        pytest.skip("faiss has no GPU support here")
    items, queries = unit_vectors(3000, 16, seed=13), unit_vectors(8, 16, seed=14)
    exclude = [np.arange(q * 300) for q in range(8)]  # k_batch > 2048 for the last batch
    gpu = retrieval.build_index(items, ids(3000), use_gpu="auto")
    assert gpu.on_gpu
    rows, scores = retrieval.search(gpu, queries, k=100, exclude=exclude, batch_size=4)
    want_rows, want_scores = brute_force(items, queries, 100, exclude)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)


def test_neighbourhood_popular_ranks_each_users_neighbours_by_count_then_similarity():
    from fuserank.retrieval.popularity import neighbourhood_popular

    neighbours = pl.DataFrame(
        {
            "user_id": ["u"] * 5 + ["v"] * 2,
            "item_id": ["a", "b", "c", "d", "e", "a", "c"],
            "source": ["ann"] * 7,
            "retrieval_score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.1],
            "retrieval_rank": [1, 2, 3, 4, 5, 1, 2],
        }
    )
    counts = {"c": 5, "b": 2, "d": 1, "e": 1}
    history = pl.DataFrame(
        {
            "user_id": [f"x{i}" for i in range(9)],
            "item_id": [item for item, n in counts.items() for _ in range(n)],
            "timestamp": list(range(9)),
            "rating": [None] * 9,
        },
        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64, "rating": pl.Float64},
    )
    found = neighbourhood_popular(neighbours, history, n=4, source="pop_image")
    u = found.filter(pl.col("user_id") == "u")
    assert u["item_id"].to_list() == ["c", "b", "d", "e"]  # a (never interacted) drops out; d before e by similarity
    assert u["retrieval_score"].to_list() == [5.0, 2.0, 1.0, 1.0]
    assert u["retrieval_rank"].to_list() == [1, 2, 3, 4]
    assert found.filter(pl.col("user_id") == "v")["item_id"].to_list() == ["c", "a"]
    assert set(found["source"]) == {"pop_image"}


@pytest.mark.parametrize("shards", [1, 3])
def test_ivfpq_index_finds_the_exact_neighbours_of_clustered_vectors(shards):
    from fuserank.retrieval.index import IVFPQSettings

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32)).astype(np.float32)
    vectors = centres[np.arange(2000) % 20] + 0.05 * rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{k}" for k in range(2000)]
    settings = IVFPQSettings(lists=16, pq_m=8, pq_bits=8, nprobe=4, train_sample=1000, shards=shards)
    index = retrieval.build_index(vectors, ids, kind="ivfpq", ivfpq=settings, use_gpu="never")
    exact = retrieval.build_index(vectors, ids, kind="flat", use_gpu="never")
    queries = vectors[:50]
    found, _ = retrieval.search(index, queries, 10, [np.array([], dtype=np.int64)] * 50)
    truth, _ = retrieval.search(exact, queries, 10, [np.array([], dtype=np.int64)] * 50)
    # Each query's 10 nearest lie in its own cluster of 100; IVF-PQ must stay inside it.
    assert np.all(np.asarray(found) % 20 == np.arange(50)[:, None] % 20)
    assert np.asarray(found).min() >= 0 and np.asarray(truth).min() >= 0
