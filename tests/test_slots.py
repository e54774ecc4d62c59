"""New-item slots (config slots.new_items, ranking/slots.py): positions of every list kept for the
user's best-scored candidates with no interaction as of the query's reference time."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import ConfigError, load_config
from fuserank.pipeline import rank_candidates
from fuserank.ranking.slots import NEW_ITEM


def _frame() -> tuple[pl.DataFrame, np.ndarray]:
    # user a: p..u by score 6..1, new items q, s, u; user b: y, z, x by score, x new
    frame = pl.DataFrame({
        schema.USER_ID: ["a"] * 6 + ["b"] * 3,
        schema.ITEM_ID: list("pqrstu") + list("xyz"),
        NEW_ITEM: [False, True, False, True, False, True, True, False, False],
    })
    return frame, np.array([6, 5, 4, 3, 2, 1, 1, 3, 2], dtype=np.float32)


def _lists(ranked: pl.DataFrame) -> dict[str, str]:
    return {user: "".join(group.sort(schema.RANK)[schema.ITEM_ID])
            for (user,), group in ranked.group_by(schema.USER_ID)}


@pytest.mark.parametrize(("slots", "top_k", "expected"), [
    ((), 10, {"a": "pqrstu", "b": "yzx"}),            # the ranker's order
    ((2,), 10, {"a": "pqrstu", "b": "yxz"}),          # a's best new item is already 2nd; b's moves up
    ((1, 5), 4, {"a": "qprt", "b": "xyz"}),            # q to 1, s to 5 (cut), the rest fill 2, 3, 4, 6
    ((5, 6), 10, {"a": "prtuqs", "b": "yzx"}),         # b has 3 candidates: x stays last, no gap
    ((3, 4, 5, 6), 10, {"a": "prqsut", "b": "yzx"}),   # a has only 3 new items for 4 slots
])
def test_reserved_positions_by_hand(slots, top_k, expected):
    frame, scores = _frame()
    ranked = rank_candidates(frame, scores, top_k, slots)
    assert _lists(ranked) == expected
    for _, group in ranked.group_by(schema.USER_ID):  # ranks 1..n, no gap
        assert sorted(group[schema.RANK].to_list()) == list(range(1, group.height + 1))


def test_without_slots_the_new_item_column_is_not_needed():
    frame, scores = _frame()
    plain = rank_candidates(frame.drop(NEW_ITEM), scores, 10)
    assert plain.equals(rank_candidates(frame, scores, 10, ()))
    with pytest.raises(ValueError, match=NEW_ITEM):
        rank_candidates(frame.drop(NEW_ITEM), scores, 10, (10,))


def test_random_frames_keep_slot_invariants():
    rng = np.random.default_rng(0)
    n = 400
    frame = pl.DataFrame({
        schema.USER_ID: [f"u{i % 17}" for i in range(n)],
        schema.ITEM_ID: [f"i{i}" for i in range(n)],
        NEW_ITEM: rng.random(n) < 0.2,
    })
    scores = rng.random(n).astype(np.float32)
    slots = (3, 7, 10)
    plain = rank_candidates(frame, scores, 10**6)
    slotted = rank_candidates(frame, scores, 10**6, slots)
    new = set(frame.filter(pl.col(NEW_ITEM))[schema.ITEM_ID])
    for user, group in slotted.group_by(schema.USER_ID):
        items = group.sort(schema.RANK)[schema.ITEM_ID].to_list()
        order = plain.filter(pl.col(schema.USER_ID) == user[0]).sort(schema.RANK)[schema.ITEM_ID].to_list()
        best_new = [i for i in order if i in new][:len(slots)]
        assert [items[p - 1] for p in slots[:len(best_new)]] == best_new
        rest = [i for i in items if i not in best_new]
        assert rest == [i for i in order if i not in best_new]  # the others keep the ranker's order


def test_slot_positions_are_1_based():
    assert load_config(None, ["slots.new_items=[9, 10]"]).slots.new_items == (9, 10)
    with pytest.raises(ConfigError):
        load_config(None, ["slots.new_items=[0]"])
