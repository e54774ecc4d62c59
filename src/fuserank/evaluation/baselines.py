"""Baselines beside most-popular (evaluation/scoring.py) that can recommend a cold item.

- content kNN: the user's text profile (the recency-weighted mean of the text vectors of their
  newest history items, as stage 1 builds every profile) against every item's text vector; it
  needs no interaction with the item, so it is the natural cold-start baseline.
- random: a seeded uniform draw of unseen items; the floor any slice is read against.

Both rank over every item the user has not interacted with in the cut-off's history.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.encoders.base import Embeddings
from fuserank.retrieval.index import build_index, retrieve, seen_rows


def content_knn_rankings(history: pl.DataFrame, users: Sequence[str], text: Embeddings, k: int,
                         query_items: int = 50, half_life: float = 10.0) -> pl.DataFrame:
    """Top-`k` unseen items per user by the cosine of their text profile with each item's text.

    Args:
        history: the cut-off's history (profiles and the seen items).
        users: whom to rank for; a user without a text-encoded history item gets no list.
        text: text Embeddings of the catalog (an item without text has a zero row: never ranked
            above one with text, and never found when nothing else is left).
        k: list length.
        query_items, half_life: the profile's newest items and recency half-life.

    Returns:
        schema.RANKED_LIST rows (score = cosine).
    """
    index = build_index(text.vectors, text.item_ids, kind="flat", use_gpu="never")
    found = retrieve(index, history, text.vectors, k, query_items=query_items, half_life=half_life, users=users)
    return found.select(
        schema.USER_ID,
        schema.ITEM_ID,
        pl.col(schema.RETRIEVAL_RANK).cast(pl.Int32).alias(schema.RANK),
        pl.col(schema.RETRIEVAL_SCORE).cast(pl.Float32).alias(schema.SCORE),
    )


def random_rankings(history: pl.DataFrame, users: Sequence[str], item_ids: Sequence[str], k: int, seed: int,
                    batch_size: int = 1024, start: int = 0) -> pl.DataFrame:
    """`k` unseen items per user drawn uniformly without replacement (`np.random.default_rng(seed)`,
    users in sorted order, so the same seed gives the same lists).

    Args:
        start: where `users` begin in the sorted order of every user drawn for: the stream is
            advanced past the earlier users' draws (one per item each), so the lists of
            consecutive runs of a sorted user list, each with its own start, are the lists of
            the whole list.

    Returns:
        schema.RANKED_LIST rows (score = the uniform draw).
    """
    users = sorted(set(users))
    seen = seen_rows(history, users, item_ids)
    rng = np.random.default_rng(seed)
    n_items = len(item_ids)
    rng.bit_generator.advance(start * n_items)  # a float64 draw takes one step of PCG64
    keep = min(k, n_items)
    ids = np.asarray(item_ids, dtype=object)
    frames = []
    for first in range(0, len(users), batch_size):
        batch = users[first:first + batch_size]
        draws = rng.random((len(batch), n_items))
        for row, user in enumerate(batch):
            draws[row, seen[first + row]] = -1.0
        top = np.argsort(-draws, axis=1, kind="stable")[:, :keep]
        scores = np.take_along_axis(draws, top, axis=1)
        valid = scores >= 0
        r, c = np.nonzero(valid)
        frames.append(pl.DataFrame({
            schema.USER_ID: pl.Series([batch[i] for i in r], dtype=pl.String),
            schema.ITEM_ID: pl.Series(ids[top[r, c]].tolist(), dtype=pl.String),
            schema.RANK: pl.Series(c + 1, dtype=pl.Int32),
            schema.SCORE: pl.Series(scores[r, c], dtype=pl.Float32),
        }))
    if not frames:
        return pl.DataFrame(schema=schema.RANKED_LIST)
    return pl.concat(frames).select(list(schema.RANKED_LIST))
