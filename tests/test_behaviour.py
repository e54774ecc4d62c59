"""Behaviour embedding: planted user communities, unseen items, determinism, both SVD paths."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.encoders import behaviour
from fuserank.encoders.behaviour import BehaviourEncoder, fit_behaviour

BLOCK_A = [f"a{i}" for i in range(6)]
BLOCK_B = [f"b{i}" for i in range(6)]
CATALOG = BLOCK_A + BLOCK_B + ["never-seen"]


def interactions_frame(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            schema.USER_ID: [u for u, _ in pairs],
            schema.ITEM_ID: [i for _, i in pairs],
            schema.TIMESTAMP: list(range(len(pairs))),
            schema.RATING: [None] * len(pairs),
        },
        schema=schema.INTERACTIONS,
    )


def two_communities(seed: int = 7) -> pl.DataFrame:
    """Users 0-19 consume only block A, users 20-39 only block B, each 3-5 random items."""
    rng = np.random.default_rng(seed)
    pairs = []
    for user in range(40):
        block = BLOCK_A if user < 20 else BLOCK_B
        for item in rng.choice(block, size=rng.integers(3, 6), replace=False):
            pairs.append((f"u{user}", str(item)))
    return interactions_frame(pairs)


def mean_cosines(vectors: np.ndarray) -> tuple[float, float]:
    a, b = vectors[: len(BLOCK_A)], vectors[len(BLOCK_A) : len(BLOCK_A) + len(BLOCK_B)]
    within = [a @ a.T, b @ b.T]
    within_mean = np.mean([m[~np.eye(len(m), dtype=bool)].mean() for m in within])
    return float(within_mean), float((a @ b.T).mean())


def test_items_of_one_community_are_close_and_far_from_the_other():
    embeddings = fit_behaviour(two_communities(), CATALOG, dim=4, seed=0)
    assert embeddings.item_ids == tuple(CATALOG)
    assert embeddings.vectors.dtype == np.float32 and embeddings.vectors.shape == (len(CATALOG), 4)
    within, across = mean_cosines(embeddings.vectors)
    assert within > 0.5
    assert abs(across) < 0.05


def test_unseen_and_rare_items_get_zero_rows_and_false_mask():
    pairs = [(f"u{u}", i) for u in range(4) for i in ("x", "y")] + [("u0", "rare")]
    embeddings = fit_behaviour(interactions_frame(pairs), ["x", "rare", "unseen", "y"], dim=8, min_item_count=2)
    np.testing.assert_array_equal(embeddings.mask, [True, False, False, True])
    assert not embeddings.vectors[1:3].any()
    np.testing.assert_allclose(np.linalg.norm(embeddings.vectors[[0, 3]], axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dense_max_cells", [0, 10**9], ids=["sparse", "dense"])
def test_items_outside_the_kept_components_are_not_encoded(monkeypatch, dense_max_cells):
    monkeypatch.setattr(behaviour, "_DENSE_MAX_CELLS", dense_max_cells)
    # block A has twice the users, so the single component kept belongs to block A alone
    frame = two_communities()
    bigger_a = pl.concat([frame, frame.filter(pl.col(schema.ITEM_ID).str.starts_with("a"))
                          .with_columns((pl.col(schema.USER_ID) + "-twin").alias(schema.USER_ID))])
    embeddings = fit_behaviour(bigger_a, CATALOG, dim=1)
    np.testing.assert_array_equal(embeddings.mask, [True] * len(BLOCK_A) + [False] * (len(BLOCK_B) + 1))
    assert not embeddings.vectors[len(BLOCK_A):].any()


def test_same_seed_gives_identical_output_and_row_order_of_interactions_does_not_matter():
    frame = two_communities()
    first = fit_behaviour(frame, CATALOG, dim=3, seed=5)
    again = fit_behaviour(frame.reverse(), CATALOG, dim=3, seed=5)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    np.testing.assert_array_equal(first.mask, again.mask)


def test_dim_is_capped_by_the_number_of_users_and_items():
    pairs = [("u0", "x"), ("u0", "y"), ("u1", "y"), ("u1", "z"), ("u2", "x")]
    embeddings = fit_behaviour(interactions_frame(pairs), ["x", "y", "z"], dim=64)
    assert embeddings.vectors.shape == (3, 2)  # min(3 users, 3 items) - 1


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 users"):
        fit_behaviour(interactions_frame([("u0", "x"), ("u0", "y")]), ["x", "y"])


def test_repeats_count_once_and_foreign_items_are_ignored():
    frame = two_communities()
    noisy = pl.concat([frame, frame.head(10), interactions_frame([("u0", "not-in-catalog")])])
    np.testing.assert_array_equal(
        fit_behaviour(noisy, CATALOG, dim=4).vectors, fit_behaviour(frame, CATALOG, dim=4).vectors
    )


def test_sparse_solver_path_matches_the_dense_one(monkeypatch):
    frame = two_communities()
    dense = fit_behaviour(frame, CATALOG, dim=3, seed=1)
    monkeypatch.setattr(behaviour, "_DENSE_MAX_CELLS", 0)
    sparse = fit_behaviour(frame, CATALOG, dim=3, seed=1)
    np.testing.assert_array_equal(sparse.mask, dense.mask)
    # the SVD is unique up to sign only when singular values are distinct; compare the Gram matrix
    np.testing.assert_allclose(sparse.vectors @ sparse.vectors.T, dense.vectors @ dense.vectors.T, atol=1e-4)
    np.testing.assert_array_equal(fit_behaviour(frame, CATALOG, dim=3, seed=1).vectors, sparse.vectors)


def test_encoder_returns_rows_in_the_order_of_the_items_frame():
    encoder = BehaviourEncoder.fit(two_communities(), CATALOG, dim=4, seed=0)
    assert encoder.name == "behaviour" and encoder.dim == 4
    items = pl.DataFrame({schema.ITEM_ID: ["b2", "new", "a0"]})
    encoded = encoder.encode(items)
    fitted = encoder.embeddings
    assert encoded.item_ids == ("b2", "new", "a0")
    np.testing.assert_array_equal(encoded.mask, [True, False, True])
    np.testing.assert_array_equal(encoded.vectors[0], fitted.vectors[CATALOG.index("b2")])
    np.testing.assert_array_equal(encoded.vectors[2], fitted.vectors[CATALOG.index("a0")])
    assert not encoded.vectors[1].any()


def test_vectors_are_the_damped_svd_written_out_by_hand():
    pairs = [("u0", "x"), ("u0", "y"), ("u1", "x"), ("u1", "z"), ("u2", "x"), ("u2", "y"), ("u3", "z"), ("u3", "w")]
    embeddings = fit_behaviour(interactions_frame(pairs), ["w", "x", "y", "z"], dim=2)
    # users u0..u3 as rows, items w, x, y, z as columns
    binary = np.array([[0, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=float)
    damped = binary / np.sqrt(binary.sum(axis=0))
    _, s, vt = np.linalg.svd(damped)
    expected = vt[:2].T * np.sqrt(s[:2])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(embeddings.vectors @ embeddings.vectors.T, expected @ expected.T, atol=1e-5)


def test_items_without_behaviour_get_the_vector_their_content_predicts():
    from fuserank.encoders.base import Embeddings
    from fuserank.encoders.behaviour_mapping import predict_unseen

    # warm items a, b, c: content x-axis -> behaviour u, content y-axis -> behaviour v
    content = np.array([[1, 0], [0, 1], [1, 0], [0.9, 0.1], [0, 0]], dtype=np.float32)
    vectors = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    behaviour = Embeddings(("a", "b", "c", "new", "bare"), vectors, np.array([True, True, True, False, False]))
    mapped = predict_unseen(behaviour, content, l2=0.01)
    np.testing.assert_array_equal(mapped.vectors[:3], vectors[:3])  # encoded rows untouched
    assert mapped.mask.tolist() == [True, True, True, True, False]  # no content: no prediction
    assert np.linalg.norm(mapped.vectors[3]) == pytest.approx(1.0, abs=1e-6)
    assert mapped.vectors[3, 0] > 0.99 and mapped.vectors[3, 1] > 0  # mostly u, a little v
    assert not mapped.vectors[4].any()
    with pytest.raises(ValueError, match="l2"):
        predict_unseen(behaviour, content, l2=0)
