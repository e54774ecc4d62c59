"""Transition counts on a planted history, worked by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.retrieval.covisitation import fit_transitions, transition_features

ITEMS = ("a", "b", "c", "d")
A, B, C, D = range(4)

# u1: a(1) b(2) c(3); u2: a(5) c(6); u3: b(10) c(20). With window 2 the transitions, dated by
# their second item, are a->b@2, a->c@3, b->c@3 (u1), a->c@6 (u2), b->c@20 (u3).
HISTORY = pl.DataFrame(
    {schema.USER_ID: ["u1", "u1", "u1", "u2", "u2", "u3", "u3"],
     schema.ITEM_ID: ["a", "b", "c", "a", "c", "b", "c"],
     schema.TIMESTAMP: [1, 2, 3, 5, 6, 10, 20], schema.RATING: [None] * 7},
    schema=schema.INTERACTIONS,
)


def test_counts_as_of_a_time_by_hand():
    t = fit_transitions(HISTORY, ITEMS, window=2)
    a, b, c = (np.array([x]) for x in (A, B, C))
    assert t.count(a, c, np.array([6])).tolist() == [2]
    assert t.count(a, c, np.array([5])).tolist() == [1]  # u2's a->c completes at 6
    assert t.count(b, c, np.array([19])).tolist() == [1]
    assert t.count(b, c, np.array([20])).tolist() == [2]
    assert t.count(c, a, np.array([99])).tolist() == [0]  # never in that direction
    assert t.count(np.array([-1]), c, np.array([99])).tolist() == [0]  # padding
    assert t.count_from(a, np.array([6])).tolist() == [3]  # a->b, a->c, a->c
    # window 1: u1's a->c (two steps apart) is not a transition
    assert fit_transitions(HISTORY, ITEMS, window=1).count(a, c, np.array([6])).tolist() == [1]


def test_steps_follow_row_order_for_equal_times():
    tied = pl.DataFrame({schema.USER_ID: ["u", "u"], schema.ITEM_ID: ["b", "a"], schema.TIMESTAMP: [7, 7],
                         schema.RATING: [None, None]}, schema=schema.INTERACTIONS)
    t = fit_transitions(tied, ITEMS, window=1)
    assert t.count(np.array([B]), np.array([A]), np.array([7])).tolist() == [1]
    assert t.count(np.array([A]), np.array([B]), np.array([7])).tolist() == [0]


def test_transition_features_by_hand():
    t = fit_transitions(HISTORY, ITEMS, window=2)
    recent = np.array([[A, B, -1]])  # the user's newest item is a, then b
    out = transition_features(t, recent, np.array([0, 0]), np.array([C, D]), np.array([6]))
    # candidate c at time 6: a->c 2, b->c 1 (the one at 20 is later); 3 transitions leave a
    assert out["seq_transition_last"].tolist() == pytest.approx([math.log1p(2), 0.0])
    assert out["seq_transition_last_share"].tolist() == pytest.approx([2 / 3, 0.0])
    assert out["seq_transition_recent"].tolist() == pytest.approx([math.log1p(2 + 1 / 2), 0.0])
    assert out["seq_transition_recent_max"].tolist() == pytest.approx([math.log1p(2), 0.0])


def test_build_features_adds_the_sequence_group_only_when_asked():
    from fuserank.config import FeatureConfig
    from fuserank.encoders.base import Embeddings
    from fuserank.ranking.features import build_features, feature_group

    emb = Embeddings(ITEMS, np.eye(4, dtype=np.float32), np.ones(4, dtype=bool))
    candidates = pl.DataFrame({schema.USER_ID: ["u2"], schema.ITEM_ID: ["b"], schema.SOURCE: ["ann"],
                               schema.RETRIEVAL_SCORE: [1.0], schema.RETRIEVAL_RANK: [1]}, schema=schema.CANDIDATES)
    _, off = build_features(candidates, HISTORY, {"text": emb}, emb.vectors, FeatureConfig())
    frame, on = build_features(candidates, HISTORY, {"text": emb}, emb.vectors, FeatureConfig(transition_window=2))
    added = [n for n in on if n not in off]
    assert added and {feature_group(n) for n in added} == {"sequence"}
    # u2's newest item is c (reference time 6); c -> b never happens
    assert frame["seq_transition_last"].to_list() == [0.0]
