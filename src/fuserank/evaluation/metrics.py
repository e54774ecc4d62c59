"""Pure per-query ranking metrics, their per-user evaluation and bootstrap intervals.

Each metric is defined exactly once, as a function of one query: a ranked list of item ids
(best first), the set of relevant item ids and a cut-off k. `evaluate_rankings` applies those
same functions to every user, so the codebase holds a single NDCG, Recall, MRR, MAP, Precision
and F1. Gains are binary: an item is relevant or it is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import polars as pl

from fuserank.schema import ITEM_ID, RANK, USER_ID

# 1 / log2(rank + 1) for ranks 1..N, extended on demand; the DCG inner loop is a table look-up.
_DISCOUNTS: list[float] = [1.0 / math.log2(r + 1) for r in range(1, 257)]


def _discount(rank: int) -> float:
    while rank > len(_DISCOUNTS):
        _DISCOUNTS.append(1.0 / math.log2(len(_DISCOUNTS) + 2))
    return _DISCOUNTS[rank - 1]


def _hits(ranked: Sequence[str], relevant: set[str], k: int) -> int:
    return sum(1 for item in ranked[:k] if item in relevant)


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Normalised discounted cumulative gain with binary gains.

    Args:
        ranked: item ids, best first; assumed distinct.
        relevant: the relevant item ids of this query.
        k: cut-off (positive); a list shorter than k is scored as it is.

    Returns:
        DCG@k / IDCG@k in [0, 1], where DCG sums 1/log2(rank + 1) over the relevant items in the
        top k and IDCG is the same sum over the first min(|relevant|, k) positions; 0.0 when
        `relevant` is empty.
    """
    if not relevant:
        return 0.0
    dcg = 0.0
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            dcg += _discount(rank)
    if dcg == 0.0:
        return 0.0
    idcg = sum(_discount(r) for r in range(1, min(len(relevant), k) + 1))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant items found in the top k (the hit rate when there is one target).

    Args:
        ranked: item ids, best first; assumed distinct.
        relevant: the relevant item ids of this query.
        k: cut-off (positive).

    Returns:
        |top k ∩ relevant| / |relevant| in [0, 1]; 0.0 when `relevant` is empty.
    """
    if not relevant:
        return 0.0
    return _hits(ranked, relevant, k) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Reciprocal rank of the first relevant item within the top k.

    Args:
        ranked: item ids, best first.
        relevant: the relevant item ids of this query.
        k: cut-off (positive).

    Returns:
        1 / rank (rank counted from 1) of the first relevant item in the top k, else 0.0.
    """
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def map_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Average precision at k.

    Args:
        ranked: item ids, best first; assumed distinct.
        relevant: the relevant item ids of this query.
        k: cut-off (positive).

    Returns:
        The sum of precision@i over every position i <= k holding a relevant item, divided by
        min(|relevant|, k); 0.0 when `relevant` is empty.
    """
    if not relevant:
        return 0.0
    hits = 0
    total = 0.0
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k)


def precision_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the top k slots that hold a relevant item.

    The denominator is k, not min(k, len(ranked)): a list shorter than k is penalised for the
    slots it leaves empty, as a recommender that shows fewer items than asked should be. So is a
    query with fewer than k relevant items: its best possible precision is |relevant| / k.

    Args:
        ranked: item ids, best first; assumed distinct.
        relevant: the relevant item ids of this query.
        k: cut-off (positive).

    Returns:
        |top k ∩ relevant| / k in [0, 1]; 0.0 when `relevant` is empty.
    """
    return _hits(ranked, relevant, k) / k


def f1_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Harmonic mean of `precision_at_k` and `recall_at_k` of one query.

    Args:
        ranked: item ids, best first; assumed distinct.
        relevant: the relevant item ids of this query.
        k: cut-off (positive).

    Returns:
        2 P R / (P + R) in [0, 1] with P = hits / k and R = hits / |relevant| (hits = |top k ∩
        relevant|), which equals 2 hits / (k + |relevant|); 0.0 when P + R = 0 (no hit, or
        `relevant` empty).
    """
    precision = precision_at_k(ranked, relevant, k)
    recall = recall_at_k(ranked, relevant, k)
    if precision + recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def grouped_ndcg(query: np.ndarray, scores: np.ndarray, relevant: np.ndarray, k: int, n_queries: int) -> np.ndarray:
    """`ndcg_at_k` of many scored candidate lists at once, for loops that rescore a whole table
    (early stopping picks a round by it).

    Args:
        query: int (n,) query index of each row, in [0, n_queries).
        scores: float (n,) row scores; a query's list is its rows by score, best first (equal
            scores keep row order).
        relevant: bool or 0/1 (n,) whether the row is relevant.
        k: cut-off.
        n_queries: number of queries.

    Returns:
        float64 (n_queries,): each query's NDCG@k over its own rows, the ideal being its relevant
        rows ranked first; NaN for a query without a relevant row.
    """
    discount = np.array([_discount(r) for r in range(1, k + 1)])
    gain = np.asarray(relevant, dtype=np.float64)

    def dcg(order_scores: np.ndarray) -> np.ndarray:
        order = np.lexsort((-order_scores, query))
        q = query[order]
        starts = np.searchsorted(q, np.arange(n_queries))
        pos = np.arange(q.size) - starts[q]
        keep = pos < k
        return np.bincount(q[keep], weights=gain[order][keep] * discount[pos[keep]], minlength=n_queries)

    ideal = dcg(gain)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg(np.asarray(scores, dtype=np.float64)) / ideal, np.nan)


def catalog_coverage(lists: Iterable[Sequence[str]], n_items: int, k: int) -> float:
    """Share of the catalog that appears in the top k of at least one list.

    Args:
        lists: ranked item-id lists, best first (one per user).
        n_items: catalog size (positive).
        k: cut-off (positive).

    Returns:
        |union of the top k of every list| / n_items.
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    seen: set[str] = set()
    for ranked in lists:
        seen.update(ranked[:k])
    return len(seen) / n_items


# The one registry of per-query metrics; column names are f"{name}_at_{k}".
METRICS: dict[str, Callable[[Sequence[str], set[str], int], float]] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
    "precision": precision_at_k,
    "f1": f1_at_k,
}


def metric_column(name: str, k: int) -> str:
    """Column / MLflow metric name of metric `name` at cut-off `k`, e.g. "ndcg_at_10"."""
    return f"{name}_at_{k}"


def evaluate_rankings(ranked: pl.DataFrame, targets: pl.DataFrame, ks: Sequence[int]) -> pl.DataFrame:
    """Score every target user's ranked list with every metric of `METRICS` at every k.

    Args:
        ranked: columns user_id, item_id, rank (1 = best); one row per (user, item), no duplicates.
        targets: columns user_id, item_id; one or more relevant items per user.
        ks: cut-offs (positive ints).

    Returns:
        One row per distinct target user, sorted by user_id, with column user_id and one Float64
        column `<metric>_at_<k>` per metric and k (metric-major order). A target user without a
        list scores 0; users in `ranked` without targets are ignored.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    required = {"ranked": (ranked, (USER_ID, ITEM_ID, RANK)), "targets": (targets, (USER_ID, ITEM_ID))}
    for name, (frame, needed) in required.items():
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}; it has {frame.columns}")
    if ranked.select(USER_ID, ITEM_ID).is_duplicated().any():
        raise ValueError("ranked holds the same (user_id, item_id) more than once")

    target_lists = targets.group_by(USER_ID).agg(pl.col(ITEM_ID)).sort(USER_ID)
    users = target_lists[USER_ID].to_list()
    relevant_sets = [set(items) for items in target_lists[ITEM_ID].to_list()]

    max_k = max(ks)
    lists = (
        ranked.filter(pl.col(RANK) <= max_k)  # deeper items can never count
        .sort(USER_ID, RANK)
        .group_by(USER_ID, maintain_order=True)
        .agg(pl.col(ITEM_ID))
    )
    by_user = dict(zip(lists[USER_ID].to_list(), lists[ITEM_ID].to_list(), strict=True))

    columns: dict[str, list[float]] = {metric_column(m, k): [] for m in METRICS for k in ks}
    for user, relevant in zip(users, relevant_sets, strict=True):
        items = by_user.get(user, [])
        for name, fn in METRICS.items():
            for k in ks:
                columns[metric_column(name, k)].append(fn(items, relevant, k))

    return pl.DataFrame(
        {USER_ID: pl.Series(USER_ID, users, dtype=target_lists.schema[USER_ID])}
        | {col: pl.Series(col, vals, dtype=pl.Float64) for col, vals in columns.items()}
    )


def summarise(per_user: pl.DataFrame, prefix: str = "") -> dict[str, float]:
    """Mean over users of every metric column.

    Args:
        per_user: output of `evaluate_rankings` (user_id plus numeric metric columns).
        prefix: prepended to every key, e.g. "test_" gives "test_ndcg_at_10".

    Returns:
        {prefix + column: mean} for every column except user_id; NaN for a zero-row frame.
    """
    out: dict[str, float] = {}
    for col in per_user.columns:
        if col == USER_ID:
            continue
        mean = per_user[col].mean()
        out[f"{prefix}{col}"] = float("nan") if mean is None else float(mean)
    return out


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over users.

    Args:
        values: (n_users,) per-user metric values.
        n_boot: number of resamples (with replacement, n_users each).
        seed: seed of `np.random.default_rng`; the same seed gives the same interval.
        alpha: 1 - confidence level; 0.05 gives the 2.5 and 97.5 percentiles.

    Returns:
        (low, high) bounds of the mean.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    # Chunks bound memory at ~8 MB of indices however many users there are.
    chunk = max(1, min(n_boot, 1_000_000 // n))
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of mean(a - b) over the same users.

    Args:
        a, b: (n_users,) per-user values of two systems, aligned user by user.
        n_boot, seed, alpha: as in `bootstrap_ci`.

    Returns:
        (low, high) bounds of the mean difference; an interval excluding 0 means a differs.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values must be aligned, got shapes {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, n_boot=n_boot, seed=seed, alpha=alpha)
