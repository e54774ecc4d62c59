"""Per-query metrics against numbers worked out by hand, and their per-user evaluation."""

from __future__ import annotations

from math import log2

import numpy as np
import polars as pl
import pytest

from fuserank.evaluation.metrics import (
    METRICS,
    bootstrap_ci,
    catalog_coverage,
    evaluate_rankings,
    f1_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_ci,
    precision_at_k,
    recall_at_k,
    summarise,
)
from fuserank.schema import ITEM_ID, RANK, USER_ID

RANKED = ["a", "b", "c", "d", "e"]


# ---- ndcg ------------------------------------------------------------------------------------


def test_ndcg_no_relevant_items_is_zero() -> None:
    assert ndcg_at_k(RANKED, set(), 5) == 0.0


def test_ndcg_one_relevant() -> None:
    assert ndcg_at_k(RANKED, {"a"}, 5) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, {"b"}, 5) == pytest.approx(1 / log2(3))
    assert ndcg_at_k(RANKED, {"d"}, 5) == pytest.approx(1 / log2(5))
    assert ndcg_at_k(RANKED, {"z"}, 5) == 0.0


def test_ndcg_two_relevant() -> None:
    # Hits at ranks 2 and 4; the ideal puts them at ranks 1 and 2.
    assert ndcg_at_k(RANKED, {"b", "d"}, 5) == pytest.approx((1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3)))
    # One of the two relevant items is not in the list at all.
    assert ndcg_at_k(RANKED, {"a", "z"}, 5) == pytest.approx(1 / (1 + 1 / log2(3)))


def test_ndcg_items_beyond_k_do_not_count() -> None:
    assert ndcg_at_k(RANKED, {"d"}, 3) == 0.0
    # "b" counts, "e" (rank 5) is cut; IDCG uses min(|relevant|, k) = 2 positions.
    assert ndcg_at_k(RANKED, {"b", "e"}, 3) == pytest.approx((1 / log2(3)) / (1 + 1 / log2(3)))
    # More relevant items than k: IDCG over k positions only, so a perfect top k scores 1.
    assert ndcg_at_k(RANKED, {"a", "b", "c", "d"}, 2) == pytest.approx(1.0)


def test_ndcg_k_larger_than_list() -> None:
    assert ndcg_at_k(["a", "b"], {"b"}, 10) == pytest.approx(1 / log2(3))
    # Two relevant, one found: IDCG still over 2 positions.
    assert ndcg_at_k(["a", "b"], {"b", "q"}, 10) == pytest.approx((1 / log2(3)) / (1 + 1 / log2(3)))
    assert ndcg_at_k([], {"a"}, 10) == 0.0


# ---- recall ----------------------------------------------------------------------------------


def test_recall() -> None:
    assert recall_at_k(RANKED, set(), 5) == 0.0
    assert recall_at_k(RANKED, {"c"}, 5) == 1.0
    assert recall_at_k(RANKED, {"c"}, 2) == 0.0
    assert recall_at_k(RANKED, {"b", "d"}, 3) == pytest.approx(1 / 2)
    assert recall_at_k(RANKED, {"b", "d", "z"}, 5) == pytest.approx(2 / 3)
    assert recall_at_k(["a"], {"a", "b"}, 10) == pytest.approx(1 / 2)


# ---- mrr -------------------------------------------------------------------------------------


def test_mrr() -> None:
    assert mrr_at_k(RANKED, set(), 5) == 0.0
    assert mrr_at_k(RANKED, {"a"}, 5) == 1.0
    assert mrr_at_k(RANKED, {"c"}, 5) == pytest.approx(1 / 3)
    assert mrr_at_k(RANKED, {"d", "b"}, 5) == pytest.approx(1 / 2)  # first hit counts
    assert mrr_at_k(RANKED, {"d"}, 3) == 0.0
    assert mrr_at_k(["x", "y"], {"y"}, 10) == pytest.approx(1 / 2)


# ---- map -------------------------------------------------------------------------------------


def test_map() -> None:
    assert map_at_k(RANKED, set(), 5) == 0.0
    assert map_at_k(RANKED, {"c"}, 5) == pytest.approx(1 / 3)
    # Hits at 2 and 4: precision 1/2 and 2/4, over 2 relevant.
    assert map_at_k(RANKED, {"b", "d"}, 5) == pytest.approx((1 / 2 + 2 / 4) / 2)
    # Only the hit at rank 2 lies within k=3; divided by min(2, 3) = 2.
    assert map_at_k(RANKED, {"b", "d"}, 3) == pytest.approx((1 / 2) / 2)
    # Three relevant, k=2, both top slots relevant: divided by min(3, 2) = 2.
    assert map_at_k(RANKED, {"a", "b", "c"}, 2) == pytest.approx((1 / 1 + 2 / 2) / 2)
    # A relevant item missing from the list still counts in the denominator.
    assert map_at_k(["a", "b"], {"a", "z"}, 10) == pytest.approx((1 / 1) / 2)


# ---- precision and f1 ------------------------------------------------------------------------


def test_precision_and_f1_two_targets() -> None:
    ranked, relevant = ["a", "b", "c", "d"], {"a", "c"}
    # K=2: top 2 = [a, b], 1 hit -> P = 1/2, R = 1/2, F1 = 2 * 1/4 / 1 = 1/2.
    assert precision_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)
    assert f1_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)
    # K=4: 2 hits -> P = 2/4, R = 2/2 = 1, F1 = 2 * (1/2 * 1) / (1/2 + 1) = 1 / (3/2) = 2/3.
    assert precision_at_k(ranked, relevant, 4) == pytest.approx(2 / 4)
    assert f1_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    # K=1: [a] is a hit -> P = 1/1, R = 1/2, F1 = 2 * (1/2) / (3/2) = 2/3.
    assert precision_at_k(ranked, relevant, 1) == 1.0
    assert f1_at_k(ranked, relevant, 1) == pytest.approx(2 / 3)


def test_precision_and_f1_one_target() -> None:
    # {c} at rank 3 of 5, K=5: P = 1/5, R = 1, F1 = 2 * (1/5) / (6/5) = 1/3.
    assert precision_at_k(RANKED, {"c"}, 5) == pytest.approx(1 / 5)
    assert f1_at_k(RANKED, {"c"}, 5) == pytest.approx(1 / 3)
    # K=3: P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 1/2.
    assert precision_at_k(RANKED, {"c"}, 3) == pytest.approx(1 / 3)
    assert f1_at_k(RANKED, {"c"}, 3) == pytest.approx(1 / 2)
    # K=1 with the target first: P = R = F1 = 1.
    assert precision_at_k(RANKED, {"a"}, 1) == 1.0
    assert f1_at_k(RANKED, {"a"}, 1) == 1.0


def test_precision_and_f1_without_a_hit_are_zero() -> None:
    assert precision_at_k(RANKED, {"z"}, 5) == 0.0
    assert f1_at_k(RANKED, {"z"}, 5) == 0.0  # P + R = 0: defined as 0, no division
    assert precision_at_k(RANKED, {"c"}, 2) == 0.0  # the target lies beyond K
    assert f1_at_k(RANKED, {"c"}, 2) == 0.0
    assert precision_at_k(RANKED, set(), 5) == 0.0
    assert f1_at_k(RANKED, set(), 5) == 0.0
    assert precision_at_k([], {"a"}, 5) == 0.0
    assert f1_at_k([], {"a"}, 5) == 0.0


def test_precision_divides_by_k_so_a_short_list_is_penalised() -> None:
    # One item, a hit, K=10: P = 1/10 (not 1/1), R = 1, F1 = 2 * (1/10) / (11/10) = 2/11.
    assert precision_at_k(["a"], {"a"}, 10) == pytest.approx(1 / 10)
    assert f1_at_k(["a"], {"a"}, 10) == pytest.approx(2 / 11)
    # More targets than K, top 2 both relevant: P = 2/2 = 1, R = 2/3, F1 = (4/3) / (5/3) = 4/5.
    assert precision_at_k(RANKED, {"a", "b", "c"}, 2) == 1.0
    assert f1_at_k(RANKED, {"a", "b", "c"}, 2) == pytest.approx(4 / 5)


def test_metrics_registry_is_the_per_query_functions() -> None:
    assert METRICS == {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k, "map": map_at_k,
                       "precision": precision_at_k, "f1": f1_at_k}


# ---- coverage --------------------------------------------------------------------------------


def test_catalog_coverage() -> None:
    lists = [["a", "b", "c"], ["b", "d", "e"], []]
    assert catalog_coverage(lists, n_items=10, k=2) == pytest.approx(3 / 10)  # a, b, d
    assert catalog_coverage(lists, n_items=10, k=3) == pytest.approx(5 / 10)
    assert catalog_coverage(lists, n_items=5, k=50) == pytest.approx(1.0)
    assert catalog_coverage([], n_items=5, k=3) == 0.0
    with pytest.raises(ValueError):
        catalog_coverage(lists, n_items=0, k=3)


# ---- evaluate_rankings -----------------------------------------------------------------------


def _ranked_frame(lists: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, item, r) for u, items in lists.items() for r, item in enumerate(items, start=1)]
    users, items, ranks = zip(*rows, strict=True)
    frame = pl.DataFrame({USER_ID: users, ITEM_ID: items, RANK: pl.Series(ranks, dtype=pl.Int32)})
    return frame.sample(fraction=1.0, shuffle=True, seed=3)  # row order must not matter


LISTS = {
    "u1": ["a", "b", "c", "d"],
    "u2": ["c", "a", "e"],
    "u3": ["b", "d", "a", "e", "c"],
    "u9": ["a"],  # no targets: ignored
}
TARGETS = pl.DataFrame(
    {USER_ID: ["u1", "u2", "u2", "u3", "u4"], ITEM_ID: ["b", "e", "a", "z", "a"]}
)  # u4 has no list


def test_evaluate_rankings_matches_hand_values_and_per_query_functions() -> None:
    per_user = evaluate_rankings(_ranked_frame(LISTS), TARGETS, ks=[1, 3])

    assert per_user[USER_ID].to_list() == ["u1", "u2", "u3", "u4"]
    metric_columns = [f"{m}_at_{k}" for m in ("ndcg", "recall", "mrr", "map", "precision", "f1")
                      for k in (1, 3)]
    assert per_user.columns == [USER_ID, *metric_columns]
    assert not any("@" in c for c in per_user.columns)
    rows = {r[USER_ID]: r for r in per_user.iter_rows(named=True)}

    # u1: "b" at rank 2.
    assert rows["u1"]["ndcg_at_1"] == 0.0
    assert rows["u1"]["ndcg_at_3"] == pytest.approx(1 / log2(3))
    assert rows["u1"]["recall_at_3"] == 1.0
    assert rows["u1"]["mrr_at_3"] == pytest.approx(1 / 2)
    assert rows["u1"]["map_at_3"] == pytest.approx(1 / 2)
    assert rows["u1"]["precision_at_1"] == rows["u1"]["f1_at_1"] == 0.0
    assert rows["u1"]["precision_at_3"] == pytest.approx(1 / 3)  # 1 hit in 3 slots
    assert rows["u1"]["f1_at_3"] == pytest.approx(1 / 2)  # P = 1/3, R = 1: 2 * (1/3) / (4/3)
    # u2: relevant {"e", "a"} at ranks 3 and 2.
    assert rows["u2"]["ndcg_at_3"] == pytest.approx((1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3)))
    assert rows["u2"]["recall_at_1"] == 0.0
    assert rows["u2"]["recall_at_3"] == 1.0
    assert rows["u2"]["mrr_at_3"] == pytest.approx(1 / 2)
    assert rows["u2"]["map_at_3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert rows["u2"]["precision_at_3"] == pytest.approx(2 / 3)  # 2 hits in 3 slots
    assert rows["u2"]["f1_at_3"] == pytest.approx(4 / 5)  # P = 2/3, R = 1: 2 * (2/3) / (5/3)
    # u3: the target is not in its list; u4 has no list at all.
    for user in ("u3", "u4"):
        assert all(rows[user][c] == 0.0 for c in per_user.columns if c != USER_ID)

    for user, relevant in (("u1", {"b"}), ("u2", {"e", "a"}), ("u3", {"z"})):
        for name, fn in METRICS.items():
            for k in (1, 3):
                assert rows[user][f"{name}_at_{k}"] == pytest.approx(fn(LISTS[user], relevant, k))


def test_evaluate_rankings_rejects_duplicates_and_bad_ks() -> None:
    ranked = _ranked_frame({"u1": ["a", "a"]})
    with pytest.raises(ValueError, match="more than once"):
        evaluate_rankings(ranked, TARGETS, ks=[5])
    with pytest.raises(ValueError):
        evaluate_rankings(_ranked_frame(LISTS), TARGETS, ks=[0])


def test_summarise_means_with_prefix() -> None:
    per_user = evaluate_rankings(_ranked_frame(LISTS), TARGETS, ks=[3])
    summary = summarise(per_user, prefix="test_")
    assert set(summary) == {f"test_{m}_at_3" for m in METRICS}
    assert summary["test_recall_at_3"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert summary["test_mrr_at_3"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 0) / 4)
    assert summary["test_precision_at_3"] == pytest.approx((1 / 3 + 2 / 3 + 0 + 0) / 4)
    assert summary["test_f1_at_3"] == pytest.approx((1 / 2 + 4 / 5 + 0 + 0) / 4)


# ---- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_is_deterministic_and_narrows() -> None:
    rng = np.random.default_rng(7)
    values = rng.random(200)
    low, high = bootstrap_ci(values, n_boot=500, seed=1)
    assert low < values.mean() < high
    assert bootstrap_ci(values, n_boot=500, seed=1) == (low, high)
    assert bootstrap_ci(values, n_boot=500, seed=2) != (low, high)

    many = rng.random(5000)
    low_many, high_many = bootstrap_ci(many, n_boot=500, seed=1)
    # The width shrinks like 1/sqrt(n): about sqrt(5000/200) = 5 times narrower.
    assert (high_many - low_many) < (high - low) / 3


def test_bootstrap_ci_of_a_constant_is_a_point() -> None:
    assert bootstrap_ci(np.full(10, 0.25), n_boot=50) == pytest.approx((0.25, 0.25))


def test_paired_bootstrap_ci_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(500)
    a = b + 0.1 + rng.normal(0, 0.01, size=500)
    low, high = paired_bootstrap_ci(a, b, n_boot=500, seed=0)
    assert 0.09 < low < (a - b).mean() < high < 0.11  # excludes 0: a is better
    low0, high0 = paired_bootstrap_ci(b, b, n_boot=100)
    assert low0 == high0 == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, b[:-1])


def test_grouped_ndcg_is_ndcg_at_k_of_each_scored_list():
    from fuserank.evaluation.metrics import grouped_ndcg

    # query 0 ranks rows by score: b (0.9), a (0.5), c (0.1); only c is relevant -> 1/log2(4) = 0.5.
    # query 1: e (0.8) relevant first, d (0.2) relevant second -> DCG = IDCG -> 1.
    # query 2 has no relevant row -> NaN.
    query = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([0.5, 0.9, 0.1, 0.2, 0.8, 0.3])
    relevant = np.array([0, 0, 1, 1, 1, 0])
    got = grouped_ndcg(query, scores, relevant, k=10, n_queries=3)
    assert got[0] == pytest.approx(0.5) and got[1] == pytest.approx(1.0) and np.isnan(got[2])
    assert got[0] == pytest.approx(ndcg_at_k(["b", "a", "c"], {"c"}, 10))
    # k=2 cuts c off query 0's list
    assert grouped_ndcg(query, scores, relevant, k=2, n_queries=3)[0] == 0.0
