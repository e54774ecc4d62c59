"""A seeded synthetic catalog with a planted answer: users have a favourite genre.

Item text names the genre only part of the time, and item popularity is skewed, so a model that
learns the users' tastes beats most-popular by a margin that a test can check. The output is the
same items/interactions contract a user supplies (schema.ITEMS, schema.INTERACTIONS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from fuserank import atomic, schema

GENRES = ("comedy", "drama", "horror", "western")
GENRE = "genre"


def generate_catalog(
    n_items: int = 200,
    n_users: int = 150,
    seed: int = 0,
    interactions_per_user: tuple[int, int] = (8, 30),
    taste_strength: float = 0.85,
    text_informative: float = 0.7,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate items and timestamped interactions.

    Args:
        n_items, n_users: catalog and user-base size.
        seed: the only source of randomness; the same seed gives identical frames.
        interactions_per_user: inclusive range of each user's number of interactions.
        taste_strength: probability that an interaction is drawn from the user's favourite genre.
        text_informative: probability that an item's text names its true genre (else a random one).

    Returns:
        (items, interactions): items with item_id, text and the true `genre`; interactions with
        user_id, item_id, timestamp (seconds, increasing per user) and rating (1-5).
    """
    rng = np.random.default_rng(seed)
    genre = rng.integers(len(GENRES), size=n_items)
    shown = np.where(rng.random(n_items) < text_informative, genre, rng.integers(len(GENRES), size=n_items))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    item_ids = [f"i{i:05d}" for i in range(n_items)]
    items = pl.DataFrame(
        {
            schema.ITEM_ID: item_ids,
            schema.TEXT: [f"a {GENRES[g]} story number {i}" for i, g in enumerate(shown)],
            GENRE: [GENRES[g] for g in genre],
        }
    )

    users, chosen, times, ratings = [], [], [], []
    low, high = interactions_per_user
    for u in range(n_users):
        favourite = rng.integers(len(GENRES))
        count = min(int(rng.integers(low, high + 1)), n_items)
        in_taste = np.where(genre == favourite, taste_strength / max((genre == favourite).sum(), 1), 0.0)
        elsewhere = (1 - taste_strength) / n_items
        weights = popularity * (in_taste + elsewhere)
        picks = rng.choice(n_items, size=count, replace=False, p=weights / weights.sum())
        start = int(rng.integers(0, 30 * 86_400))
        steps = np.cumsum(rng.integers(600, 3 * 86_400, size=count))
        users += [f"u{u:05d}"] * count
        chosen += [item_ids[i] for i in picks]
        times += (start + steps).tolist()
        ratings += np.where(genre[picks] == favourite, rng.integers(3, 6, size=count), rng.integers(1, 4, size=count)).tolist()
    interactions = pl.DataFrame(
        {schema.USER_ID: users, schema.ITEM_ID: chosen, schema.TIMESTAMP: times, schema.RATING: ratings},
        schema=schema.INTERACTIONS,
    )
    return items, interactions


def write_catalog(folder: Path, items: pl.DataFrame, interactions: pl.DataFrame) -> tuple[Path, Path]:
    """Write items.parquet and interactions.parquet into `folder`; returns their paths."""
    folder = Path(folder)
    return (
        atomic.write_parquet(folder / "items.parquet", items),
        atomic.write_parquet(folder / "interactions.parquet", interactions),
    )
