"""EASE: weights against per-column ridge regressions, candidates and the feature."""

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.retrieval.collaborative import ease_candidates, ease_feature, fit_ease, user_matrix

ITEMS = ("a", "b", "c", "d", "e")


def _history(pairs):
    return pl.DataFrame(
        {
            schema.USER_ID: [u for u, _ in pairs],
            schema.ITEM_ID: [i for _, i in pairs],
            schema.TIMESTAMP: np.arange(len(pairs), dtype=np.int64),
            schema.RATING: np.full(len(pairs), 4.0),
        }
    )


HISTORY = _history(
    [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u2", "c"), ("u3", "b"), ("u3", "c"),
     ("u4", "a"), ("u4", "c"), ("u4", "d"), ("u5", "a"), ("u5", "b"), ("u5", "a")]
)


def test_weights_solve_each_column_as_a_ridge_regression_on_the_other_items():
    # EASE's closed form equals, column by column, ridge regression of item j on the other items.
    l2 = 0.7
    model = fit_ease(HISTORY, ITEMS, l2=l2, max_items=10)
    assert [ITEMS[c] for c in model.columns] == ["a", "b", "c", "d"]  # e has no interaction
    x = user_matrix(HISTORY, sorted(HISTORY[schema.USER_ID].unique()), ITEMS).toarray()[:, :4].astype(np.float64)
    for j in range(4):
        others = [k for k in range(4) if k != j]
        design = x[:, others]
        expected = np.linalg.solve(design.T @ design + l2 * np.eye(3), design.T @ x[:, j])
        assert model.weights[j, j] == 0.0
        np.testing.assert_allclose(model.weights[others, j], expected, rtol=1e-5, atol=1e-6)


def test_max_items_keeps_the_most_interacted_items():
    model = fit_ease(HISTORY, ITEMS, l2=1.0, max_items=2)
    # counts of distinct users: a 4, b 4, c 3, d 1; ties go to catalog order.
    assert [ITEMS[c] for c in model.columns] == ["a", "b"]


def test_candidates_skip_seen_items_rank_by_score_and_skip_users_without_history():
    model = fit_ease(HISTORY, ITEMS, l2=0.5, max_items=10)
    frame = ease_candidates(model, HISTORY, ["u1", "nobody", "u4"], n=3)
    assert frame.columns == list(schema.CANDIDATES)
    assert set(frame[schema.USER_ID]) == {"u1", "u4"}
    u1 = frame.filter(pl.col(schema.USER_ID) == "u1")
    assert not set(u1[schema.ITEM_ID]) & {"a", "b"}
    assert set(u1[schema.ITEM_ID]) <= {"c", "d"}  # e is not covered
    assert u1[schema.RETRIEVAL_RANK].to_list() == list(range(1, u1.height + 1))
    scores = u1[schema.RETRIEVAL_SCORE].to_numpy()
    assert np.all(np.diff(scores) <= 0)
    # u1 = {a, b}: scores are B[a, j] + B[b, j]
    rows = [ITEMS.index("a"), ITEMS.index("b")]
    for item, score in zip(u1[schema.ITEM_ID], scores, strict=True):
        column = list(model.columns).index(ITEMS.index(item))
        assert score == pytest.approx(model.weights[rows, column].sum(), rel=1e-5)


def test_feature_matches_candidate_scores_and_is_nan_outside_the_model():
    model = fit_ease(HISTORY, ITEMS, l2=0.5, max_items=10)
    users = ["u4", "u1"]
    candidates = ease_candidates(model, HISTORY, users, n=2)
    user_rows = np.array([users.index(u) for u in candidates[schema.USER_ID]] + [1], dtype=np.int64)
    item_rows = np.array([ITEMS.index(i) for i in candidates[schema.ITEM_ID]] + [ITEMS.index("e")], dtype=np.int64)
    feature = ease_feature(model, HISTORY, users, user_rows, item_rows, batch_size=1)
    np.testing.assert_allclose(feature[:-1], candidates[schema.RETRIEVAL_SCORE].to_numpy(), rtol=1e-6)
    assert np.isnan(feature[-1])


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="l2 > 0"):
        fit_ease(HISTORY, ITEMS, l2=0.0, max_items=5)


def test_stage_one_adds_the_ease_source_and_features_only_when_behaviour_is_on():
    from fuserank.config import BehaviourConfig, FeatureConfig, FusionConfig, RetrievalConfig
    from fuserank.pipeline import candidate_features, fit_stage_one

    retrieval = RetrievalConfig(ann_candidates=1, popular_candidates=1, ease_candidates=2)
    on = fit_stage_one(HISTORY, ITEMS, {}, BehaviourConfig(dim=2, ease_l2=0.5), FusionConfig(), retrieval, seed=1)
    frame, names = candidate_features(on, HISTORY, ["u1", "u3"], retrieval, FeatureConfig())
    assert {"from_ease", "ease_score", "ease_score_z"} <= set(names)
    from_ease = frame.filter(pl.col(schema.SOURCE) == "ease")
    assert from_ease.height > 0
    np.testing.assert_allclose(from_ease["ease_score"].to_numpy(), from_ease[schema.RETRIEVAL_SCORE].to_numpy(), rtol=1e-6)

    no_ease = fit_stage_one(HISTORY, ITEMS, {}, BehaviourConfig(dim=2, ease_l2=0.0), FusionConfig(), retrieval, seed=1)
    _, names = candidate_features(no_ease, HISTORY, ["u1", "u3"], retrieval, FeatureConfig())
    assert not {"from_ease", "ease_score"} & set(names)
