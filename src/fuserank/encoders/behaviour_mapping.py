"""Behaviour vectors for items without interactions, predicted from their content.

The behaviour embedding (encoders/behaviour.py) gives an item with no interaction in the history
a zero row, so nothing that reads behaviour can place a new item. A ridge regression from the
items' content vectors to their behaviour vectors, fitted on the items that have both, maps
content onto the taste directions that interactions revealed (Gantner et al., "Learning
Attribute-to-Feature Mappings for Cold-Start Recommendations", ICDM 2010): a new item then sits
where the warm items with its kind of content sit. The regression sees the behaviour vectors
of one history only, so it knows nothing a cut-off may not.
"""

from __future__ import annotations

import numpy as np

from fuserank.encoders.base import Embeddings, l2_normalise


def predict_unseen(behaviour: Embeddings, content: np.ndarray, l2: float) -> Embeddings:
    """`behaviour` with each item it could not encode given its content's predicted vector.

    Args:
        behaviour: fitted behaviour embeddings (zero rows and mask False where not encoded).
        content: float32 (n_items, D) content vectors in the same item order (a zero row: no
            content, so no prediction).
        l2: the ridge penalty (> 0).

    Returns:
        Embeddings with the predicted rows L2-normalised and their mask True; the encoded rows
        unchanged. `behaviour` itself when no item has both, or none lacks behaviour.
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    has_content = np.any(content != 0, axis=1)
    train = behaviour.mask & has_content
    wanted = ~behaviour.mask & has_content
    if not train.any() or not wanted.any():
        return behaviour
    x = content[train].astype(np.float64)
    y = behaviour.vectors[train].astype(np.float64)
    weights = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y)
    vectors = behaviour.vectors.copy()
    vectors[wanted] = l2_normalise((content[wanted].astype(np.float64) @ weights).astype(np.float32))
    mask = behaviour.mask | (wanted & np.any(vectors != 0, axis=1))
    return Embeddings(behaviour.item_ids, vectors, mask)
