"""Property-based tests (hypothesis) for metrics, splits, fusion and A/B bucketing: laws that
must hold for every input, each checked on a few hundred generated cases."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fuserank import schema
from fuserank.data.split import holdout_last, leave_last_out
from fuserank.encoders.base import Embeddings
from fuserank.jobs.arms import BUCKETS, assign_arms, plan_arms, user_buckets
from fuserank.retrieval.fusion import fuse
from fuserank.evaluation.metrics import f1_at_k, map_at_k, mrr_at_k, ndcg_at_k, precision_at_k, recall_at_k

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ITEMS = [f"i{n}" for n in range(30)]


@st.composite
def ranking_case(draw):
    """(ranked distinct items, relevant set, k)."""
    ranked = draw(st.lists(st.sampled_from(ITEMS), unique=True, max_size=25))
    relevant = set(draw(st.lists(st.sampled_from(ITEMS), unique=True, max_size=8)))
    k = draw(st.integers(1, 30))
    return ranked, relevant, k


# --- metrics ---------------------------------------------------------------------------------------

@FAST
@given(ranking_case())
def test_metrics_lie_in_the_unit_interval_and_are_zero_without_a_hit(case):
    ranked, relevant, k = case
    values = [f(ranked, relevant, k) for f in (ndcg_at_k, recall_at_k, mrr_at_k, map_at_k, precision_at_k, f1_at_k)]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)
    hit = any(item in relevant for item in ranked[:k])
    assert all(v > 0 for v in values) == hit and all(v == 0 for v in values) == (not hit)


@FAST
@given(ranking_case())
def test_a_perfect_ranking_scores_one(case):
    _, relevant, k = case
    assume(relevant)
    ideal = sorted(relevant) + [i for i in ITEMS if i not in relevant]
    assert ndcg_at_k(ideal, relevant, k) == pytest.approx(1.0)
    assert map_at_k(ideal, relevant, k) == pytest.approx(1.0)
    assert mrr_at_k(ideal, relevant, k) == 1.0
    assert recall_at_k(ideal, relevant, k) == pytest.approx(min(len(relevant), k) / len(relevant))
    # Precision divides by k, so fewer targets than k caps even a perfect list below 1.
    assert precision_at_k(ideal, relevant, k) == pytest.approx(min(len(relevant), k) / k)


@FAST
@given(ranking_case())
def test_recall_never_falls_and_mrr_is_the_reciprocal_first_hit_rank(case):
    ranked, relevant, k = case
    assert recall_at_k(ranked, relevant, k) <= recall_at_k(ranked, relevant, k + 1)
    first = next((r for r, item in enumerate(ranked, start=1) if item in relevant), None)
    expected = 1.0 / first if first is not None and first <= k else 0.0
    assert mrr_at_k(ranked, relevant, k) == expected


@FAST
@given(ranking_case(), st.data())
def test_moving_a_relevant_item_up_never_lowers_ndcg_or_map(case, data):
    ranked, relevant, k = case
    assume(len(ranked) >= 2)
    # Plant a relevant item below the top instead of filtering for one (random cases rarely have it).
    relevant = relevant | {ranked[data.draw(st.integers(1, len(ranked) - 1))]}
    hits = [r for r, item in enumerate(ranked) if item in relevant and r > 0]
    position = data.draw(st.sampled_from(hits))
    target = data.draw(st.integers(0, position - 1))
    moved = list(ranked)
    moved.insert(target, moved.pop(position))
    assert ndcg_at_k(moved, relevant, k) >= ndcg_at_k(ranked, relevant, k) - 1e-12
    assert map_at_k(moved, relevant, k) >= map_at_k(ranked, relevant, k) - 1e-12


@FAST
@given(ranking_case())
def test_ndcg_matches_its_textbook_formula(case):
    ranked, relevant, k = case
    assume(relevant)
    dcg = sum(1 / math.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in relevant)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(dcg / idcg)


@FAST
@given(ranking_case())
def test_precision_and_f1_match_their_counting_formulas(case):
    ranked, relevant, k = case
    assume(relevant)
    hits = len(set(ranked[:k]) & relevant)
    assert precision_at_k(ranked, relevant, k) == pytest.approx(hits / k)
    # 2PR / (P + R) with P = h/k, R = h/|rel| simplifies to 2h / (k + |rel|).
    assert f1_at_k(ranked, relevant, k) == pytest.approx(2 * hits / (k + len(relevant)))


# --- splits ----------------------------------------------------------------------------------------

@st.composite
def interactions(draw):
    """Interactions of up to 8 users over 10 items with ties in time; unique (user, item, ts)."""
    rows = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 9), st.integers(0, 20)), unique=True,
                         min_size=1, max_size=60))
    return pl.DataFrame(
        {
            schema.USER_ID: [f"u{u}" for u, _, _ in rows],
            schema.ITEM_ID: [f"i{i}" for _, i, _ in rows],
            schema.TIMESTAMP: [t for _, _, t in rows],
            schema.RATING: [float(t % 5) for _, _, t in rows],
        },
        schema=schema.INTERACTIONS,
    )


POS = "pos"  # each row's input position, carried through the split as an extra column


def _key(frame: pl.DataFrame) -> list[tuple]:
    return sorted(frame.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, POS).iter_rows())


def _order(row: tuple) -> tuple:
    return row[2], row[3]  # (timestamp, input position): the split's order within a user


@FAST
@given(interactions(), st.integers(1, 5), st.randoms(use_true_random=False))
def test_leave_last_out_partitions_and_holds_out_each_users_latest(frame, min_interactions, rnd):
    frame = frame.with_row_index(POS)
    split = leave_last_out(frame, min_interactions=min_interactions)
    parts = [_key(split.train), _key(split.valid), _key(split.test)]
    assert sorted(parts[0] + parts[1] + parts[2]) == _key(frame)
    assert len(set(parts[0]) | set(parts[1]) | set(parts[2])) == frame.height
    counts = dict(frame.group_by(schema.USER_ID).len().iter_rows())
    tested = set(split.test[schema.USER_ID])
    assert tested == {u for u, n in counts.items() if n >= min_interactions}
    assert set(split.valid[schema.USER_ID]) <= tested
    assert split.test[schema.USER_ID].n_unique() == split.test.height
    for user in tested:
        mine = [r for r in _key(frame) if r[0] == user]
        ordered = sorted(mine, key=_order)
        assert [r for r in parts[2] if r[0] == user] == [ordered[-1]]
        valid = [r for r in parts[1] if r[0] == user]
        assert valid == ([ordered[-2]] if len(ordered) >= 2 else [])
        assert all(_order(r) < _order(ordered[-1]) for r in ordered[:-1])
    # Only each user's own row order matters: interleaving the users differently changes nothing.
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=rnd.randint(0, 2**31))
    again = leave_last_out(shuffled.sort(POS).sort(schema.USER_ID, descending=True, maintain_order=True),
                           min_interactions=min_interactions)
    for a, b in zip((split.train, split.valid, split.test), (again.train, again.valid, again.test), strict=True):
        assert a.equals(b)


@FAST
@given(interactions(), st.integers(1, 3), st.integers(0, 3))
def test_holdout_last_targets_are_never_earlier_than_their_users_history(frame, n, extra):
    frame = frame.with_row_index(POS)
    history, targets = holdout_last(frame, n=n, min_interactions=n + extra)
    assert history.height + targets.height == frame.height
    for user in targets[schema.USER_ID].unique():
        past = [_order(r) for r in _key(history.filter(pl.col(schema.USER_ID) == user))]
        held = [_order(r) for r in _key(targets.filter(pl.col(schema.USER_ID) == user))]
        assert len(held) == n and (not past or max(past) < min(held))


# --- fusion ----------------------------------------------------------------------------------------

def _embeddings(vectors: np.ndarray, mask: np.ndarray) -> Embeddings:
    vectors = np.where(mask[:, None], vectors, 0.0).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return Embeddings(tuple(f"i{n}" for n in range(len(vectors))), vectors, mask & (norms[:, 0] > 0))


finite = st.floats(-10, 10, allow_nan=False, width=32).filter(lambda x: abs(x) > 1e-3 or x == 0)


@st.composite
def two_modalities(draw):
    n = draw(st.integers(1, 12))
    a = draw(hnp.arrays(np.float32, (n, 4), elements=finite))
    b = draw(hnp.arrays(np.float32, (n, 3), elements=finite))
    mask_a = draw(hnp.arrays(np.bool_, n))
    mask_b = draw(hnp.arrays(np.bool_, n))
    return _embeddings(a, mask_a), _embeddings(b, mask_b)


weight = st.floats(0.01, 100, allow_nan=False)


@FAST
@given(two_modalities(), weight, weight, st.floats(0.01, 100))
def test_fused_rows_are_unit_or_zero_and_only_weight_ratios_matter(pair, wa, wb, scale):
    a, b = pair
    fused = fuse({"a": a, "b": b}, {"a": wa, "b": wb})
    assert fused.dtype == np.float32 and fused.shape == (len(a.item_ids), 7)
    norms = np.linalg.norm(fused, axis=1)
    encoded = a.mask | b.mask
    np.testing.assert_allclose(norms[encoded], 1.0, rtol=1e-4)
    assert not fused[~encoded].any()
    scaled = fuse({"a": a, "b": b}, {"a": wa * scale, "b": wb * scale})
    np.testing.assert_allclose(scaled, fused, atol=1e-5)


@FAST
@given(two_modalities(), weight, weight)
def test_fused_cosine_is_the_weighted_mean_of_modality_cosines(pair, wa, wb):
    a, b = pair
    both = a.mask & b.mask
    assume(both.sum() >= 2)
    fused = fuse({"a": a, "b": b}, {"a": wa, "b": wb})[both]
    expected = (wa * a.vectors[both] @ a.vectors[both].T + wb * b.vectors[both] @ b.vectors[both].T) / (wa + wb)
    np.testing.assert_allclose(fused @ fused.T, expected, atol=1e-4)


@FAST
@given(two_modalities(), weight)
def test_a_zero_weight_drops_the_modality(pair, wa):
    a, b = pair
    # Rows of `a` are unit or (not encoded) zero, and stay so: `b` has no say at all.
    np.testing.assert_allclose(fuse({"a": a, "b": b}, {"a": wa, "b": 0.0}), a.vectors, atol=1e-6)


# --- bucketing -------------------------------------------------------------------------------------

user_ids = st.lists(st.text(min_size=1, max_size=12), unique=True, min_size=1, max_size=40)


@st.composite
def arm_plans(draw):
    n_arms = draw(st.integers(1, 4))
    raw = draw(st.lists(st.integers(1, 100), min_size=n_arms, max_size=n_arms))
    holdout_steps = draw(st.integers(0, 30))
    total = sum(raw) + holdout_steps
    # Shares in steps of 1/total, rounded to 0.0001 and fixed to sum to exactly 1.
    shares = [round(r / total, 4) for r in raw]
    holdout = round(1 - sum(shares), 4)
    assume(0 <= holdout < 1 and all(s > 0 for s in shares))
    arms = {f"arm{i}": "popular" for i in range(n_arms)}
    return plan_arms(arms, dict(zip(arms, shares, strict=True)), holdout)


@FAST
@given(user_ids, st.text(max_size=10))
def test_buckets_are_in_range_and_depend_only_on_user_and_salt(users, salt):
    buckets = user_buckets(users, salt)
    assert buckets.dtype == np.int32 and ((buckets >= 0) & (buckets < BUCKETS)).all()
    alone = np.array([user_buckets([u], salt)[0] for u in users])
    np.testing.assert_array_equal(buckets, alone)
    np.testing.assert_array_equal(user_buckets(users[::-1], salt), buckets[::-1])


@FAST
@given(arm_plans())
def test_arm_plans_cover_every_bucket_exactly_once(plans):
    assert plans[0].low == 0 and plans[-1].high == BUCKETS
    for before, after in zip(plans, plans[1:]):
        assert before.high == after.low and before.low < before.high
    assert sum(p.share for p in plans) == pytest.approx(1.0)


@FAST
@given(user_ids, arm_plans(), st.text(max_size=10), st.randoms(use_true_random=False))
def test_each_user_gets_the_arm_owning_its_bucket_whatever_the_input_order(users, plans, salt, rnd):
    frame = assign_arms(users, plans, salt)
    assert frame.height == len(users) and set(frame[schema.USER_ID]) == set(users)
    for user, bucket, arm in frame.iter_rows():
        (owner,) = [p for p in plans if p.low <= bucket < p.high]
        assert arm == owner.name
    shuffled = list(users)
    rnd.shuffle(shuffled)
    assert assign_arms(shuffled, plans, salt).equals(frame)
    # A user's arm does not depend on who else is exported.
    subset = users[: max(1, len(users) // 2)]
    sub = dict(assign_arms(subset, plans, salt).select(schema.USER_ID, schema.ARM).iter_rows())
    full = dict(frame.select(schema.USER_ID, schema.ARM).iter_rows())
    assert all(full[u] == arm for u, arm in sub.items())
