"""The encoder seam: the `Embeddings` every encoder returns and the small `Encoder` protocol.

Every modality (text, image, audio, video, behaviour, LLM) produces the same artifact: one
L2-normalised float32 row per item, in the order the items were given, plus a mask saying
which items could actually be encoded. Items that could not be encoded keep an all-zero row,
so inner products with them are 0 and fusion can skip them without special cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl


@dataclass(frozen=True)
class Embeddings:
    """Per-item vectors of one modality.

    Attributes:
        item_ids: the n item ids, unique, in row order.
        vectors: float32 array of shape (n, d); rows L2-normalised (unit norm), except rows of
            items that could not be encoded, which are all zero.
        mask: bool array of shape (n,); True where the item was encoded.

    Raises:
        ValueError: on a wrong dtype or shape, duplicate item ids, or a non-zero row whose
            mask is False.
    """

    item_ids: tuple[str, ...]
    vectors: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.item_ids, tuple):
            object.__setattr__(self, "item_ids", tuple(self.item_ids))
        n = len(self.item_ids)
        if not isinstance(self.vectors, np.ndarray) or self.vectors.dtype != np.float32:
            got = getattr(self.vectors, "dtype", type(self.vectors))
            raise ValueError(f"vectors must be a float32 numpy array, got {got}")
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise ValueError(f"vectors must have shape ({n}, d), got {self.vectors.shape}")
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != np.bool_:
            got = getattr(self.mask, "dtype", type(self.mask))
            raise ValueError(f"mask must be a bool numpy array, got {got}")
        if self.mask.shape != (n,):
            raise ValueError(f"mask must have shape ({n},), got {self.mask.shape}")
        if len(set(self.item_ids)) != n:
            raise ValueError("item_ids must be unique")
        if np.any(self.vectors[~self.mask]):
            raise ValueError("rows whose mask is False must be all zero")

    @property
    def dim(self) -> int:
        """Number of columns d."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def align(self, item_ids: Sequence[str]) -> Embeddings:
        """The rows for `item_ids`, in that order.

        Args:
            item_ids: the wanted ids (unique); ids not in this object get a zero row and mask False.

        Returns:
            New Embeddings with `item_ids` as given and shape (len(item_ids), d).
        """
        item_ids = tuple(item_ids)
        if item_ids == self.item_ids:
            return self
        position = {item_id: row for row, item_id in enumerate(self.item_ids)}
        rows = np.fromiter((position.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        known = rows >= 0
        vectors = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        vectors[known] = self.vectors[rows[known]]
        mask = np.zeros(len(item_ids), dtype=bool)
        mask[known] = self.mask[rows[known]]
        return Embeddings(item_ids, vectors, mask)


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns an items frame into Embeddings.

    Attributes:
        name: the modality, e.g. "text"; used as the key in fusion weights and feature names.
        dim: number of columns d of the vectors it returns.
    """

    name: str
    dim: int

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """Encode `items` (columns schema.ITEM_ID and the encoder's modality column).

        Returns:
            Embeddings whose item_ids equal items[schema.ITEM_ID] in order, shape (n, dim).
        """
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Scale every row of `x` to unit L2 norm; all-zero rows stay zero.

    Args:
        x: array of shape (n, d), any float dtype.

    Returns:
        A new float32 array of shape (n, d).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array, got shape {x.shape}")
    # float64 norms so that tiny or huge rows do not under/overflow in the square.
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))[:, None]
    out = np.zeros_like(x)
    np.divide(x, norms, out=out, where=norms > 0)
    return out


def centre(embeddings: Embeddings, fit: np.ndarray) -> Embeddings:
    """Subtract the mean vector of the encoded rows selected by `fit`, then re-normalise.

    Many encoders put every item in one narrow cone (a colour histogram is never negative), so
    raw cosines all sit near one value; centring on the training catalog's mean spreads them out.

    Args:
        embeddings: the modality to centre.
        fit: bool (n,), the rows whose mean is subtracted (training items only).

    Returns:
        Embeddings with the same ids; rows that were not encoded stay zero.
    """
    rows = np.asarray(fit, dtype=bool) & embeddings.mask
    if not rows.any():
        return embeddings
    mean = embeddings.vectors[rows].mean(axis=0)
    vectors = np.where(embeddings.mask[:, None], embeddings.vectors - mean, 0.0).astype(np.float32)
    vectors = l2_normalise(vectors)
    mask = embeddings.mask & np.any(vectors != 0, axis=1)
    return Embeddings(embeddings.item_ids, vectors, mask)
