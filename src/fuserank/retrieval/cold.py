"""Cold-item candidates: the items no interaction of the history names, found by content alone.

A cold item (a new release, or an item of the cold-item protocol, data/cutoffs.py) has a zero
behaviour vector and no EASE column, so the fused index ranks it low and the behaviour sources
never name it. This source searches only the items without an interaction in the cut-off's
history, with the user's content profile (the recency-weighted mean of their history items'
content vectors) against the items' content vectors: every content view the stage has (text,
image, audio, video, the LLM's description and hidden-state views), fused by its fusion weight;
a view the fusion config does not name (the LLM's) takes `UNNAMED_WEIGHT`. Which items are
"without an interaction" is read from the history alone, so at a ranker-label cut-off the items
that cut-off hides are found the same way: the ranker learns from cold-like positives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.encoders.base import Embeddings
from fuserank.retrieval.fusion import fuse
from fuserank.retrieval.index import build_index, search_candidates, user_queries
from fuserank.retrieval.sequence import VIEW as SEQUENCE

SOURCE = "cold"
BEHAVIOURAL = ("behaviour", SEQUENCE)  # views learned from interactions: zero for a cold item
UNNAMED_WEIGHT = 0.5  # the default fusion weight of a content view


def content_vectors(embeddings: Mapping[str, Embeddings], weights: Mapping[str, float]) -> np.ndarray | None:
    """float32 (n_items, D) fused, L2-normalised content-only item vectors (every view but the
    behavioural ones, by its fusion weight or `UNNAMED_WEIGHT`); None when no view is left.
    The embeddings must share one item order (as a fitted stage's do)."""
    chosen = {m: float(weights.get(m, UNNAMED_WEIGHT)) for m in embeddings if m not in BEHAVIOURAL}
    chosen = {m: w for m, w in chosen.items() if w > 0}
    if not chosen:
        return None
    return fuse({m: embeddings[m] for m in chosen}, chosen)


def cold_candidates(
    vectors: np.ndarray,
    item_ids: Sequence[str],
    history: pl.DataFrame,
    users: Sequence[str],
    n: int,
    query_items: int = 50,
    half_life: float = 10.0,
    batch_size: int = 1024,
) -> pl.DataFrame:
    """Per user, the `n` items without an interaction in `history` nearest to their content profile.

    Args:
        vectors: float32 (n_items, D) content-only item vectors (`content_vectors`).
        item_ids: the items of `vectors`' rows.
        history: the cut-off's history: it decides which items are cold, and the profiles.
        users: whom to retrieve for (a user without history gets nothing).
        n: candidates per user.
        query_items, half_life: the profile's newest items and recency half-life (retrieval config).
        batch_size: queries per FAISS call.

    Returns:
        schema.CANDIDATES rows, source "cold", sorted by user_id, retrieval_rank.
    """
    empty = pl.DataFrame(schema=schema.CANDIDATES)
    seen = set(history[schema.ITEM_ID].unique().to_list())
    rows = np.array([r for r, item in enumerate(item_ids) if item not in seen], dtype=np.int64)
    rows = rows[np.any(vectors[rows] != 0, axis=1)] if rows.size else rows
    if n <= 0 or rows.size == 0:
        return empty
    wanted = pl.DataFrame({schema.USER_ID: pl.Series(list(users), dtype=pl.String)}).unique()
    mine = history.join(wanted, on=schema.USER_ID, how="semi")
    user_ids, queries, _ = user_queries(mine, item_ids, vectors, query_items, half_life)
    index = build_index(vectors[rows], [item_ids[r] for r in rows], kind="flat", use_gpu="never")
    # A cold item is in nobody's history, so nothing needs excluding.
    none = [np.zeros(0, dtype=np.int64)] * len(user_ids)
    return search_candidates(index, user_ids, queries, none, n, SOURCE, batch_size)
