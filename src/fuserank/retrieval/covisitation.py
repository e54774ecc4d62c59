"""Item-to-item transitions: how often item b followed item a within a few steps of one user's
history, counted as of each query's reference time.

A transition event (a, b) is dated by b's interaction, so a query at time t counts only the
transitions completed at or before t (DESIGN.md, the time rule). Features read the user's newest
items: "b often follows what you just watched" is the signal a next-item model lives on, at the
cost of a few binary searches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.data.split import sort_interactions
from fuserank.retrieval.popularity import Timeline


@dataclass(frozen=True)
class Transitions:
    """Every transition of a history, as a Timeline over distinct (a, b) pairs.

    Attributes:
        pairs: int64 (n_pairs,) sorted distinct keys a * n_items + b.
        pair_events: Timeline keyed by the position of a pair in `pairs`.
        from_events: Timeline keyed by a: every transition out of a (b any item).
        n_items: catalog size.
    """

    pairs: np.ndarray
    pair_events: Timeline
    from_events: Timeline
    n_items: int

    def count(self, a: np.ndarray, b: np.ndarray, times: np.ndarray) -> np.ndarray:
        """int64 (n,): transitions a[j] -> b[j] at or before times[j] (0 for a row a = -1)."""
        out = np.zeros(len(a), dtype=np.int64)
        if not len(self.pairs):
            return out
        key = a * self.n_items + b
        slot = np.minimum(np.searchsorted(self.pairs, key), len(self.pairs) - 1)
        found = (a >= 0) & (self.pairs[slot] == key)
        out[found] = self.pair_events.count(slot[found], times[found])
        return out

    def count_from(self, a: np.ndarray, times: np.ndarray) -> np.ndarray:
        """int64 (n,): transitions out of a[j] at or before times[j] (0 for a = -1)."""
        out = np.zeros(len(a), dtype=np.int64)
        known = a >= 0
        out[known] = self.from_events.count(a[known], times[known])
        return out


def fit_transitions(history: pl.DataFrame, item_ids: Sequence[str], window: int) -> Transitions:
    """Every (a, b) where b follows a within `window` steps of one user's history.

    Args:
        history: interactions (schema.INTERACTIONS); each user's events in data.split order.
        item_ids: the catalog; items outside it are dropped before steps are counted.
        window: how many steps ahead count (>= 1).

    Returns:
        The history's Transitions.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n_items = len(item_ids)
    index = pl.DataFrame({schema.ITEM_ID: pl.Series(list(item_ids), dtype=pl.String),
                          "_row": np.arange(n_items, dtype=np.int64)})
    events = sort_interactions(history.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP)).join(
        index, on=schema.ITEM_ID, how="inner", maintain_order="left")
    users = events[schema.USER_ID].to_numpy()
    rows = events["_row"].to_numpy().astype(np.int64)
    times = events[schema.TIMESTAMP].to_numpy().astype(np.int64)
    starts, ends, dated = [], [], []
    for step in range(1, window + 1):
        same = users[step:] == users[:-step] if len(users) > step else np.zeros(0, dtype=bool)
        starts.append(rows[:-step][same] if len(users) > step else rows[:0])
        ends.append(rows[step:][same] if len(users) > step else rows[:0])
        dated.append(times[step:][same] if len(users) > step else times[:0])
    a, b, t = np.concatenate(starts), np.concatenate(ends), np.concatenate(dated)
    pairs, slot = np.unique(a * n_items + b, return_inverse=True)
    return Transitions(pairs, Timeline(slot, t, len(pairs)), Timeline(a, t, n_items), n_items)


def transition_features(transitions: Transitions, recent: np.ndarray, user_rows: np.ndarray,
                        item_rows: np.ndarray, ref_time: np.ndarray) -> dict[str, np.ndarray]:
    """Transition features of each candidate from its user's newest items.

    Args:
        transitions: from `fit_transitions` on the cut-off's history.
        recent: int64 (n_users, k) the users' newest item rows, newest first, -1 padded
            (features.UserHistory.recent).
        user_rows: int64 (n,) each candidate's user row; item_rows: int64 (n,) its item row.
        ref_time: int64 (n_users,) reference times.

    Returns:
        float32 (n,) arrays: `seq_transition_last` (log count of newest item -> candidate),
        `seq_transition_last_share` (that count over all transitions out of the newest item),
        `seq_transition_recent` (log of the count summed over the k newest items, the j-th newest
        weighted 1/j) and `seq_transition_recent_max` (log of the largest single count).
    """
    times = ref_time[user_rows]
    n, k = len(item_rows), recent.shape[1]
    counts = np.zeros((n, k), dtype=np.float64)
    for j in range(k):
        counts[:, j] = transitions.count(recent[user_rows, j], item_rows, times)
    last_from = transitions.count_from(recent[user_rows, 0], times)
    weights = 1.0 / np.arange(1, k + 1)
    return {
        "seq_transition_last": np.log1p(counts[:, 0]).astype(np.float32),
        "seq_transition_last_share": np.divide(counts[:, 0], last_from, out=np.zeros(n),
                                               where=last_from > 0).astype(np.float32),
        "seq_transition_recent": np.log1p(counts @ weights).astype(np.float32),
        "seq_transition_recent_max": np.log1p(counts.max(axis=1, initial=0.0)).astype(np.float32),
    }
