"""Item popularity as of a time: the one place that counts other users' interactions.

A query may only see what happened at or before its reference time (DESIGN.md, the time rule).
`Timeline` keeps every event as one sorted key (the event's key, e.g. an item row, in the high
part, its time in the low part), so "the events of item i at or before time t" is two binary
searches, for all candidates of all users at once, whatever their reference times.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.retrieval.index import seen_pairs
from fuserank.schema import ITEM_ID, RETRIEVAL_RANK, RETRIEVAL_SCORE, SOURCE, USER_ID


# Cells (distinct reference times x items) of one block of popularity rankings.
_RANKING_CELLS = 1 << 21


class Timeline:
    """Counts, value sums, first and last times of keyed events up to any time.

    Args:
        keys: int64 (n,) each event's key in [0, n_keys) (an item row, a pair of items, ...).
        times: int64 (n,) each event's time (seconds).
        n_keys: number of keys.
        values: float64 (n,) a value per event (NaN: none), e.g. a rating; None: no values.
    """

    def __init__(self, keys: np.ndarray, times: np.ndarray, n_keys: int, values: np.ndarray | None = None) -> None:
        self.n_keys = n_keys
        keys = np.asarray(keys, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        # Offsets start at 1: a query time before every event maps to offset 0 and counts nothing.
        self._t0 = int(times.min(initial=0)) - 1
        self._span = int(times.max(initial=self._t0 + 1)) - self._t0 + 1
        if n_keys * self._span >= 2**62:
            raise ValueError("interaction timestamps span too long a time for this catalog; are they in seconds?")
        combined = keys * self._span + (times - self._t0)
        order = np.argsort(combined, kind="stable")
        self._keys = combined[order]
        self._times = times[order]
        values = np.full(len(keys), np.nan) if values is None else np.asarray(values, dtype=np.float64)
        valued = ~np.isnan(values[order])
        zero = np.zeros(1)
        self._valued = np.concatenate([zero, np.cumsum(valued)])
        self._value_sum = np.concatenate([zero, np.cumsum(np.where(valued, values[order], 0.0))])
        self._start = np.searchsorted(self._keys, np.arange(n_keys + 1, dtype=np.int64) * self._span)
        self._recent: list[tuple[np.ndarray, np.ndarray]] = []  # (needles, positions), newest first
        self._order = np.empty(0, dtype=np.int64)  # the last sort of unsorted needles
        self._by_time: tuple[np.ndarray, np.ndarray] | None = None  # (times, keys) of the events by time

    def _upto(self, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Position after the last event of each key at or before each time."""
        offset = np.clip(np.asarray(times, dtype=np.int64) - self._t0, 0, self._span - 1)
        needles = keys * self._span + offset
        # Features ask for the same (key, time) rows several times (count, last and first time,
        # means, each window's end): comparing needles is ~10x cheaper than searching again.
        recent = self._recent
        for at, (previous, found) in enumerate(recent):
            if np.array_equal(previous, needles):
                self._recent = [recent[at], *recent[:at], *recent[at + 1:]]
                return found
        found = np.empty(len(needles), dtype=np.int64)
        # Sorted needles search ~5x faster than scattered ones, and the same keys at shifted
        # times (a window's start) stay sorted in the order of the unshifted ones: one sort
        # serves every window.
        if _ascending(needles):
            found[:] = np.searchsorted(self._keys, needles, side="right")
        else:
            # One read of the remembered order: a fit's timeline (covisitation) may serve export
            # batches built in threads at once, and another thread may replace it meanwhile.
            order = self._order
            ordered = needles[order] if len(order) == len(needles) else None
            if ordered is None or not _ascending(ordered):
                order = _radix_argsort(needles, self.n_keys * self._span)
                ordered = needles[order]
                self._order = order
            found[order] = np.searchsorted(self._keys, ordered, side="right")
        self._recent = [(needles, found), *self._recent[:1]]
        return found

    def count(self, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """int64 (n,): events of keys[j] at or before times[j]."""
        return self._upto(keys, times) - self._start[keys]

    def count_between(self, keys: np.ndarray, after: np.ndarray, upto: np.ndarray) -> np.ndarray:
        """int64 (n,): events of keys[j] in (after[j], upto[j]]."""
        return self._upto(keys, upto) - np.maximum(self._upto(keys, after), self._start[keys])

    def last_time(self, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """float64 (n,): the key's newest event time at or before times[j]; NaN if none."""
        upto = self._upto(keys, times)
        found = upto > self._start[keys]
        return np.where(found, self._times[np.maximum(upto - 1, 0)], np.nan)

    def first_time(self, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """float64 (n,): the key's oldest event time if it is at or before times[j]; NaN if none."""
        start = self._start[keys]
        found = self._upto(keys, times) > start
        return np.where(found, self._times[np.minimum(start, len(self._times) - 1)], np.nan)

    def means(self, keys: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean value float64 (n,), NaN without a value; number of values int64 (n,)) of the
        events of keys[j] at or before times[j]."""
        upto, start = self._upto(keys, times), self._start[keys]
        n = (self._valued[upto] - self._valued[start]).astype(np.int64)
        total = self._value_sum[upto] - self._value_sum[start]
        return np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0), n

    def count_grid(self, times: np.ndarray) -> np.ndarray:
        """int64 (len(times), n_keys): every key's event count at or before each of the
        ascending `times`.

        The counts at the first time, then the events up to the last one added in time order:
        one pass over the events in between, not one search per (time, key) cell.
        """
        times = np.asarray(times, dtype=np.int64)
        if not len(times):
            return np.zeros((0, self.n_keys), dtype=np.int64)
        if self._by_time is None:
            order = np.argsort(self._times, kind="stable")
            self._by_time = (self._times[order], self._keys[order] // self._span)
        event_times, event_keys = self._by_time
        lo, hi = np.searchsorted(event_times, [times[0], times[-1]], side="right")
        slot = np.searchsorted(times, event_times[lo:hi], side="left")  # the first time that counts it
        grid = np.bincount(slot * self.n_keys + event_keys[lo:hi], minlength=len(times) * self.n_keys)
        grid = grid.reshape(len(times), self.n_keys)
        grid[0] += self.counts_at(int(times[0]))
        return np.cumsum(grid, axis=0)

    def counts_at(self, time: int) -> np.ndarray:
        """int64 (n_keys,): every key's event count at or before `time`."""
        return self.count(np.arange(self.n_keys, dtype=np.int64), np.full(self.n_keys, time, dtype=np.int64))


def _radix_argsort(values: np.ndarray, bound: int) -> np.ndarray:
    """int64 positions that sort `values` (non-negative integers below `bound`; ties in any order).

    A stable argsort of 16-bit digits is a radix sort in numpy: a few such passes, least
    significant digit first, sort millions of needles ~3x faster than comparing them.
    """
    order = np.arange(len(values))
    for shift in range(0, max(int(bound) - 1, 1).bit_length(), 16):
        digit = ((values[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


def _ascending(values: np.ndarray) -> bool:
    return bool(np.all(values[1:] >= values[:-1]))


def item_timeline(history: pl.DataFrame, item_ids: Sequence[str]) -> Timeline:
    """The Timeline of a history's interactions keyed by item row, valued by rating.

    Args:
        history: interactions (schema.INTERACTIONS; rating may be null).
        item_ids: the catalog; rows of `history` whose item is not in it are ignored.
    """
    index = pl.DataFrame({schema.ITEM_ID: pl.Series(list(item_ids), dtype=pl.String),
                          "_row": np.arange(len(item_ids), dtype=np.int64)})
    events = history.select(schema.ITEM_ID, schema.TIMESTAMP, schema.RATING).join(index, on=schema.ITEM_ID)
    return Timeline(events["_row"].to_numpy(), events[schema.TIMESTAMP].to_numpy(), len(item_ids),
                    events[schema.RATING].cast(pl.Float64).fill_null(np.nan).to_numpy())


def item_counts(history: pl.DataFrame, item_ids: Sequence[str]) -> np.ndarray:
    """int64 (n_items,): each catalog item's interactions in the whole of `history` (serving:
    everything known now). Rows whose item is not in `item_ids` are ignored."""
    latest = int(history[schema.TIMESTAMP].max()) if history.height else 0
    return item_timeline(history, item_ids).counts_at(latest)


def reference_times(history: pl.DataFrame, users: Sequence[str]) -> pl.DataFrame:
    """Leave-last-out's reference time: each user's newest history timestamp.

    Args:
        history: interactions the queries may know.
        users: the users asking.

    Returns:
        schema.REF_TIMES frame, one row per user in `users` order; a user without history gets
        the earliest time in `history` minus one (nothing is known at it).
    """
    wanted = pl.DataFrame({schema.USER_ID: pl.Series(list(users), dtype=pl.String)})
    newest = history.group_by(schema.USER_ID).agg(pl.col(schema.TIMESTAMP).max().alias(schema.REF_TIME))
    floor = int(history[schema.TIMESTAMP].min()) - 1 if history.height else 0
    return wanted.join(newest, on=schema.USER_ID, how="left", maintain_order="left").with_columns(
        pl.col(schema.REF_TIME).fill_null(floor).cast(pl.Int64)
    )


def ref_time_array(ref_times: pl.DataFrame, users: Sequence[str]) -> np.ndarray:
    """int64 (len(users),) reference time of each user, in `users` order.

    Raises:
        ValueError: a user has no reference time.
    """
    wanted = pl.DataFrame({schema.USER_ID: pl.Series(list(users), dtype=pl.String)})
    found = wanted.join(ref_times, on=schema.USER_ID, how="left", maintain_order="left")[schema.REF_TIME]
    if found.null_count():
        missing = wanted.filter(found.is_null())[schema.USER_ID][0]
        raise ValueError(f"user {missing!r} has no reference time")
    return found.to_numpy().astype(np.int64)


def popular_as_of(timeline: Timeline, seen_users: np.ndarray, seen_items: np.ndarray, ref: np.ndarray, n: int,
                  tie_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's n most interacted items at their reference time, skipping their own items.

    Args:
        timeline: the history's timeline.
        seen_users, seen_items: int64 (m,) pairs (user, item row) the users interacted with
            (skipped); a user is a position in `ref`.
        ref: int64 (n_users,) reference times.
        n: items per user.
        tie_rank: int64 (n_items,) order among items of equal count (lower first).

    Returns:
        (users, rows, counts): int64 flat arrays, each user's item rows best first with their
        counts, users ascending; only items with at least one interaction at the reference
        time, so a user may get fewer than n (or none).
    """
    empty = np.empty(0, np.int64)
    n_keys = timeline.n_keys
    if not len(ref) or not n_keys or n < 1:
        return empty, empty, empty
    seen_users = np.asarray(seen_users, dtype=np.int64)
    seen_items = np.asarray(seen_items, dtype=np.int64)
    n_seen = np.bincount(seen_users, minlength=len(ref))
    # The ranking's order as one unique integer per item: count descending, then tie_rank, then
    # row (what a stable lexsort on (tie_rank, -count) gives), so a partial sort finds each head.
    tie_pos = np.empty(n_keys, dtype=np.int64)
    tie_pos[np.lexsort((np.arange(n_keys), tie_rank))] = np.arange(n_keys)
    # Users sharing a reference time share one ranking; distinct times go in blocks of rows.
    times, time_of_user = np.unique(ref, return_inverse=True)
    block = max(1, _RANKING_CELLS // n_keys)
    # Users and their seen pairs grouped by block once (each block's users ascending), instead of
    # a pass over every user and pair per block.
    block_of = time_of_user // block
    by_block = np.argsort(block_of, kind="stable")
    user_bounds = np.searchsorted(block_of[by_block], np.arange(len(times) // block + 2))
    seen_block = block_of[seen_users]
    seen_by_block = np.argsort(seen_block, kind="stable")
    seen_bounds = np.searchsorted(seen_block[seen_by_block], np.arange(len(times) // block + 2))
    found_users, found_rows, found_counts = [empty], [empty], [empty]
    for b, first in enumerate(range(0, len(times), block)):
        span = times[first:first + block]
        users = by_block[user_bounds[b]:user_bounds[b + 1]]
        row = time_of_user[users] - first
        counts = timeline.count_grid(span)
        order_key = -counts * n_keys + tie_pos
        depth = int(min(n + n_seen[users].max(), n_keys))
        head = np.argpartition(order_key, depth - 1, axis=1)[:, :depth] if depth < n_keys else \
            np.broadcast_to(np.arange(n_keys), order_key.shape)
        head = np.take_along_axis(head, np.argsort(np.take_along_axis(order_key, head, 1), axis=1), 1)
        positive = (np.take_along_axis(counts, head, 1) > 0).sum(axis=1)  # positives lead each head
        # Each user's head: the first n + (items seen) of its time's ranking, seen items dropped, n kept.
        length = np.minimum(n + n_seen[users], positive[row])
        owner = np.repeat(np.arange(len(users)), length)
        within = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length)
        items = head[row[owner], within]
        mine = seen_by_block[seen_bounds[b]:seen_bounds[b + 1]]
        local = np.searchsorted(users, seen_users[mine])  # each pair's user's position in `users`
        keep = ~np.isin(owner * n_keys + items, local * n_keys + seen_items[mine])
        kept = np.cumsum(keep) - np.repeat(np.cumsum(np.bincount(owner[keep], minlength=len(users))) -
                                           np.bincount(owner[keep], minlength=len(users)), length)
        keep &= kept <= n
        items, owner = items[keep], owner[keep]
        found_users.append(users[owner])
        found_rows.append(items)
        found_counts.append(counts[row[owner], items])
    # Blocks go by time, not by user: a stable sort by user keeps each user's ranking order.
    users = np.concatenate(found_users)
    order = np.argsort(users, kind="stable")
    return users[order], np.concatenate(found_rows)[order], np.concatenate(found_counts)[order]


def popular_candidates(history: pl.DataFrame, users: Sequence[str], n: int,
                       ref_times: pl.DataFrame | None = None) -> pl.DataFrame:
    """The n most interacted items per user at the user's reference time, skipping what the
    user already interacted with.

    Items are ranked by their interaction count at or before the reference time, ties by
    item_id; each user gets the first n of that ranking that are not in their own history
    (fewer when fewer items had been interacted with by then).

    Args:
        history: interactions frame.
        users: whom to produce candidates for.
        n: candidates per user.
        ref_times: schema.REF_TIMES of `users`; None counts the whole history for everyone
            (the most-popular baseline, which knows what every peer knows).

    Returns:
        CANDIDATES frame, source "popular", retrieval_score = the count (float32), sorted by
        user_id, retrieval_rank.
    """
    users = sorted(set(users))
    item_ids = history[ITEM_ID].unique().sort().to_list()
    timeline = item_timeline(history, item_ids)
    if ref_times is None:
        latest = int(history[schema.TIMESTAMP].max()) if history.height else 0
        ref = np.full(len(users), latest, dtype=np.int64)
    else:
        ref = ref_time_array(ref_times, users)
    seen_users, seen_items = seen_pairs(history, users, item_ids)
    owner, flat, counts = popular_as_of(timeline, seen_users, seen_items, ref, n,
                                        np.arange(len(item_ids), dtype=np.int64))
    lengths = np.bincount(owner, minlength=len(users))
    frame = pl.DataFrame({
        USER_ID: pl.Series(users, dtype=pl.String).gather(owner),
        ITEM_ID: pl.Series(item_ids, dtype=pl.String).gather(flat),
        SOURCE: pl.repeat("popular", len(flat), dtype=pl.String, eager=True),
        RETRIEVAL_SCORE: pl.Series(counts, dtype=pl.Float32),
        RETRIEVAL_RANK: pl.Series(np.arange(len(flat)) - (np.cumsum(lengths) - lengths)[owner] + 1, dtype=pl.Int32),
    })
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.CANDIDATES.items()])


def neighbourhood_popular(neighbours: pl.DataFrame, history: pl.DataFrame, n: int, source: str,
                          ref_times: pl.DataFrame | None = None) -> pl.DataFrame:
    """The n most interacted items among each user's nearest items ("popular in your taste").

    An ANN source ranks a user's neighbourhood by similarity alone, and within a narrow taste that
    order is noise; popularity inside the neighbourhood is what predicts the next interaction.

    Args:
        neighbours: CANDIDATES frame, each user's nearest items (e.g. `retrieve` with a deep n).
        history: interactions whose counts rank the neighbourhood (ties: similarity rank).
        n: candidates per user.
        source: the source name of the result.
        ref_times: schema.REF_TIMES of the neighbours' users: counts at or before them (None:
            the whole history).

    Returns:
        CANDIDATES frame, retrieval_score = the count (float32), sorted by user_id, retrieval_rank.
    """
    item_ids = history[ITEM_ID].unique().sort().to_list()
    timeline = item_timeline(history, item_ids)
    users = neighbours[USER_ID].unique().to_list()
    if ref_times is None:
        latest = int(history[schema.TIMESTAMP].max()) if history.height else 0
        ref_times = pl.DataFrame({USER_ID: pl.Series(users, dtype=pl.String),
                                  schema.REF_TIME: pl.Series([latest] * len(users), dtype=pl.Int64)})
    item_index = pl.DataFrame({ITEM_ID: pl.Series(item_ids, dtype=pl.String),
                               "_i": np.arange(len(item_ids), dtype=np.int64)})
    rows = (neighbours.join(ref_times.select(USER_ID, schema.REF_TIME), on=USER_ID, how="left", maintain_order="left")
            .join(item_index, on=ITEM_ID, how="left", maintain_order="left"))
    known = rows["_i"].is_not_null().to_numpy()
    count = np.zeros(rows.height, dtype=np.float32)
    if known.any():
        count[known] = timeline.count(rows["_i"].to_numpy()[known].astype(np.int64),
                                      rows[schema.REF_TIME].to_numpy()[known].astype(np.int64))
    frame = (
        rows.with_columns(pl.Series("_count", count, dtype=pl.Float32))
        .sort([USER_ID, "_count", RETRIEVAL_RANK], descending=[False, True, False])
        .with_columns((pl.int_range(pl.len()).over(USER_ID) + 1).alias(RETRIEVAL_RANK))
        .filter(pl.col(RETRIEVAL_RANK) <= n)
        .select(USER_ID, ITEM_ID, pl.lit(source).alias(SOURCE), pl.col("_count").alias(RETRIEVAL_SCORE), RETRIEVAL_RANK)
    )
    return frame.select([pl.col(name).cast(dtype) for name, dtype in schema.CANDIDATES.items()])
