"""Behaviour embedding: item vectors from a truncated SVD of the train user-item matrix.

Only the interactions passed in are used, so the caller decides what is "train" (the split
module hands over train interactions only; anything later would leak).

The choice: X is the binary user x item matrix (an interaction is implicit feedback, ratings
are ignored, repeats count once). Each item column is scaled by count**-0.5, where count is
the item's number of distinct users. Then (X D^-1/2)^T (X D^-1/2) is the item-item cosine
matrix of co-occurrence, so without damping the leading singular vectors would mostly encode
popularity. With the truncated SVD X D^-1/2 ~ U S V^T, an item's vector is its row of
V_k S_k^(1/2), L2-normalised: the square root flattens the spectrum so that the smaller
components (the finer taste clusters) still count after normalisation; inner products of
these vectors are the cosine of co-occurrence reconstructed with a softened spectrum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from fuserank import schema
from fuserank.encoders.base import Embeddings, l2_normalise

NAME = "behaviour"

# Below this many cells a dense LAPACK SVD is cheaper than ARPACK and exact.
_DENSE_MAX_CELLS = 4_000_000
# Relative row norm below which an item has no behaviour signal in the kept components.
_NEGLIGIBLE = 1e-6


def fit_behaviour(
    interactions: pl.DataFrame,
    item_ids: Sequence[str],
    dim: int = 64,
    seed: int = 0,
    min_item_count: int = 1,
) -> Embeddings:
    """Fit item behaviour vectors on `interactions`.

    Args:
        interactions: train interactions with schema.USER_ID and schema.ITEM_ID; rows for items
            not in `item_ids` are ignored.
        item_ids: the catalog, in the row order of the result (unique).
        dim: number of SVD components k, capped at min(n_users, n_items) - 1 over the users
            and items that take part, so the result may be narrower than asked.
        seed: seeds the ARPACK start vector; the same inputs and seed give identical output.
        min_item_count: items with fewer distinct users are left out of the fit.

    Returns:
        Embeddings in the order of `item_ids`, float32 (n, k), L2-normalised; items absent
        from the interactions or below `min_item_count`, and items with no weight on any of the
        k components, get zero rows and mask False.

    Raises:
        ValueError: if fewer than 2 users or 2 items take part, or dim < 1.
    """

    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    item_ids = tuple(item_ids)
    catalog = pl.DataFrame({schema.ITEM_ID: list(item_ids)}, schema={schema.ITEM_ID: pl.String})
    catalog = catalog.with_row_index("_col")
    pairs = (
        interactions.select(schema.USER_ID, schema.ITEM_ID)
        .join(catalog, on=schema.ITEM_ID, how="inner")
        .unique(subset=[schema.USER_ID, schema.ITEM_ID])
    )
    counts = pairs.group_by("_col").len()
    kept = counts.filter(pl.col("len") >= min_item_count)
    pairs = pairs.join(kept.select("_col"), on="_col", how="semi")
    users = pairs[schema.USER_ID].unique().sort()
    n_users, n_items = len(users), len(kept)
    k = min(dim, n_users - 1, n_items - 1)
    if k < 1:
        raise ValueError(
            f"behaviour embedding needs at least 2 users and 2 items with >= {min_item_count} users; "
            f"got {n_users} users and {n_items} items"
        )

    # Columns of the fitted matrix are the kept items in catalog order, so the fit does not
    # depend on the row order of `interactions`.
    fit_cols = np.sort(kept["_col"].to_numpy())
    col_of = np.full(len(item_ids), -1, dtype=np.int64)
    col_of[fit_cols] = np.arange(n_items)
    pairs = pairs.join(users.to_frame().with_row_index("_row"), on=schema.USER_ID)
    rows = pairs["_row"].to_numpy().astype(np.int64)
    cols = col_of[pairs["_col"].to_numpy().astype(np.int64)]
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n_users, n_items))
    item_count = np.asarray(matrix.sum(axis=0)).ravel()
    matrix = matrix @ sp.diags(item_count**-0.5)

    singular, right = _truncated_svd(matrix, k, seed)
    raw = right.T * np.sqrt(singular)
    # An item orthogonal to all k components has only rounding noise left, which normalising
    # would blow up into an arbitrary direction; it counts as not encoded instead.
    norms = np.linalg.norm(raw, axis=1)
    raw[norms <= _NEGLIGIBLE * norms.max(initial=0.0)] = 0.0
    fitted = l2_normalise(raw)

    vectors = np.zeros((len(item_ids), k), dtype=np.float32)
    vectors[fit_cols] = fitted
    mask = np.zeros(len(item_ids), dtype=bool)
    mask[fit_cols] = np.any(fitted != 0, axis=1)
    return Embeddings(item_ids, vectors, mask)


def _truncated_svd(matrix: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k singular values (descending, shape (k,)) and right vectors (shape (k, n_cols)).

    Signs are fixed (largest-magnitude entry of each right vector positive), so the result
    does not depend on the solver's arbitrary sign choice.
    """
    n_rows, n_cols = matrix.shape
    if n_rows * n_cols <= _DENSE_MAX_CELLS:
        _, singular, right = np.linalg.svd(matrix.toarray(), full_matrices=False)
        singular, right = singular[:k], right[:k]
    else:
        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(n_rows, n_cols))
        _, singular, right = svds(matrix, k=k, v0=v0, solver="arpack")
        order = np.argsort(-singular, kind="stable")
        singular, right = singular[order], right[order]
    pivot = np.argmax(np.abs(right), axis=1)
    signs = np.sign(right[np.arange(len(right)), pivot])
    signs[signs == 0] = 1.0
    return singular, right * signs[:, None]


class BehaviourEncoder:
    """A fitted behaviour embedding behind the Encoder protocol.

    Args:
        embeddings: the output of `fit_behaviour`.

    Attributes:
        name: "behaviour".
        dim: width of the fitted vectors.
    """

    name = NAME

    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings
        self.dim = embeddings.dim

    @classmethod
    def fit(
        cls,
        interactions: pl.DataFrame,
        item_ids: Sequence[str],
        dim: int = 64,
        seed: int = 0,
        min_item_count: int = 1,
    ) -> BehaviourEncoder:
        """`fit_behaviour` wrapped in an encoder; same arguments."""
        return cls(fit_behaviour(interactions, item_ids, dim=dim, seed=seed, min_item_count=min_item_count))

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """The fitted rows for items[schema.ITEM_ID], in that order; unknown items get zero rows."""
        return self.embeddings.align(items[schema.ITEM_ID].to_list())
