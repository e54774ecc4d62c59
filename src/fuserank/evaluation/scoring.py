"""Evaluation protocol pieces: baselines on the same split, stage-1 ceiling, metric summaries."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from fuserank import schema
from fuserank.evaluation.metrics import bootstrap_ci, catalog_coverage, evaluate_rankings, paired_bootstrap_ci, summarise
from fuserank.retrieval.popularity import popular_candidates
from fuserank.retrieval.index import candidate_recall


def most_popular_rankings(history: pl.DataFrame, users: Sequence[str], k: int) -> pl.DataFrame:
    """The baseline every recommender must beat: the k most interacted items in `history` that
    the user has not interacted with. Returns schema.RANKED_LIST (score = interaction count)."""
    top = popular_candidates(history, users, k)
    return top.select(
        schema.USER_ID,
        schema.ITEM_ID,
        pl.col(schema.RETRIEVAL_RANK).cast(pl.Int32).alias(schema.RANK),
        pl.col(schema.RETRIEVAL_SCORE).cast(pl.Float32).alias(schema.SCORE),
    )


def stage_one_rankings(candidates: pl.DataFrame, k: int) -> pl.DataFrame:
    """The retrieval-only baseline: candidates in stage-1 order (as merged), cut at k.

    Score is the negated stage-1 position, since retrieval scores of different sources are not
    comparable.
    """
    position = (pl.int_range(pl.len()).over(schema.USER_ID) + 1).cast(pl.Int32)
    return (
        candidates.select(schema.USER_ID, schema.ITEM_ID)
        .with_columns(position.alias(schema.RANK))
        .filter(pl.col(schema.RANK) <= k)
        .with_columns((-pl.col(schema.RANK)).cast(pl.Float32).alias(schema.SCORE))
        .select(list(schema.RANKED_LIST))
    )


def score_lists(
    ranked: pl.DataFrame, targets: pl.DataFrame, ks: Sequence[int], n_items: int, prefix: str
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Per-user metrics and their means (keys like "test_ndcg_at_10"), plus catalog coverage@k.

    Args:
        ranked: schema.RANKED_LIST rows.
        targets: user_id, item_id of the held-out interactions.
        ks: cut-offs.
        n_items: catalog size, for coverage.
        prefix: start of every metric name, e.g. "test_" or "test_popular_".
    """
    per_user = evaluate_rankings(ranked, targets, ks)
    summary = summarise(per_user, prefix=prefix)
    lists = (
        ranked.filter(pl.col(schema.USER_ID).is_in(targets[schema.USER_ID].unique().to_list()))
        .sort([schema.USER_ID, schema.RANK])
        .group_by(schema.USER_ID, maintain_order=True)
        .agg(pl.col(schema.ITEM_ID))[schema.ITEM_ID]
        .to_list()
    )
    for k in ks:
        summary[f"{prefix}coverage_at_{k}"] = catalog_coverage(lists, n_items, k)
    return per_user, summary


def stage_one_recall(candidates: pl.DataFrame, targets: pl.DataFrame, n: int, prefix: str) -> dict[str, float]:
    """The ceiling of stage 2.

    Returns the share of targets among all candidates (`stage1_recall`, what the ranker can reach),
    among the first `n` in stage-1 order (`stage1_recall_at_<n>`), and the mean candidates per user.
    """
    first_n = candidates.filter(pl.int_range(pl.len()).over(schema.USER_ID) < n)
    per_user = candidates.group_by(schema.USER_ID).len()
    return {
        f"{prefix}stage1_recall": candidate_recall(candidates, targets),
        f"{prefix}stage1_recall_at_{n}": candidate_recall(first_n, targets),
        f"{prefix}stage1_candidates_per_user": float(per_user["len"].mean() or 0.0),
    }


def confidence_intervals(
    per_user: pl.DataFrame, system: str, metric: str, prefix: str, seed: int, n_boot: int = 1000
) -> dict[str, float]:
    """Bootstrap 95% CIs over users: of `system`'s mean `metric`, and of its paired gain over
    every other system in `per_user` (rows: system, user_id, metric columns).

    Keys: `<prefix><metric>_ci_low/high` and `<prefix><metric>_gain_vs_<other>_ci_low/high`.
    """
    wide = per_user.pivot(on="system", index=schema.USER_ID, values=metric).sort(schema.USER_ID)
    ours = wide[system].to_numpy()
    low, high = bootstrap_ci(ours, n_boot=n_boot, seed=seed)
    out = {f"{prefix}{metric}_ci_low": low, f"{prefix}{metric}_ci_high": high}
    for other in wide.columns:
        if other in (schema.USER_ID, system):
            continue
        low, high = paired_bootstrap_ci(ours, wide[other].to_numpy(), n_boot=n_boot, seed=seed)
        out[f"{prefix}{metric}_gain_vs_{other}_ci_low"] = low
        out[f"{prefix}{metric}_gain_vs_{other}_ci_high"] = high
    return out
