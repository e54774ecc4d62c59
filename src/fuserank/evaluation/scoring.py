"""Evaluation protocol pieces: baselines on the same split, stage-1 ceiling, metric summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from fuserank import schema
from fuserank.evaluation.metrics import bootstrap_ci, catalog_coverage, evaluate_rankings, paired_bootstrap_ci, summarise
from fuserank.pipeline import rank_candidates
from fuserank.retrieval.popularity import popular_candidates


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


@dataclass(frozen=True)
class Scored:
    """One system's lists scored against a cut-off's targets, a row per target user.

    Attributes:
        per_user: `metrics.evaluate_rankings` (user_id and one column per metric and k), by user;
            on a Dask cluster, left there (`distributed_frames.HeldFrame`).
        covered: k -> the distinct items in the top k of the target users' lists (for coverage).
    """

    per_user: Any
    covered: dict[int, list[str]]


def score_ranked(ranked: pl.DataFrame, targets: pl.DataFrame, ks: Sequence[int]) -> Scored:
    """Per-user metrics and covered items of `ranked` (schema.RANKED_LIST) against `targets`;
    a partition of the users at a time gives, concatenated (`concat_scored`), the whole."""
    lists = (
        ranked.filter(pl.col(schema.USER_ID).is_in(targets[schema.USER_ID].unique().implode()))
        .sort([schema.USER_ID, schema.RANK])
        .group_by(schema.USER_ID, maintain_order=True)
        .agg(pl.col(schema.ITEM_ID))[schema.ITEM_ID]
        .to_list()
    )
    covered = {k: sorted({item for items in lists for item in items[:k]}) for k in ks}
    return Scored(evaluate_rankings(ranked, targets, ks), covered)


def concat_scored(parts: Sequence[Scored]) -> Scored:
    """`Scored` of disjoint sets of users as one (per-user rows by user, in one chunk: a mean
    over several chunks adds in another order, and may differ in the last bit)."""
    covered = {k: sorted({item for p in parts for item in p.covered[k]}) for k in parts[0].covered}
    per_user = pl.concat([p.per_user for p in parts]).sort(schema.USER_ID, maintain_order=True).rechunk()
    return Scored(per_user, covered)


def summary_of(scored: Scored, n_items: int, prefix: str) -> dict[str, float]:
    """Means over users of every metric (keys like "test_ndcg_at_10") and catalog coverage@k."""
    summary = summarise(scored.per_user, prefix=prefix)
    for k, items in scored.covered.items():
        summary[f"{prefix}coverage_at_{k}"] = catalog_coverage([items], n_items, len(items))
    return summary


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
    scored = score_ranked(ranked, targets, ks)
    return scored.per_user, summary_of(scored, n_items, prefix)


def stage_one_counts(candidates: pl.DataFrame, targets: pl.DataFrame, n: int) -> pl.DataFrame:
    """Per user, what stage 1 offered: one row per user with candidates.

    Args:
        candidates: schema.CANDIDATES rows in stage-1 order.
        targets: user_id, item_id of the held-out interactions (repeats count as in
            `candidate_recall`).
        n: the stage-1 depth of `found_first_n`.

    Returns:
        user_id, candidates (rows), found (target rows among the candidates), found_first_n
        (among each user's first `n`), all UInt32; sorted by user_id.
    """
    first = (pl.int_range(pl.len()).over(schema.USER_ID) < n).alias("_first")
    pairs = (candidates.select(schema.USER_ID, schema.ITEM_ID, first)
             .unique([schema.USER_ID, schema.ITEM_ID], keep="first", maintain_order=True))
    found = (targets.select(schema.USER_ID, schema.ITEM_ID).join(pairs, on=[schema.USER_ID, schema.ITEM_ID])
             .group_by(schema.USER_ID).agg(pl.len().alias("found"), pl.col("_first").sum().alias("found_first_n")))
    offered = candidates.group_by(schema.USER_ID).agg(pl.len().alias("candidates"))
    return (offered.join(found, on=schema.USER_ID, how="left")
            .with_columns(pl.col("candidates", "found", "found_first_n").fill_null(0).cast(pl.UInt32))
            .sort(schema.USER_ID))


def found_share(counts: pl.DataFrame, targets: pl.DataFrame) -> float:
    """`retrieval.index.candidate_recall` from `stage_one_counts`: target rows found / target
    rows of `targets` (whose users may be a subset of the counts'); NaN without targets."""
    if targets.height == 0:
        return float("nan")
    users = targets[schema.USER_ID].unique().implode()
    return int(counts.filter(pl.col(schema.USER_ID).is_in(users))["found"].sum()) / targets.height


def stage_one_recall(counts: pl.DataFrame, targets: pl.DataFrame, n: int, prefix: str) -> dict[str, float]:
    """The ceiling of stage 2, from `stage_one_counts(candidates, targets, n)`.

    Returns the share of targets among all candidates (`stage1_recall`, what the ranker can reach),
    among the first `n` in stage-1 order (`stage1_recall_at_<n>`), and the mean candidates per user.
    """
    offered = counts.filter(pl.col("candidates") > 0)["candidates"]
    first_n = counts.select(schema.USER_ID, pl.col("found_first_n").alias("found"))
    return {
        f"{prefix}stage1_recall": found_share(counts, targets),
        f"{prefix}stage1_recall_at_{n}": found_share(first_n, targets),
        f"{prefix}stage1_candidates_per_user": float(offered.mean() or 0.0),
    }


@dataclass(frozen=True)
class CutoffScores:
    """What evaluation reads of one cut-off's scored candidates, a few rows per user.

    Attributes:
        ranked: the ranker's top `keep` per user (schema.RANKED_LIST, by user then rank); None
            when none are kept; on a Dask cluster, left there (`distributed_frames.HeldFrame`).
        ranker: the ranker's lists scored (`score_ranked`).
        retrieval: the stage-1 lists (`stage_one_rankings`) scored.
        stage1: `stage_one_counts` of the candidates.
    """

    ranked: Any
    ranker: Scored
    retrieval: Scored
    stage1: pl.DataFrame


def cutoff_scores(frame: pl.DataFrame, targets: pl.DataFrame, ranker: Any, ks: Sequence[int], n: int,
                  keep: int, new_item_slots: Sequence[int] = ()) -> CutoffScores:
    """Score a cut-off's labelled candidates with `ranker` (a `ranking.ranker.Ranker`): its lists
    (with `new_item_slots`, config slots.new_items) and the stage-1 lists at depth max(ks) scored
    against `targets`, the stage-1 counts at depth `n`, and the ranker's top `keep` per user (0:
    none)."""
    depth = max(max(ks), keep)
    candidates = frame.select(list(schema.CANDIDATES))
    ranked = rank_candidates(frame, ranker.score(frame), depth, new_item_slots)
    return CutoffScores(ranked.filter(pl.col(schema.RANK) <= keep) if keep else None,
                        score_ranked(ranked, targets, ks), score_ranked(stage_one_rankings(candidates, depth), targets, ks),
                        stage_one_counts(candidates, targets, n))


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
