"""Fuse per-modality embeddings into one float32 matrix for the ANN index.

Each modality block (unit rows) is scaled by sqrt(weight) and the blocks are concatenated.
The inner product of two concatenated rows is then sum_m w_m cos_m; after the final L2
normalisation it is the weight-averaged cosine sum_m w_m cos_m / sum_m w_m whenever both
items have every modality. An item missing a modality has a zero block there, so its row is
renormalised over the modalities it does have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fuserank.encoders.base import Embeddings, l2_normalise


def fused_modalities(weights: Mapping[str, float]) -> list[str]:
    """The modalities that take part in fusion: weight > 0, sorted by name.

    The order is fixed by the names alone, so two configs listing the same weights in a
    different order give the same matrix.

    Raises:
        ValueError: on a negative or non-finite weight.
    """
    for modality, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"fusion weight of {modality!r} must be finite and >= 0, got {weight}")
    return sorted(modality for modality, weight in weights.items() if weight > 0)


def fuse(embeddings: Mapping[str, Embeddings], weights: Mapping[str, float]) -> np.ndarray:
    """Concatenate the weighted modality blocks and L2-normalise the rows.

    Args:
        embeddings: modality name -> Embeddings; all must have the same item_ids in the same
            order (use Embeddings.align first). A modality without a weight is left out.
        weights: modality name -> weight >= 0; 0 drops the modality (and may name a modality
            that has no embeddings, so one config can switch modalities off).

    Returns:
        float32 array (n, sum of d over the fused modalities), blocks in the order of
        `fused_modalities(weights)`; rows unit-norm, or zero for an item with no fused modality.

    Raises:
        ValueError: a positive weight names a modality not in `embeddings`, a weight is negative, no
            weight is positive, or the modalities' item_ids differ.
    """
    modalities = fused_modalities(weights)
    missing = [modality for modality in modalities if modality not in embeddings]
    if missing:
        raise ValueError(f"fusion weights name modalities without embeddings: {missing}; have {sorted(embeddings)}")
    if not modalities:
        raise ValueError(f"no fusion weight is positive: {dict(weights)}")
    reference = modalities[0]
    item_ids = embeddings[reference].item_ids
    for modality in modalities[1:]:
        if embeddings[modality].item_ids != item_ids:
            raise ValueError(
                f"embeddings of {modality!r} do not list the same item_ids in the same order as {reference!r}; "
                "align them first with Embeddings.align"
            )
    blocks = [
        # re-normalising is cheap and keeps the weighted-cosine identity true for any input
        l2_normalise(embeddings[modality].vectors) * np.float32(math.sqrt(weights[modality]))
        for modality in modalities
    ]
    return l2_normalise(np.concatenate(blocks, axis=1))
