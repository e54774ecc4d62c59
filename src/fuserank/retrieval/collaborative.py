"""Item-item collaborative scores from the interaction history: EASE^R (Steck 2019, "Embarrassingly
Shallow Autoencoders for Sparse Data"), a closed-form linear item-item model.

Stage 1 uses it as a candidate source ("ease") and the ranker as a feature: it sees what the
behaviour embedding misses, co-occurrence between specific items rather than a low-rank taste.
The weights are a dense (n, n) matrix, so the model covers at most `max_items` items (the most
interacted ones); others score NaN as features and are never its candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from fuserank import schema


@dataclass(frozen=True)
class ItemItemModel:
    """Item-item weights over a subset of the catalog.

    Attributes:
        item_ids: the catalog, in the row order every other stage-1 array uses.
        columns: int64 catalog rows of the items the model covers, ascending.
        weights: float32 (len(columns), len(columns)) B with a zero diagonal; a user with binary
            history x over `columns` gets scores x @ B.
    """

    item_ids: tuple[str, ...]
    columns: np.ndarray
    weights: np.ndarray


def user_matrix(history: pl.DataFrame, users: Sequence[str], item_ids: Sequence[str]) -> sp.csr_matrix:
    """Binary float32 csr (len(users), len(item_ids)) of who interacted with what in `history`;
    rows of users or items outside `users` / `item_ids` are ignored."""
    user_index = pl.DataFrame({schema.USER_ID: pl.Series(list(users), dtype=pl.String),
                               "_u": np.arange(len(users), dtype=np.int64)})
    item_index = pl.DataFrame({schema.ITEM_ID: pl.Series(list(item_ids), dtype=pl.String),
                               "_i": np.arange(len(item_ids), dtype=np.int64)})
    pairs = (
        history.select(schema.USER_ID, schema.ITEM_ID)
        .join(user_index, on=schema.USER_ID)
        .join(item_index, on=schema.ITEM_ID)
        .unique(["_u", "_i"])
    )
    values = np.ones(pairs.height, dtype=np.float32)
    return sp.csr_matrix((values, (pairs["_u"].to_numpy(), pairs["_i"].to_numpy())),
                         shape=(len(users), len(item_ids)))


def fit_ease(history: pl.DataFrame, item_ids: Sequence[str], l2: float, max_items: int) -> ItemItemModel:
    """EASE^R on the binary user x item matrix of `history`.

    Args:
        history: interactions to learn from.
        item_ids: the catalog.
        l2: the L2 weight (lambda) on B; larger values shrink towards popularity-free smoothing.
        max_items: cover at most this many items, the most interacted (ties: catalog order).

    Raises:
        ValueError: l2 <= 0 or max_items < 1.
    """
    if l2 <= 0 or max_items < 1:
        raise ValueError(f"EASE needs l2 > 0 and max_items >= 1, got l2={l2}, max_items={max_items}")
    item_ids = tuple(item_ids)
    users = history[schema.USER_ID].unique().sort().to_list()
    matrix = user_matrix(history, users, item_ids)
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    order = np.lexsort((np.arange(counts.size), -counts))
    columns = np.sort(order[: min(max_items, int((counts > 0).sum()))]).astype(np.int64)
    sub = matrix[:, columns]
    gram = np.asarray((sub.T @ sub).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = (-inverse / np.diag(inverse)[None, :]).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    return ItemItemModel(item_ids, columns, weights)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indexes and values of each row's k highest scores, best first; ties go to the
    lower column, so the order does not depend on argpartition's. -inf marks excluded columns."""
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def _scores(model: ItemItemModel, matrix: sp.csr_matrix) -> np.ndarray:
    """float32 (n_users, len(columns)) scores of the users whose binary rows `matrix` holds."""
    return np.asarray(matrix[:, model.columns] @ model.weights, dtype=np.float32)


def ease_candidates(
    model: ItemItemModel, history: pl.DataFrame, users: Sequence[str], n: int, batch_size: int = 1024
) -> pl.DataFrame:
    """Each user's n best-scored covered items outside their history, source "ease".

    Returns:
        CANDIDATES frame, retrieval_score = EASE score, sorted by user_id, retrieval_rank (ties:
        catalog order). Users without history get none.
    """
    users = list(dict.fromkeys(users))
    matrix = user_matrix(history, users, model.item_ids)
    n = min(n, model.columns.size)
    out_users, out_items, out_scores, out_ranks = [], [], [], []
    for start in range(0, len(users) if n > 0 else 0, batch_size):
        rows = matrix[start : start + batch_size]
        scores = _scores(model, rows)
        seen = rows[:, model.columns].nonzero()
        scores[seen] = -np.inf
        scores[np.asarray(rows.sum(axis=1)).ravel() == 0] = -np.inf
        top, top_scores = top_k(scores, n)
        keep = np.isfinite(top_scores)
        out_users.append(np.repeat(np.arange(start, start + len(top)), keep.sum(axis=1)))
        out_items.append(model.columns[top[keep]])
        out_scores.append(top_scores[keep])
        out_ranks.append(np.broadcast_to(np.arange(1, n + 1, dtype=np.int32), top.shape)[keep])

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    return pl.DataFrame(
        {
            schema.USER_ID: pl.Series(users, dtype=pl.String).gather(joined(out_users, np.int64)),
            schema.ITEM_ID: pl.Series(model.item_ids, dtype=pl.String).gather(joined(out_items, np.int64)),
            schema.SOURCE: "ease",
            schema.RETRIEVAL_SCORE: joined(out_scores, np.float32),
            schema.RETRIEVAL_RANK: joined(out_ranks, np.int32),
        },
        schema=schema.CANDIDATES,
    ).sort(schema.USER_ID, schema.RETRIEVAL_RANK)


def ease_feature(
    model: ItemItemModel, history: pl.DataFrame, users: Sequence[str], user_rows: np.ndarray,
    item_rows: np.ndarray, batch_size: int = 1024,
) -> np.ndarray:
    """float32 EASE score of each (users[user_rows[r]], catalog item item_rows[r]); NaN for items
    the model does not cover."""
    matrix = user_matrix(history, users, model.item_ids)
    position = np.full(len(model.item_ids), -1, dtype=np.int64)
    position[model.columns] = np.arange(model.columns.size)
    out = np.full(user_rows.size, np.nan, dtype=np.float32)
    by_user = np.argsort(user_rows, kind="stable")
    bounds = np.searchsorted(user_rows[by_user], np.arange(0, len(users) + batch_size, batch_size))
    for b, start in enumerate(range(0, len(users), batch_size)):
        in_batch = by_user[bounds[b] : bounds[b + 1]]
        covered = in_batch[position[item_rows[in_batch]] >= 0]
        if covered.size == 0:
            continue
        scores = _scores(model, matrix[start : start + batch_size])
        out[covered] = scores[user_rows[covered] - start, position[item_rows[covered]]]
    return out
