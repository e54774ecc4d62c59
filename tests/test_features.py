import math

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import FeatureConfig
from fuserank.encoders.base import Embeddings
from fuserank.ranking.features import (
    DAY,
    UserHistory,
    build_features,
    feature_group,
    grouped_products,
    pair_cosines,
    recent_pairs,
)

S = 1 / math.sqrt(2)


@pytest.fixture()
def planted():
    items = ("a", "b", "c", "d")
    text = Embeddings(
        items,
        np.array([[1, 0], [0, 1], [S, S], [0, 0]], dtype=np.float32),
        np.array([True, True, True, False]),
    )
    history = pl.DataFrame(
        {
            schema.USER_ID: ["u", "u", "v"],
            schema.ITEM_ID: ["a", "b", "c"],
            schema.TIMESTAMP: [0, int(10 * DAY), int(5 * DAY)],
            schema.RATING: [4.0, 2.0, None],
        },
        schema=schema.INTERACTIONS,
    )
    candidates = pl.DataFrame(
        {
            schema.USER_ID: ["u", "u", "v", "v"],
            schema.ITEM_ID: ["c", "d", "a", "b"],
            schema.SOURCE: ["ann", "ann", "ann", "popular"],
            schema.RETRIEVAL_SCORE: [0.9, 0.1, 0.7, 3.0],
            schema.RETRIEVAL_RANK: [1, 2, 1, 1],
        },
        schema=schema.CANDIDATES,
    )
    frame, names = build_features(
        candidates, history, {"text": text}, text.vectors, FeatureConfig(last_items=2, window_days=(7,)),
        profile_items=2, half_life=1.0,
    )
    return frame, names


def col(frame, name):
    return frame[name].to_list()


def test_similarity_features_match_hand_values(planted):
    frame, _ = planted
    # u's profile: b (newest, weight 1) + a (weight 0.5) -> (0.5, 1) / sqrt(1.25)
    profile_c = (0.5 * S + 1.0 * S) / math.sqrt(1.25)
    assert col(frame, "cos_text_profile") == pytest.approx([profile_c, 0.0, S, S], abs=1e-6)
    assert col(frame, "cos_text_last") == pytest.approx([S, 0.0, S, S], abs=1e-6)
    # u's recent items are b and a: cos(c, b) = cos(c, a) = S
    assert col(frame, "cos_text_max_recent") == pytest.approx([S, 0.0, S, S], abs=1e-6)
    assert col(frame, "cos_text_mean_recent") == pytest.approx([S, 0.0, S, S], abs=1e-6)
    assert col(frame, "has_text") == [1.0, 0.0, 1.0, 1.0]
    assert col(frame, "fused_profile") == col(frame, "cos_text_profile")


def test_popularity_features_are_as_of_each_users_reference_time(planted):
    frame, names = planted
    # u's reference time is day 10, v's day 5. Candidates: (u, c), (u, d), (v, a), (v, b).
    # c (day 5) and a (day 0) were seen by then; d never; b only on day 10, after v's time.
    assert col(frame, "item_log_count") == pytest.approx([math.log(2), 0, math.log(2), 0])
    assert "item_log_count_before_ref" not in names  # one count, as of the reference time
    assert col(frame, "item_log_count_7d") == pytest.approx([math.log(2), 0, math.log(2), 0])
    days = col(frame, "item_days_since_last")
    assert days[0] == pytest.approx(5.0) and days[2] == pytest.approx(5.0)
    assert days[1] is None or math.isnan(days[1])
    assert days[3] is None or math.isnan(days[3])
    age = col(frame, "item_age_days")
    assert age[0] == pytest.approx(5.0) and age[2] == pytest.approx(5.0)
    assert math.isnan(age[3])  # b first appears after v's time: no age, never a negative one
    rating = col(frame, "item_mean_rating")
    assert rating[2] == pytest.approx(4.0)
    assert math.isnan(rating[3])  # b's rating (2.0) came on day 10
    assert col(frame, "item_log_rating_count") == pytest.approx([0, 0, math.log(2), 0])
    # taste = mean log popularity of the user's own items at their time: u (a, b) log 2, v (c) log 2
    assert col(frame, "user_popularity_gap") == pytest.approx([0, -math.log(2), 0, -math.log(2)])


def test_reference_times_given_explicitly_bound_every_statistic():
    items = ("a", "b", "c", "d")
    text = Embeddings(items, np.eye(4, 2, dtype=np.float32), np.ones(4, dtype=bool))
    history = pl.DataFrame(
        {schema.USER_ID: ["u", "x", "x"], schema.ITEM_ID: ["a", "b", "b"], schema.TIMESTAMP: [0, 50, 150],
         schema.RATING: [None] * 3}, schema=schema.INTERACTIONS)
    candidates = pl.DataFrame(
        {schema.USER_ID: ["u"], schema.ITEM_ID: ["b"], schema.SOURCE: ["ann"], schema.RETRIEVAL_SCORE: [1.0],
         schema.RETRIEVAL_RANK: [1]}, schema=schema.CANDIDATES)
    def count_at(time):
        ref = pl.DataFrame({schema.USER_ID: ["u"], schema.REF_TIME: [time]}, schema=schema.REF_TIMES)
        frame, _ = build_features(candidates, history, {"text": text}, text.vectors, FeatureConfig(),
                                  ref_times=ref)
        return col(frame, "item_log_count")[0]
    # b's interactions at 50 and 150: none, one, then both are known
    assert [count_at(t) for t in (49, 50, 149, 150)] == pytest.approx(
        [0, math.log(2), math.log(2), math.log(3)])


def test_user_features(planted):
    frame, _ = planted
    assert col(frame, "user_log_history") == pytest.approx([math.log(3)] * 2 + [math.log(2)] * 2)
    assert col(frame, "user_active_days") == pytest.approx([10.0, 10.0, 0.0, 0.0])
    assert col(frame, "user_mean_rating")[:2] == pytest.approx([3.0, 3.0])


def test_frame_keeps_candidate_rows_and_lists_every_feature(planted):
    frame, names = planted
    assert frame[schema.ITEM_ID].to_list() == ["c", "d", "a", "b"]
    assert set(names) <= set(frame.columns)
    assert len(names) == len(set(names))
    assert all(frame[n].dtype == pl.Float32 for n in names)
    assert col(frame, "from_popular") == [0.0, 0.0, 0.0, 1.0]
    assert not any(name.startswith("cos_fused") for name in names)


def test_feature_groups():
    assert feature_group("cos_text_last") == "text"
    assert feature_group("cos_behaviour_profile") == "behaviour"
    assert feature_group("item_log_count_7d") == "popularity"
    assert feature_group("retrieval_rank") == "retrieval"
    assert feature_group("user_log_history") == "user"


def test_coherence_and_within_user_z():
    items = ("a", "b", "c")
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    emb = Embeddings(items, vectors, np.ones(3, dtype=bool))
    history = pl.DataFrame(
        {schema.USER_ID: ["same", "same", "mixed", "mixed"], schema.ITEM_ID: ["a", "b", "a", "c"],
         schema.TIMESTAMP: [1, 2, 1, 2], schema.RATING: [None] * 4},
        schema=schema.INTERACTIONS,
    )
    candidates = pl.DataFrame(
        {schema.USER_ID: ["same", "mixed", "mixed"], schema.ITEM_ID: ["c", "b", "b"], schema.SOURCE: ["ann"] * 3,
         schema.RETRIEVAL_SCORE: [0.0] * 3, schema.RETRIEVAL_RANK: [1, 1, 2]},
        schema=schema.CANDIDATES,
    )
    frame, _ = build_features(candidates, history, {"text": emb}, vectors, FeatureConfig(last_items=2), half_life=1.0)
    # "same" saw two identical items (mean pairwise cosine 1), "mixed" two orthogonal ones (0)
    assert col(frame, "cos_text_coherence") == pytest.approx([1.0, 0.0, 0.0])
    # one candidate, or equal values, standardise to 0
    assert col(frame, "cos_text_profile_z") == pytest.approx([0.0, 0.0, 0.0])


def test_centre_spreads_a_narrow_cone_and_uses_only_the_fit_rows():
    from fuserank.encoders.base import centre

    vectors = np.array([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    vectors[:3] /= np.linalg.norm(vectors[:3], axis=1, keepdims=True)
    emb = Embeddings(("a", "b", "c", "d"), vectors, np.array([True, True, True, False]))
    out = centre(emb, np.array([True, True, False, False]))
    # the mean of a and b is (0.995, 0): a and b become opposite, c (longer than the mean along
    # x) points along x, orthogonal to both; d was never encoded and stays zero
    assert out.vectors[0] @ out.vectors[1] == pytest.approx(-1.0)
    assert out.vectors[2] @ out.vectors[0] == pytest.approx(0.0, abs=1e-6)
    assert out.mask[2] and not out.mask[3] and not out.vectors[3].any()
    assert np.allclose(np.linalg.norm(out.vectors[:2], axis=1), 1.0)


def test_within_user_z_by_hand_leaves_nan_out():
    from fuserank.ranking.features import within_user_z

    # user 0: 1 and 3 (mean 2, spread 1) and a missing value; user 1: one value
    z = within_user_z(np.array([0, 0, 0, 1]), np.array([1.0, 3.0, np.nan, 5.0]))
    assert z[:2].tolist() == [-1.0, 1.0] and math.isnan(z[2]) and z[3] == 0.0


@pytest.mark.parametrize("d", [3, 64, 448])
@pytest.mark.parametrize("run", [1, 40])
def test_grouped_products_equal_the_row_by_row_product_bit_for_bit(d, run):
    rng = np.random.default_rng(d + run)
    many = rng.standard_normal((50, d)).astype(np.float32)
    one = rng.standard_normal((30, d)).astype(np.float32)
    one_rows = np.repeat(rng.integers(0, 30, 200), run)  # runs of `run` equal rows (1: no runs to share)
    many_rows = rng.integers(0, 50, len(one_rows))
    row_by_row = np.array([np.einsum("d,d->", many[m], one[o]) for m, o in zip(many_rows, one_rows)], dtype=np.float32)
    got = grouped_products(many, many_rows, one, one_rows)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.int32), np.einsum("nd,nd->n", many[many_rows], one[one_rows]).view(np.int32))
    np.testing.assert_allclose(got, row_by_row, rtol=1e-5, atol=1e-5)
    assert grouped_products(many, many_rows[:0], one, one_rows[:0]).shape == (0,)


@pytest.mark.parametrize("n_candidates", [6, 400])  # fewer pair slots than the catalog has pairs, and more
def test_pair_cosines_are_each_candidates_products_with_its_recent_items(n_candidates):
    rng = np.random.default_rng(n_candidates)
    n_items, n_users, k, d = 9, 5, 3, 64
    vectors = rng.standard_normal((n_items, d)).astype(np.float32)
    padded = np.vstack([vectors, np.zeros((1, d), dtype=np.float32)])
    recent = rng.integers(0, n_items, (n_users, k))
    recent[0, 1:] = -1  # a user with one history item
    hist = UserHistory(tuple(f"u{u}" for u in range(n_users)), recent, np.zeros(n_users, dtype=np.int64))
    user_rows = np.sort(rng.integers(0, n_users, n_candidates))
    item_rows = rng.integers(0, n_items, n_candidates)
    pairs = recent_pairs(user_rows, item_rows, hist, n_items)
    sims = pair_cosines(padded, pairs)
    slots = np.where(recent >= 0, recent, n_items)[user_rows]
    want = np.einsum("nkd,nkd->nk", np.broadcast_to(padded[item_rows][:, None], (n_candidates, k, d)), padded[slots])
    assert np.array_equal(sims.view(np.int32), want.view(np.int32))
    assert np.array_equal(pairs.known, recent[user_rows] >= 0)
