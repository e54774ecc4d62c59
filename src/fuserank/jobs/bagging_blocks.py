"""The rows a data-parallel LightGBM machine holds so that it draws the local fit's bag.

LightGBM bags a row with the random stream of its block of 1,024 rows, seeded `bagging_seed` +
the block's number, one draw per row of the block every round (`bagging_rands_[i / 1024]`,
src/boosting/bagging.hpp), where i is the row's index on its own machine. A machine whose rows
start at global row s (the local fit's rows laid end to end) draws the local fit's bag only if
s is a multiple of 1,024, it is seeded `bagging_seed + s / 1024`, and each of its blocks is as
long as the local fit's (the draws of one round are the rows of the block, so a shorter block
would shift every later round's draws).

Machines are cut at query boundaries, which seldom fall on a block boundary. So a machine owning
rows [start, end) also holds the rows of its first and last block that belong to its
neighbours, with weight 0: lambdarank multiplies each row's gradient and hessian by its weight,
so those rows add exactly nothing to a histogram, while they consume the same draws as in the
local fit. The one thing they change: a borrowed row in the bag is counted at the root twice
(on its owner and here), so the root's row count, from which LightGBM's data-parallel learner
estimates its leaves' counts, is larger by at most one block's bagged rows per neighbour.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BLOCK = 1024  # LightGBM's bagging_rand_block_
_DEFAULT_BAGGING_SEED = 3  # LightGBM's default when neither bagging_seed nor seed is given


def bags(params: dict[str, Any]) -> bool:
    """Whether LightGBM bags rows with `params` (canonical names, as `ranking.ranker._params`)."""
    return float(params.get("bagging_fraction", 1.0)) < 1.0 and int(params.get("bagging_freq", 0)) > 0


def bagging_seed(params: dict[str, Any]) -> int:
    """The `bagging_seed` LightGBM uses for `params`: the given one, else the second value its
    `Random(seed).NextShort(0, 32767)` draws (`Config::Set`), else its default."""
    if "bagging_seed" in params:
        return int(params["bagging_seed"])
    if "seed" not in params:
        return _DEFAULT_BAGGING_SEED
    x = int(params["seed"]) & 0xFFFFFFFF
    drawn = []
    for _ in range(2):  # data_random_seed, then bagging_seed
        x = (214013 * x + 2531011) & 0xFFFFFFFF
        drawn.append(((x >> 16) & 0x7FFF) % 32767)
    return drawn[1]


def held_rows(start: int, end: int, n_rows: int) -> tuple[int, int]:
    """The rows [first, last) a machine owning global rows [start, end) of `n_rows` holds: its
    first and last blocks whole (the last block of all may be short, as in the local fit)."""
    return start // BLOCK * BLOCK, min(n_rows, -(-end // BLOCK) * BLOCK)


def machine_seed(params: dict[str, Any], first: int) -> dict[str, int]:
    """The bagging seed of a machine whose held rows start at global row `first` (a block start)."""
    return {"bagging_seed": bagging_seed(params) + first // BLOCK}


def query_pieces(sizes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows of each query, cut to rows [lo, hi) of a run of queries of `sizes` rows: (k,) int32,
    the first and last possibly parts of queries (they train nothing: their weight is 0)."""
    ends = np.cumsum(sizes)
    inner = ends[(ends > lo) & (ends < hi)]
    return np.diff(np.concatenate([[lo], inner, [hi]])).astype(np.int32)
