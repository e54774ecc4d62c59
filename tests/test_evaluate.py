import math

import polars as pl
import pytest

from fuserank import schema
from fuserank.evaluation.scoring import (
    concat_scored,
    most_popular_rankings,
    score_lists,
    score_ranked,
    stage_one_counts,
    stage_one_rankings,
    stage_one_recall,
    summary_of,
)
from fuserank.retrieval.index import candidate_recall


def interactions(rows):
    return pl.DataFrame(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.ITEM_ID: [r[1] for r in rows],
            schema.TIMESTAMP: list(range(len(rows))),
            schema.RATING: [None] * len(rows),
        },
        schema=schema.INTERACTIONS,
    )


def candidates(rows):
    return pl.DataFrame(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.ITEM_ID: [r[1] for r in rows],
            schema.SOURCE: [r[2] for r in rows],
            schema.RETRIEVAL_SCORE: [0.5] * len(rows),
            schema.RETRIEVAL_RANK: [r[3] for r in rows],
        },
        schema=schema.CANDIDATES,
    )


def test_most_popular_skips_each_users_own_history():
    history = interactions([("u", "a"), ("v", "a"), ("w", "a"), ("v", "b"), ("w", "b"), ("w", "c")])
    ranked = most_popular_rankings(history, ["u", "w"], k=2)
    assert dict(ranked.schema) == schema.RANKED_LIST
    lists = {u: g.sort(schema.RANK)[schema.ITEM_ID].to_list() for (u,), g in ranked.group_by(schema.USER_ID)}
    # w has seen every item, so w gets no list at all
    assert lists == {"u": ["b", "c"]}


def test_stage_one_order_is_kept_across_sources():
    cands = candidates([("u", "x", "ann", 1), ("u", "y", "ann", 2), ("u", "z", "popular", 1), ("v", "q", "popular", 1)])
    ranked = stage_one_rankings(cands, k=2)
    assert ranked.filter(pl.col(schema.USER_ID) == "u")[schema.ITEM_ID].to_list() == ["x", "y"]
    assert ranked[schema.RANK].to_list() == [1, 2, 1]


def test_score_lists_by_hand():
    ranked = pl.DataFrame(
        {schema.USER_ID: ["u", "u", "v", "v"], schema.ITEM_ID: ["a", "b", "a", "c"], schema.RANK: [1, 2, 1, 2],
         schema.SCORE: [2.0, 1.0, 2.0, 1.0]},
        schema=schema.RANKED_LIST,
    )
    targets = pl.DataFrame({schema.USER_ID: ["u", "v", "w"], schema.ITEM_ID: ["b", "z", "a"]})
    per_user, summary = score_lists(ranked, targets, ks=(1, 2), n_items=10, prefix="test_")
    assert per_user.height == 3
    # u hits at rank 2, v misses, w has no list
    assert summary["test_ndcg_at_2"] == pytest.approx((1 / math.log2(3)) / 3)
    assert summary["test_recall_at_1"] == 0.0
    assert summary["test_recall_at_2"] == pytest.approx(1 / 3)
    assert summary["test_mrr_at_2"] == pytest.approx(0.5 / 3)
    # u: P@2 = 1/2, R@2 = 1, F1@2 = 2 * (1/2) / (3/2) = 2/3; v and w score 0
    assert summary["test_precision_at_1"] == summary["test_f1_at_1"] == 0.0
    assert summary["test_precision_at_2"] == pytest.approx((1 / 2) / 3)
    assert summary["test_f1_at_2"] == pytest.approx((2 / 3) / 3)
    # top-1 items of u and v are both "a"; top-2 adds b and c
    assert summary["test_coverage_at_1"] == pytest.approx(1 / 10)
    assert summary["test_coverage_at_2"] == pytest.approx(3 / 10)


def test_lists_scored_per_partition_of_the_users_give_the_same_summary():
    """Scored a partition of the users at a time (as on Dask workers) and concatenated, the
    per-user metrics, their means and the coverage equal score_lists on the whole."""
    ranked = pl.DataFrame(
        {schema.USER_ID: ["u", "u", "v", "v", "x", "x"], schema.ITEM_ID: ["a", "b", "a", "c", "d", "b"],
         schema.RANK: [1, 2, 1, 2, 1, 2], schema.SCORE: [2.0, 1.0, 2.0, 1.0, 2.0, 1.0]},
        schema=schema.RANKED_LIST,
    )
    targets = pl.DataFrame({schema.USER_ID: ["u", "v", "w", "x"], schema.ITEM_ID: ["b", "z", "a", "b"]})
    per_user, summary = score_lists(ranked, targets, ks=(1, 2), n_items=10, prefix="test_")
    halves = [score_ranked(ranked.filter(pl.col(schema.USER_ID).is_in(users)),
                           targets.filter(pl.col(schema.USER_ID).is_in(users)), (1, 2))
              for users in (["u", "v"], ["w", "x"])]
    whole = concat_scored(halves)
    assert whole.per_user.equals(per_user)
    assert summary_of(whole, 10, "test_") == summary
    assert summary["test_coverage_at_1"] == 2 / 10 and summary["test_coverage_at_2"] == 4 / 10


def test_stage_one_recall_reports_the_ceiling_and_recall_at_n():
    cands = candidates([("u", "x", "ann", 1), ("u", "y", "popular", 1), ("v", "q", "ann", 1)])
    targets = pl.DataFrame({schema.USER_ID: ["u", "v", "w"], schema.ITEM_ID: ["y", "q", "x"]})
    out = stage_one_recall(stage_one_counts(cands, targets, 1), targets, n=1, prefix="test_")
    assert out["test_stage1_recall"] == pytest.approx(2 / 3)
    assert out["test_stage1_recall_at_1"] == pytest.approx(1 / 3)
    assert out["test_stage1_candidates_per_user"] == pytest.approx(1.5)


def test_stage_one_counts_of_user_partitions_add_up_to_candidate_recall():
    """Counted per partition of the users (as Dask workers count them) and concatenated, the
    counts give candidate_recall exactly, a repeated target row counting twice."""
    cands = candidates([("u", "x", "ann", 1), ("u", "y", "popular", 1), ("u", "x", "popular", 2),
                        ("v", "q", "ann", 1), ("v", "r", "ann", 2)])
    targets = pl.DataFrame({schema.USER_ID: ["u", "u", "v", "w"], schema.ITEM_ID: ["x", "x", "r", "x"]})
    whole = stage_one_counts(cands, targets, 1)
    halves = pl.concat([stage_one_counts(cands.filter(pl.col(schema.USER_ID) == u),
                                         targets.filter(pl.col(schema.USER_ID) == u), 1) for u in ("u", "v", "w")])
    assert halves.sort(schema.USER_ID).equals(whole)
    assert whole.row(0) == ("u", 3, 2, 2) and whole.row(1) == ("v", 2, 1, 0) and whole.height == 2
    out = stage_one_recall(halves, targets, n=1, prefix="")
    assert out["stage1_recall"] == candidate_recall(cands, targets) == 3 / 4
    assert out["stage1_recall_at_1"] == 2 / 4
    assert out["stage1_candidates_per_user"] == 2.5


def test_confidence_intervals_of_a_planted_gain():
    from fuserank.evaluation.scoring import confidence_intervals

    users = [f"u{i}" for i in range(50)]
    per_user = pl.concat([
        pl.DataFrame({schema.USER_ID: users, "ndcg_at_10": [1.0] * 50, "system": ["ours"] * 50}),
        pl.DataFrame({schema.USER_ID: users[::-1], "ndcg_at_10": [0.0] * 50, "system": ["base"] * 50}),
        pl.DataFrame({schema.USER_ID: users, "ndcg_at_10": [float(i % 2) for i in range(50)], "system": ["half"] * 50}),
    ])
    out = confidence_intervals(per_user, "ours", "ndcg_at_10", "test_", seed=0)
    assert out["test_ndcg_at_10_ci_low"] == out["test_ndcg_at_10_ci_high"] == 1.0
    assert out["test_ndcg_at_10_gain_vs_base_ci_low"] == 1.0
    assert 0.3 < out["test_ndcg_at_10_gain_vs_half_ci_low"] < 0.5 < out["test_ndcg_at_10_gain_vs_half_ci_high"] < 0.7
    assert confidence_intervals(per_user, "ours", "ndcg_at_10", "test_", seed=0) == out
