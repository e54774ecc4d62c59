"""Temporal splits on planted data: which row goes where is known in advance."""

from __future__ import annotations

import polars as pl
import pytest

from fuserank import schema
from fuserank.data.split import Split, holdout_labels, holdout_last, holdout_share, leave_last_out, sort_interactions

KEY = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]


def _frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    users, items, times = zip(*rows)
    return pl.DataFrame(
        {schema.USER_ID: list(users), schema.ITEM_ID: list(items), schema.TIMESTAMP: list(times),
         schema.RATING: [float(i) for i in range(len(rows))]},
        schema=schema.INTERACTIONS,
    )


# Shuffled on purpose. u1: five events, the last two tied at t=50; "z" comes first in the rows, so
# row order makes "m" the latest (text order of ids would say "z"). u2: three events. u3: two
# events (short). u4: one event (short).
PLANTED = _frame([
    ("u2", "b", 300), ("u1", "z", 50), ("u3", "x", 7), ("u1", "a", 10), ("u4", "q", 1),
    ("u2", "c", 100), ("u1", "m", 50), ("u1", "c", 30), ("u3", "y", 8), ("u1", "b", 20), ("u2", "a", 200),
])


def _keys(frame: pl.DataFrame) -> list[tuple[str, str, int]]:
    return [tuple(r) for r in frame.select(KEY).rows()]


def test_sort_keeps_the_row_order_of_timestamp_ties():
    ordered = sort_interactions(PLANTED)
    u1 = ordered.filter(pl.col(schema.USER_ID) == "u1")[schema.ITEM_ID].to_list()
    assert u1 == ["a", "b", "c", "z", "m"]
    assert ordered[schema.USER_ID].to_list() == ["u1"] * 5 + ["u2"] * 3 + ["u3"] * 2 + ["u4"]
    # Reversed input rows: the tie flips, nothing else moves.
    again = sort_interactions(PLANTED.reverse()).filter(pl.col(schema.USER_ID) == "u1")[schema.ITEM_ID].to_list()
    assert again == ["a", "b", "c", "m", "z"]


def test_ties_at_the_end_go_by_row_order_not_by_the_text_of_ids():
    # MovieLens-like ids: as text "74" > "102", so text order would make "74" the test target and
    # "102" the validation target. The file lists "74" first, so "102" is the latest.
    rows = _frame([("u", "5", 1), ("u", "74", 9), ("u", "102", 9), ("u", "1", 2)])
    split = leave_last_out(rows, min_interactions=3)
    assert split.test[schema.ITEM_ID].to_list() == ["102"]
    assert split.valid[schema.ITEM_ID].to_list() == ["74"]
    assert split.train[schema.ITEM_ID].to_list() == ["5", "1"]
    flipped = leave_last_out(rows[[0, 2, 1, 3]], min_interactions=3)
    assert flipped.test[schema.ITEM_ID].to_list() == ["74"]


def test_holdout_last_takes_the_latest_n_of_long_enough_users():
    history, targets = holdout_last(PLANTED, n=2, min_interactions=3)
    assert _keys(targets) == [("u1", "z", 50), ("u1", "m", 50), ("u2", "a", 200), ("u2", "b", 300)]
    assert set(history[schema.USER_ID]) == {"u1", "u2", "u3", "u4"}
    assert history.filter(pl.col(schema.USER_ID) == "u3").height == 2  # short: all history
    assert history.columns == PLANTED.columns and targets.columns == PLANTED.columns
    assert history.height + targets.height == PLANTED.height


def test_holdout_last_rejects_bad_arguments():
    with pytest.raises(ValueError):
        holdout_last(PLANTED, n=0)
    with pytest.raises(ValueError):
        holdout_last(PLANTED, n=3, min_interactions=2)


def test_holdout_share_takes_a_share_of_each_user_at_least_one():
    # 0.5 of u1's 5 events is 2 (floor), of u2's 3 is 1, of u3's 2 is 1; u4's one event stays history.
    history, targets = holdout_share(PLANTED, 0.5)
    assert _keys(targets) == [("u1", "z", 50), ("u1", "m", 50), ("u2", "b", 300), ("u3", "y", 8)]
    assert history.filter(pl.col(schema.USER_ID) == "u4").height == 1
    assert history.height + targets.height == PLANTED.height
    # A small share still takes one from everyone who keeps a history row.
    _, one_each = holdout_share(PLANTED, 0.01)
    assert _keys(one_each) == [("u1", "m", 50), ("u2", "b", 300), ("u3", "y", 8)]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            holdout_share(PLANTED, bad)


def test_holdout_labels_uses_the_window_unless_a_share_is_set():
    assert _keys(holdout_labels(PLANTED, window=2)[1]) == _keys(holdout_last(PLANTED, n=2, min_interactions=3)[1])
    assert _keys(holdout_labels(PLANTED, window=2, share=0.5)[1]) == _keys(holdout_share(PLANTED, 0.5)[1])


def test_leave_last_out_planted_answer():
    split = leave_last_out(PLANTED, min_interactions=3)
    assert isinstance(split, Split)
    assert _keys(split.test) == [("u1", "m", 50), ("u2", "b", 300)]
    assert _keys(split.valid) == [("u1", "z", 50), ("u2", "a", 200)]
    assert _keys(split.train) == [
        ("u1", "a", 10), ("u1", "b", 20), ("u1", "c", 30), ("u2", "c", 100),
        ("u3", "x", 7), ("u3", "y", 8), ("u4", "q", 1),
    ]
    assert split.train.schema == PLANTED.schema


def test_short_users_stay_in_train_only():
    split = leave_last_out(PLANTED, min_interactions=3)
    evaluated = set(split.test[schema.USER_ID]) | set(split.valid[schema.USER_ID])
    assert evaluated == {"u1", "u2"}
    # u3 has exactly min_interactions - 1 events: it must not leak into valid either.
    assert "u3" not in set(split.valid[schema.USER_ID])


def test_parts_are_disjoint_and_their_union_is_the_input():
    split = leave_last_out(PLANTED, min_interactions=2)
    parts = [set(_keys(p)) for p in (split.train, split.valid, split.test)]
    assert sum(len(p) for p in parts) == PLANTED.height
    assert parts[0] | parts[1] | parts[2] == set(_keys(PLANTED))
    # min_interactions=2: u3 is evaluated with no train event left; u4 stays train only.
    assert set(split.test[schema.USER_ID]) == {"u1", "u2", "u3"}
    assert "u3" not in set(split.train[schema.USER_ID])
    assert set(split.valid[schema.USER_ID]) == {"u1", "u2", "u3"}


def test_test_is_latest_and_valid_precedes_it():
    split = leave_last_out(PLANTED)
    order = {k: i for i, k in enumerate(_keys(sort_interactions(PLANTED)))}
    for user in split.test[schema.USER_ID]:
        test_pos = [order[k] for k in _keys(split.test.filter(pl.col(schema.USER_ID) == user))]
        valid_pos = [order[k] for k in _keys(split.valid.filter(pl.col(schema.USER_ID) == user))]
        train_pos = [order[k] for k in _keys(split.train.filter(pl.col(schema.USER_ID) == user))]
        assert len(test_pos) == len(valid_pos) == 1
        assert max(train_pos) < valid_pos[0] < test_pos[0]
        latest = PLANTED.filter(pl.col(schema.USER_ID) == user)[schema.TIMESTAMP].max()
        assert split.test.filter(pl.col(schema.USER_ID) == user)[schema.TIMESTAMP].item() == latest
