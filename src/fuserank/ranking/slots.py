"""Positions of a ranked list kept for new items (config `slots.new_items`).

A ranker that maximises NDCG@10 over all users rightly puts an item nobody has interacted with
below the tenth warm one: such an item is the answer far less often (docs/benchmarks.md, cold
start). A catalog that must show its new items reserves places for them instead, as a policy
with a measured price: the user's best-scored new candidates take the reserved positions, in
score order, and every other candidate fills the remaining positions in score order. A user with
fewer new candidates than reserved positions gets the first ones filled and no gap.

"New" means new to the model: no interaction in the history stage 1 was fitted on (the
cut-off's history; at serving, every known interaction), so no behaviour signal can score it, as
for a release after the model was trained. `new_items` finds them once, when stage 1 is fitted
(`StageOne.new_items`), and `mark_new_items` flags them in every candidate frame
(pipeline.stage_frame). The flag is not a count as of each query's reference time: under
leave-last-out an item whose interactions all come after a user's reference time is known to
the model, and it would take the slots from the items nothing has been learned about.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from fuserank import schema

NEW_ITEM = "new_item"


def new_items(item_ids: Sequence[str], history: pl.DataFrame) -> tuple[str, ...]:
    """The items of `item_ids` that no interaction of `history` names, in catalog order."""
    known = history[schema.ITEM_ID].unique().implode()
    catalog = pl.Series(schema.ITEM_ID, list(item_ids), dtype=pl.String)
    return tuple(catalog.filter(~catalog.is_in(known)).to_list())


def mark_new_items(frame: pl.DataFrame, items: Sequence[str]) -> pl.DataFrame:
    """`frame` with the bool column NEW_ITEM: its item is one of `items` (`new_items`)."""
    new = pl.Series(list(items), dtype=pl.String).implode()
    return frame.with_columns(pl.col(schema.ITEM_ID).is_in(new).alias(NEW_ITEM))


def slotted_ranks(rows: pl.DataFrame, positions: Sequence[int], user: str, order: str) -> pl.Series:
    """The 1-based rank of every row under the reserved `positions`.

    Args:
        rows: one row per candidate with the columns `user` (any sortable key), `order` (the
            row's rank within its user without slots, 1 = best) and NEW_ITEM.
        positions: reserved 1-based positions (any order; repeats count once).
        user, order: the names of those columns.

    Returns:
        Int32 ranks aligned with `rows`, a permutation of 1..n within each user.
    """
    reserved = sorted({int(p) for p in positions})
    if not reserved:
        return rows[order].cast(pl.Int32)
    new = pl.col(NEW_ITEM)
    within = (
        rows.select(user, order, new.alias("_new"))
        .with_row_index("_row")
        .sort(user, order)
        .with_columns(pl.int_range(pl.len()).over(user, "_new").alias("_nth"))  # 0-based, within kind
        .with_columns((pl.col("_new") & (pl.col("_nth") < len(reserved))).alias("_slotted"))
        .with_columns(pl.col("_slotted").sum().over(user).alias("_used"))
    )
    # A slotted row takes the next reserved position; any other row is the i-th of the rest and
    # takes the i-th position the user's used reserved positions leave free.
    rest = (pl.int_range(pl.len()).over(user, "_slotted") + 1).cast(pl.Int64)
    for j, position in enumerate(reserved):
        rest = rest + ((pl.col("_used") > j) & (rest >= position)).cast(pl.Int64)
    slotted = pl.lit(pl.Series(reserved, dtype=pl.Int64)).gather(pl.col("_nth").clip(upper_bound=len(reserved) - 1))
    ranks = (within.with_columns(pl.when(pl.col("_slotted")).then(slotted).otherwise(rest).alias("_rank"))
             # a user with fewer candidates than a reserved position: close the gap, order kept
             .with_columns(pl.col("_rank").rank("ordinal").over(user).alias("_rank")))
    return ranks.sort("_row")["_rank"].cast(pl.Int32)
