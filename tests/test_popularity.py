"""Popularity as of a time against a straightforward count, on random events with ties."""

import numpy as np
import pytest

from fuserank.retrieval.popularity import Timeline, _radix_argsort, popular_as_of


def random_events(rng, n_events=400, n_keys=12, n_times=30):
    keys = rng.integers(0, n_keys, n_events)
    times = rng.integers(100, 100 + n_times, n_events)  # few distinct times: many ties
    values = np.where(rng.random(n_events) < 0.3, np.nan, rng.integers(1, 6, n_events).astype(float))
    return keys, times, values


def reference(keys, times, values, key, after, upto):
    """Events of `key` in (after, upto], counted one by one."""
    mine = (keys == key) & (times > after) & (times <= upto)
    rated = mine & ~np.isnan(values)
    return mine.sum(), times[mine], values[rated]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_timeline_matches_a_count_by_hand_in_any_query_order(seed):
    rng = np.random.default_rng(seed)
    keys, times, values = random_events(rng)
    timeline = Timeline(keys, times, 12, values)
    # Queries at event times (ties), before every event and after the last, in scattered order.
    q_keys = rng.integers(0, 12, 300)
    q_times = np.concatenate([rng.choice(times, 200), rng.integers(90, 140, 100)])
    # Each query set twice and the windows in between: the timeline reuses searches and sorts.
    for window in (0, 7, 0, 3, 30, 0):
        count = timeline.count(q_keys, q_times)
        between = timeline.count_between(q_keys, q_times - window, q_times)
        last, first = timeline.last_time(q_keys, q_times), timeline.first_time(q_keys, q_times)
        mean, n_rated = timeline.means(q_keys, q_times)
        for j, (k, t) in enumerate(zip(q_keys, q_times)):
            n, seen, rated = reference(keys, times, values, k, -np.inf, t)
            assert count[j] == n
            assert between[j] == reference(keys, times, values, k, t - window, t)[0]
            assert (last[j] == seen.max()) if n else np.isnan(last[j])
            assert (first[j] == times[keys == k].min()) if n else np.isnan(first[j])
            assert n_rated[j] == len(rated)
            assert (mean[j] == pytest.approx(rated.mean(), abs=1e-12)) if len(rated) else np.isnan(mean[j])
    # Key by key with ascending times (already sorted, searched as they are).
    grid_keys, grid_times = np.repeat(np.arange(12), 5), np.tile(np.array([99, 105, 110, 120, 200]), 12)
    expected = [reference(keys, times, values, k, -np.inf, t)[0] for k, t in zip(grid_keys, grid_times)]
    assert timeline.count(grid_keys, grid_times).tolist() == expected
    assert timeline.counts_at(200).tolist() == np.bincount(keys, minlength=12).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_grid_is_every_keys_count_at_each_time(seed):
    rng = np.random.default_rng(seed)
    keys, times, values = random_events(rng)
    timeline = Timeline(keys, times, 12, values)
    # Ascending times at events (ties), before all, after all, one repeated; then a later block.
    for grid_times in (np.array([90, 100, 104, 104, 111, 120]), np.array([121, 125, 200]), np.array([95])):
        grid = timeline.count_grid(grid_times)
        expected = [[reference(keys, times, values, k, -np.inf, t)[0] for k in range(12)] for t in grid_times]
        assert grid.tolist() == expected
    assert timeline.count_grid(np.array([], dtype=np.int64)).shape == (0, 12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cells", [None, 24])  # 24: blocks of two reference times, many blocks
def test_popular_as_of_is_each_users_ranking_at_their_time_without_their_items(seed, cells, monkeypatch):
    if cells is not None:
        monkeypatch.setattr("fuserank.retrieval.popularity._RANKING_CELLS", cells)
    rng = np.random.default_rng(seed)
    n_keys = 12
    keys, times, _ = random_events(rng, n_keys=n_keys)
    timeline = Timeline(keys, times, n_keys)
    n_users = 40
    ref = rng.choice(np.concatenate([times, [99, 150]]), n_users)  # ties with events, before all, after all
    seen = [np.unique(rng.integers(0, n_keys, rng.integers(0, 5))) for _ in range(n_users)]
    tie_rank = rng.permutation(n_keys)
    seen_users = np.repeat(np.arange(n_users), [len(s) for s in seen])
    owner, flat, found = popular_as_of(timeline, seen_users, np.concatenate(seen), ref, 4, tie_rank)
    assert np.all(np.diff(owner) >= 0)
    bounds = np.cumsum(np.bincount(owner, minlength=n_users))[:-1]
    rows, counts = np.split(flat, bounds), np.split(found, bounds)
    for user in range(n_users):
        count = np.array([((keys == k) & (times <= ref[user])).sum() for k in range(n_keys)])
        ranking = sorted(range(n_keys), key=lambda k: (-count[k], tie_rank[k], k))
        expected = [k for k in ranking if count[k] > 0 and k not in set(seen[user].tolist())][:4]
        assert rows[user].tolist() == expected
        assert counts[user].tolist() == count[expected].tolist()


@pytest.mark.parametrize("bound", [1, 2, 70_000, 2**40, 2**62])
def test_radix_argsort_sorts_any_non_negative_integers_below_the_bound(bound):
    rng = np.random.default_rng(bound % 97)
    values = rng.integers(0, bound, 5_000, dtype=np.int64)
    values[:3] = [0, bound - 1, bound - 1]
    order = _radix_argsort(values, bound)
    assert sorted(order.tolist()) == list(range(len(values)))
    assert np.array_equal(values[order], np.sort(values))
    assert len(_radix_argsort(values[:0], bound)) == 0
