"""The primary evaluation protocol: temporal leave-last-out, ranker labels from train only.

Label scheme (also in the README):
- split: per user, the last interaction is the test target, the second-to-last the validation
  target, the rest is train (users with fewer than `min_interactions` stay in train only).
- ranker training: `label_cutoffs` cut-offs step back through each user's train interactions. At
  cut-off j the user's j-th last `label_window` train interactions (or `label_share` of them) are
  the positives and stage 1 (behaviour embedding, index, popularity, features) is fitted on the
  train interactions before them; every other candidate is a negative. Each (user, cut-off) is
  one lambdarank query.
- early stopping: validation targets, with stage 1 fitted on the whole train part.
- test: stage 1 fitted on train + validation; the ranker scores the candidates of each test user.
No test interaction reaches candidates, features, embeddings, statistics or early stopping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from fuserank import schema
from fuserank.config import RunConfig
from fuserank.data.split import Split, holdout_labels, leave_last_out
from fuserank.encoders.base import Embeddings
from fuserank.evaluate import (
    confidence_intervals,
    most_popular_rankings,
    score_lists,
    stage_one_rankings,
    stage_one_recall,
)
from fuserank.progress import step
from fuserank.ranking import Ranker, fit_ranker
from fuserank.two_stage import candidate_features, fit_stage_one, label_candidates, rank_candidates

if TYPE_CHECKING:
    from fuserank.llm_features import LLMSignals

QUERY = "query"


@dataclass(frozen=True)
class ProtocolResult:
    """What one train-and-evaluate produces.

    Attributes:
        metrics: flat name -> value (test_*, valid_*, counts).
        per_user: one row per (system, user) with the test metrics of that user.
        ranked: top-k test lists of the ranker (schema.RANKED_LIST).
        ranker: the fitted LightGBM ranker.
        feature_names: ordered feature list the ranker was trained on.
    """

    metrics: dict[str, float]
    per_user: pl.DataFrame
    ranked: pl.DataFrame
    ranker: Ranker
    feature_names: list[str]


def _cutoff_frame(config: RunConfig, stage_name: str, history: pl.DataFrame, targets: pl.DataFrame,
                  item_ids: Sequence[str], content: Mapping[str, Embeddings], llm: LLMSignals | None = None
                  ) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    """Fit stage 1 on `history`, build labelled features for the target users.

    Returns (features with labels, feature names, stage-1 candidates in stage-1 order).
    """
    users = targets[schema.USER_ID].unique().sort().to_list()
    with step(f"stage 1 [{stage_name}]") as s:
        stage = fit_stage_one(history, item_ids, content, config.behaviour, config.fusion, config.retrieval,
                              config.seed)
        llm = llm if config.llm.enabled else None
        if config.dask.enabled:
            from distributed import default_client

            from fuserank.distributed import candidate_features_dask

            frame, names = candidate_features_dask(default_client(), stage, history, users, config.retrieval,
                                                   config.features, llm=llm, n_partitions=config.dask.user_partitions)
        else:
            frame, names = candidate_features(stage, history, users, config.retrieval, config.features, llm=llm)
        frame = label_candidates(frame, targets)
        s.done(f"{len(users):,} users, {frame.height:,} candidates x {len(names)} features")
    candidates = frame.select(list(schema.CANDIDATES))
    return frame, names, candidates


def ranker_training_frame(
    train: pl.DataFrame, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Labelled candidates from successive cut-offs of the train part, with a QUERY column."""
    history, frames, names = train, [], []
    for cutoff in range(1, config.split.label_cutoffs + 1):
        history, targets = holdout_labels(history, config.split.label_window, config.split.label_share)
        if targets.is_empty():
            break
        frame, names, _ = _cutoff_frame(config, f"ranker labels {cutoff}", history, targets, item_ids, content, llm)
        query = pl.concat_str(pl.col(schema.USER_ID), pl.lit(f"#{cutoff}"))
        frames.append(frame.with_columns(query.alias(QUERY)))
    if not frames:
        raise ValueError("no user has enough train interactions to give the ranker a label")
    return pl.concat(frames), names


@dataclass(frozen=True)
class ValidationFrames:
    """What tuning needs: ranker training rows and validation candidates, never a test frame.

    Attributes:
        fit: labelled candidates of the train cut-offs, with a QUERY column.
        valid: labelled candidates of the validation users (stage 1 fitted on train).
        names: ordered feature names (after `features.disabled_groups`).
        valid_candidates: the validation candidates in stage-1 order (schema.CANDIDATES).
    """

    fit: pl.DataFrame
    valid: pl.DataFrame
    names: list[str]
    valid_candidates: pl.DataFrame


def validation_frames(
    split: Split, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> ValidationFrames:
    """Build the ranker-training and validation frames from `split.train` only (test unseen)."""
    fit, names = ranker_training_frame(split.train, item_ids, content, config, llm)
    valid, _, valid_candidates = _cutoff_frame(config, "validation", split.train, split.valid, item_ids, content, llm)
    return ValidationFrames(fit, valid, names, valid_candidates)


def validation_metrics(
    frames: ValidationFrames, valid_targets: pl.DataFrame, ranker: Ranker, ks: Sequence[int], n_items: int,
    n_candidates: int,
) -> dict[str, float]:
    """valid_* metrics (full ranking, as in run_protocol) of `ranker` on the validation users."""
    ranked = rank_candidates(frames.valid, ranker.score(frames.valid), max(ks))
    _, metrics = score_lists(ranked, valid_targets, ks, n_items, "valid_")
    metrics.update(stage_one_recall(frames.valid_candidates, valid_targets, n_candidates, "valid_"))
    return metrics


def make_split(interactions: pl.DataFrame, config: RunConfig) -> Split:
    """The leave-last-out split of the run's interactions."""
    return leave_last_out(interactions, min_interactions=config.split.min_interactions)


def run_protocol(
    split: Split, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> ProtocolResult:
    """`_run_protocol` locally, or with features and ranker on Dask when `config.dask.enabled`."""
    if not config.dask.enabled:
        return _run_protocol(split, item_ids, content, config, llm)
    from fuserank.distributed import dask_client

    with dask_client(config.dask):
        return _run_protocol(split, item_ids, content, config, llm)


def _run_protocol(
    split: Split, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> ProtocolResult:
    """Train on train, stop early on validation, evaluate once on test; baselines on the same split.

    Args:
        split: the leave-last-out split (see make_split).
        item_ids: every catalog item, in the row order of the content embeddings.
        content: content embeddings of the catalog, e.g. {"text": ..., "image": ...} (may be empty
            when behaviour is enabled).
        config: the run configuration (only its stage sections are handed further down).
        llm: LLM signals (llm_features.prepare_llm); used only while `config.llm.enabled`.
    """
    n_items = len(item_ids)
    ks = config.eval.ks

    fit_frame, names = ranker_training_frame(split.train, item_ids, content, config, llm)
    valid_frame, _, valid_candidates = _cutoff_frame(config, "validation", split.train, split.valid, item_ids, content,
                                                     llm)
    test_history = pl.concat([split.train, split.valid])
    test_frame, _, test_candidates = _cutoff_frame(config, "test", test_history, split.test, item_ids, content, llm)

    with step("train ranker") as s:
        if config.dask.enabled:
            from distributed import default_client

            from fuserank.distributed import fit_ranker_dask

            ranker = fit_ranker_dask(default_client(), fit_frame, valid_frame, names, config.ranker, config.seed,
                                     group=QUERY)
        else:
            ranker = fit_ranker(fit_frame, valid_frame, names, config.ranker, seed=config.seed, group=QUERY)
        s.done(f"{ranker.best_iteration} trees on {fit_frame.height:,} rows")

    metrics: dict[str, float] = {
        "n_items": float(n_items),
        "n_interactions": float(test_history.height + split.test.height),
        "n_users": float(split.train[schema.USER_ID].n_unique()),
        "n_test_users": float(split.test[schema.USER_ID].n_unique()),
        "n_train_interactions": float(split.train.height),
        "ranker_train_rows": float(fit_frame.height),
        "ranker_train_queries_with_positive": float(fit_frame.filter(pl.col(schema.LABEL) > 0)[QUERY].n_unique()),
        "ranker_best_iteration": float(ranker.best_iteration),
    }
    with step("evaluate") as s:
        top_k = max(max(ks), config.eval.top_k)
        valid_ranked = rank_candidates(valid_frame, ranker.score(valid_frame), top_k)
        _, valid_summary = score_lists(valid_ranked, split.valid, ks, n_items, "valid_")
        metrics.update(valid_summary)
        metrics.update(stage_one_recall(valid_candidates, split.valid, config.retrieval.n_candidates, "valid_"))

        test_users = split.test[schema.USER_ID].unique().sort().to_list()
        lists = {
            "fuserank": rank_candidates(test_frame, ranker.score(test_frame), top_k),
            "popular": most_popular_rankings(test_history, test_users, top_k),
            "retrieval": stage_one_rankings(test_candidates, top_k),
        }
        frames = []
        for system, ranked in lists.items():
            prefix = "test_" if system == "fuserank" else f"test_{system}_"
            users_metrics, summary = score_lists(ranked, split.test, ks, n_items, prefix)
            metrics.update(summary)
            frames.append(users_metrics.with_columns(pl.lit(system).alias("system")))
        metrics.update(stage_one_recall(test_candidates, split.test, config.retrieval.n_candidates, "test_"))
        per_user = pl.concat(frames)
        metrics.update(confidence_intervals(per_user, "fuserank", "ndcg_at_10", "test_", seed=config.seed))
        s.done(f"{len(test_users):,} test users, {len(lists)} systems")
    ranked = lists["fuserank"].filter(pl.col(schema.RANK) <= config.eval.top_k)
    return ProtocolResult(metrics, per_user, ranked, ranker, names)
