"""Where zero-interaction candidates land in the ranker's lists, per cut-off (issue 17).

Under the cold-item protocol a test target on a cold item has no interaction in the history, and
the ranker learns to place such items from the label cut-offs' hidden items. This compares, per
cut-off, how often a zero-interaction ("unseen") candidate is the answer with how often a seen one
is, and where the ranker puts them: the numbers that say whether the ranker's training data look
like its test data, and whether an unseen item belongs in a top 10 at all.

Pure: frames in, dicts out. pipelines/diagnose_cold.py runs the protocol and writes the report.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import polars as pl

from fuserank import schema

TOP = 10


def unseen_candidate_report(frame: pl.DataFrame, scores: np.ndarray, history: pl.DataFrame,
                            cold_items: Collection[str] = ()) -> dict[str, float]:
    """Seen and unseen candidates of one cut-off, and where the ranker put them.

    Args:
        frame: one cut-off's labelled candidates (user_id, item_id, label), one query per user.
        scores: float (n,) the ranker's score of each row of `frame`.
        history: that cut-off's history; an item with no interaction in it is "unseen".
        cold_items: the protocol's cold items (`Cutoffs.cold_items`), counted among the candidates.

    Returns:
        candidates, users, unseen_share (of candidates), cold_items_offered (candidates naming a
        cold item), positives and unseen_positives, seen_positive_rate and unseen_positive_rate
        (positives per candidate), unseen_in_top10 (unseen candidates in the users' top 10s),
        unseen_positives_in_top10, unseen_positive_median_rank (rank by score among all the user's
        candidates), best_unseen_is_target (users whose best-scored unseen candidate is their
        target) and tenth_seen_is_target (users whose 10th best-scored seen candidate is).
    """
    seen = history[schema.ITEM_ID].unique().implode()
    item = pl.col(schema.ITEM_ID)
    ranked = (
        frame.select(schema.USER_ID, schema.ITEM_ID, schema.LABEL)
        .with_columns(pl.Series("_score", np.asarray(scores, dtype=np.float64)), (~item.is_in(seen)).alias("_unseen"))
        .with_columns(
            pl.col("_score").rank("ordinal", descending=True).over(schema.USER_ID).alias("_rank"),
            pl.col("_score").rank("ordinal", descending=True).over(schema.USER_ID, "_unseen").alias("_rank_in_kind"),
        )
    )
    positive, unseen = pl.col(schema.LABEL) > 0, pl.col("_unseen")
    top = pl.col("_rank") <= TOP

    def count(condition: pl.Expr) -> float:
        return float(ranked.filter(condition).height)

    n_unseen, n_seen = count(unseen), count(~unseen)
    unseen_positives = ranked.filter(positive & unseen)
    return {
        "candidates": float(ranked.height),
        "users": float(ranked[schema.USER_ID].n_unique()),
        "unseen_share": n_unseen / max(ranked.height, 1),
        "cold_items_offered": count(item.is_in(list(cold_items))),
        "positives": count(positive),
        "unseen_positives": float(unseen_positives.height),
        "seen_positive_rate": count(positive & ~unseen) / max(n_seen, 1),
        "unseen_positive_rate": unseen_positives.height / max(n_unseen, 1),
        "unseen_in_top10": count(unseen & top),
        "unseen_positives_in_top10": count(positive & unseen & top),
        "unseen_positive_median_rank": float(unseen_positives["_rank"].median() or float("nan")),
        "best_unseen_is_target": count(positive & unseen & (pl.col("_rank_in_kind") == 1)),
        "tenth_seen_is_target": count(positive & ~unseen & (pl.col("_rank_in_kind") == TOP)),
    }
