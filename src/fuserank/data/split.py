"""Temporal per-user splits with no leakage: a user's held-out events are always their latest.

Order within a user is by timestamp; events at the same second keep the input's row order (a
stable sort: for MovieLens, the order of the source file). Never the text order of item ids,
which would make "74" newer than "102" and so let the id scheme choose the test targets. Every
frame this module returns lists each user's events in that order, and code that needs "newest"
relies on it (a stable sort by user and timestamp, or a row index as the last key).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from fuserank import schema

_ORDER = (schema.USER_ID, schema.TIMESTAMP)
_FROM_END = "__fuserank_from_end"
_COUNT = "__fuserank_count"


@dataclass(frozen=True)
class Split:
    """Interaction frames (schema.INTERACTIONS columns plus any extras), each sorted.

    For every user with a test row, valid holds their second-latest event and train the rest;
    users with too few events appear in train only.
    """

    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame


def sort_interactions(interactions: pl.DataFrame) -> pl.DataFrame:
    """Sort by user_id, then timestamp; equal timestamps keep their input row order.

    Args:
        interactions: any frame with user_id and timestamp.

    Returns:
        The same rows in that order (a stable sort).
    """
    return interactions.sort(list(_ORDER), maintain_order=True)


def holdout_last(
    interactions: pl.DataFrame, n: int = 1, min_interactions: int = 2
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hold out each user's last `n` interactions.

    Args:
        interactions: schema.INTERACTIONS rows (extra columns are carried along).
        n: interactions per user moved to targets (>= 1).
        min_interactions: only users with at least this many interactions get targets; the
            others stay entirely in history. Must be >= n; with min_interactions == n a user
            with exactly n events keeps no history.

    Returns:
        (history, targets), both sorted with `sort_interactions`, disjoint, their union the
        input. Every target is later than (or tied and after in row order) every history row
        of the same user.

    Raises:
        ValueError: n < 1 or min_interactions < n.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if min_interactions < n:
        raise ValueError(f"min_interactions ({min_interactions}) must be >= n ({n})")
    return _split_tail(interactions, pl.lit(n), pl.col(_COUNT) >= min_interactions)


def holdout_share(interactions: pl.DataFrame, share: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hold out the last floor(`share` x n) of each user's n interactions, at least one.

    A user with a single interaction keeps it and gets no target. This is the
    per-user random split's shape (RecBole's valid and test are each a tenth of a user's rows)
    where `holdout_last` takes the same count from a user with 12 rows and one with 1,000.

    Args:
        interactions: schema.INTERACTIONS rows (extra columns are carried along).
        share: the fraction held out, 0 < share < 1.

    Returns:
        (history, targets), as `holdout_last` returns them.

    Raises:
        ValueError: share outside (0, 1).
    """
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    n = (pl.col(_COUNT) * share).floor().clip(lower_bound=1)
    return _split_tail(interactions, n, pl.col(_COUNT) > n)


def _split_tail(interactions: pl.DataFrame, n: pl.Expr, eligible: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(history, targets): each eligible user's last `n` rows are targets (both expressions may
    read the user's row count, column _COUNT)."""
    ordered = sort_interactions(interactions).with_columns(
        (pl.len().over(schema.USER_ID) - 1 - pl.int_range(pl.len()).over(schema.USER_ID)).alias(_FROM_END),
        pl.len().over(schema.USER_ID).alias(_COUNT),
    )
    is_target = (pl.col(_FROM_END) < n) & eligible
    helpers = [_FROM_END, _COUNT]
    history = ordered.filter(~is_target).drop(helpers)
    targets = ordered.filter(is_target).drop(helpers)
    return history, targets


def holdout_labels(history: pl.DataFrame, window: int, share: float = 0.0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One ranker-label cut-off (split.label_window, split.label_share): the last `window`
    interactions of each user with more than that, or with a share `holdout_share`."""
    if share != 0:
        return holdout_share(history, share)
    return holdout_last(history, n=window, min_interactions=window + 1)


def leave_last_out(interactions: pl.DataFrame, min_interactions: int = 3) -> Split:
    """Per-user temporal leave-last-out.

    For each user with at least `min_interactions` events: the latest goes to test, the
    second-latest to valid, the rest to train. Users with fewer events stay in train only, so
    they can still be used as history but are never evaluated.

    Args:
        interactions: schema.INTERACTIONS rows (extra columns are carried along).
        min_interactions: >= 1; with 3 (the default) every evaluated user keeps at least one
            train event; with 1 or 2 an evaluated user may have no valid or no train event.

    Returns:
        Split(train, valid, test): disjoint, union equal to the input, each sorted.

    Raises:
        ValueError: min_interactions < 1.
    """
    if min_interactions < 1:
        raise ValueError(f"min_interactions must be >= 1, got {min_interactions}")
    rest, test = holdout_last(interactions, n=1, min_interactions=min_interactions)
    # Valid comes only from users that got a test row; a short user must not enter valid.
    evaluated = rest[schema.USER_ID].is_in(test[schema.USER_ID].implode())
    before_valid, valid = holdout_last(rest.filter(evaluated), n=1, min_interactions=1)
    train = sort_interactions(pl.concat([before_valid, rest.filter(~evaluated)]))
    return Split(train=train, valid=valid, test=test)


def k_core(interactions: pl.DataFrame, k: int) -> pl.DataFrame:
    """Drop users and items with fewer than `k` interactions, repeatedly, until none is left.

    Args:
        interactions: rows with user_id and item_id (extra columns are carried along).
        k: the minimum number of interactions every remaining user and item has (>= 1).

    Returns:
        The remaining rows, in input order: every user and item in it has >= k rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    frame = interactions
    while True:
        kept = frame.filter(
            (pl.len().over(schema.USER_ID) >= k) & (pl.len().over(schema.ITEM_ID) >= k)
        )
        if kept.height == frame.height:
            return kept
        frame = kept


def ratio_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """RecBole's per-user split sizes: valid and test get floor(ratio * n), bumped to 1 when that
    is between 0 and 1 and train keeps more than one; train gets the rest."""
    counts = [int(r * n) for r in ratios]
    counts[0] = n - sum(counts[1:])
    for i in (1, 2):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts[0], counts[1], counts[2]


def random_split(interactions: pl.DataFrame, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Split:
    """Per-user random split (RecBole's "RO" order with a ratio split).

    Each user's interactions are shuffled with `np.random.default_rng(seed)` (after sorting them
    with `sort_interactions`) and cut into train, valid and test with
    `ratio_counts`. Unlike `leave_last_out`, a test row may be older than train rows: this is the
    protocol of RecBole's published tables, not a temporal one.

    Args:
        interactions: schema.INTERACTIONS rows (extra columns are carried along).
        seed: the shuffle's seed.
        ratios: train, valid, test shares (positive, summing to 1).

    Returns:
        Split(train, valid, test): disjoint, union equal to the input, each sorted with
        `sort_interactions`. A user with too few rows for a share gets none of it.
    """

    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"ratios must be three positive shares summing to 1, got {ratios}")
    ordered = sort_interactions(interactions)
    keys = np.random.default_rng(seed).random(ordered.height)
    shuffled = (
        ordered.with_columns(pl.Series(_FROM_END, keys))
        .sort([schema.USER_ID, _FROM_END])
        .with_columns(
            pl.int_range(pl.len()).over(schema.USER_ID).alias(_FROM_END),
            pl.len().over(schema.USER_ID).alias(_COUNT),
        )
    )
    sizes = {n: ratio_counts(n, ratios) for n in shuffled[_COUNT].unique().to_list()}
    n_train = pl.col(_COUNT).replace_strict({n: c[0] for n, c in sizes.items()}, return_dtype=pl.Int64)
    n_valid = pl.col(_COUNT).replace_strict({n: c[0] + c[1] for n, c in sizes.items()}, return_dtype=pl.Int64)
    position = pl.col(_FROM_END)
    parts = [
        shuffled.filter(position < n_train),
        shuffled.filter((position >= n_train) & (position < n_valid)),
        shuffled.filter(position >= n_valid),
    ]
    train, valid, test = (sort_interactions(part.drop(_FROM_END, _COUNT)) for part in parts)
    return Split(train=train, valid=valid, test=test)


def recbole_split(interactions: pl.DataFrame, seed: int, min_rating: float = 3.0, core: int = 10) -> Split:
    """RecBole's general protocol: keep ratings >= `min_rating`, `core`-core filter, random 8:1:1.

    Args:
        interactions: schema.INTERACTIONS rows with a non-null rating column.
        seed: the shuffle's seed (see `random_split`).
        min_rating: lowest rating kept.
        core: minimum interactions per user and per item after filtering (see `k_core`).

    Returns:
        The Split of the filtered interactions.
    """
    kept = interactions.filter(pl.col(schema.RATING) >= min_rating)
    return random_split(k_core(kept, core), seed=seed)
