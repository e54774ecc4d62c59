"""Train on the label cut-offs, stop early on validation, evaluate once on test.

The cut-offs (history, targets and reference times) come from data.cutoffs, which holds the
protocols and the label scheme (also in docs/protocol.md). Each cut-off goes through the same
stage pipeline: stage 1 fitted on its history, candidates and features bounded by each query's
reference time, labels from its targets. Each (user, label cut-off) is one lambdarank query.
No test interaction reaches candidates, features, embeddings, statistics or early stopping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from fuserank import schema
from fuserank.config import RunConfig
from fuserank.data.cutoffs import Cutoff, Cutoffs, build_cutoffs
from fuserank.encoders.base import Embeddings
from fuserank.evaluation.baselines import content_knn_rankings, random_rankings
from fuserank.evaluation.scoring import (
    CutoffScores,
    Scored,
    concat_scored,
    confidence_intervals,
    cutoff_scores,
    most_popular_rankings,
    score_lists,
    score_ranked,
    stage_one_counts,
    stage_one_recall,
    summary_of,
)
from fuserank.evaluation.slices import METRICS as SLICE_METRICS
from fuserank.evaluation.slices import slice_metrics, user_slices
from fuserank.jobs.distributed import dask_client, fit_ranker_parts, n_workers
from fuserank.jobs.distributed_frames import FitOnWorker, cutoff_parts, cutoff_scores_dask, split_users, user_bounds
from fuserank.pipeline import cutoff_frame, rank_candidates
from fuserank.progress import step
from fuserank.ranking.llm_features import LLMSignals
from fuserank.ranking.ranker import Ranker, fit_ranker
from fuserank.schema import QUERY

# A baseline's lists of some users: (users, a run of the cut-off's users in sorted order; where
# that run starts in it) -> schema.RANKED_LIST rows.
BaselineLists = Callable[[list[str], int], pl.DataFrame]
# Users whose baseline lists are built and scored at once (`score_in_batches`): the driver holds
# one batch's lists (top_k rows a user), not every user's.
BASELINE_BATCH_USERS = 20_000


@dataclass(frozen=True)
class ProtocolResult:
    """What one train-and-evaluate produces.

    Attributes:
        metrics: flat name -> value (test_*, valid_*, counts).
        per_user: one row per (system, user) with the test metrics of that user; with
            `dask.enabled` only user_id, the slices' metrics (ndcg and recall at 10) and system,
            the whole rows staying on the workers (`per_user_rows`).
        ranked: top-k test lists of the ranker (schema.RANKED_LIST); with `dask.enabled` left
            on the workers, partition by partition (`distributed_frames.HeldFrame`).
        ranker: the fitted LightGBM ranker.
        feature_names: ordered feature list the ranker was trained on.
        per_user_rows: with `dask.enabled`, each system's whole per-user rows by system, in
            `per_user`'s order: held on the workers (`distributed_frames.HeldFrame`) or, for the
            baselines of cut-offs held on the driver, a frame here; None when `per_user` holds
            them.
    """

    metrics: dict[str, float]
    per_user: pl.DataFrame
    ranked: Any
    ranker: Ranker
    feature_names: list[str]
    per_user_rows: dict[str, Any] | None = None


def evaluation_frame(config: RunConfig, cutoff: Cutoff, item_ids: Sequence[str],
                     content: Mapping[str, Embeddings], llm: LLMSignals | None = None
                     ) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    """`pipeline.cutoff_frame` on the driver, reported as one step (the Dask path keeps its frames
    on the workers instead: `train_on_cluster`)."""
    with step(f"stage 1 [{cutoff.name}]") as s:
        frame, names, candidates = cutoff_frame(config, cutoff, item_ids, content, llm)
        s.done(f"{len(cutoff.users):,} users, {frame.height:,} candidates x {len(names)} features")
    return frame, names, candidates


def ranker_training_frame(
    labels: Sequence[Cutoff], item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Labelled candidates of the ranker-label cut-offs, with a QUERY column (user#cut-off)."""
    frames, names = [], []
    for j, cutoff in enumerate(labels, start=1):
        frame, names, _ = evaluation_frame(config, cutoff, item_ids, content, llm)
        query = pl.concat_str(pl.col(schema.USER_ID), pl.lit(f"#{j}"))
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
    cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> ValidationFrames:
    """Build the ranker-training and validation frames (the test cut-off is never read)."""
    fit, names = ranker_training_frame(cutoffs.labels, item_ids, content, config, llm)
    valid, _, valid_candidates = evaluation_frame(config, cutoffs.valid, item_ids, content, llm)
    return ValidationFrames(fit, valid, names, valid_candidates)


def validation_metrics(
    frames: ValidationFrames, valid_targets: pl.DataFrame, ranker: Ranker, ks: Sequence[int], n_items: int,
    ann_candidates: int, new_item_slots: Sequence[int] = (),
) -> dict[str, float]:
    """valid_* metrics (full ranking, as in run_protocol) of `ranker` on the validation users."""
    ranked = rank_candidates(frames.valid, ranker.score(frames.valid), max(ks), new_item_slots)
    _, metrics = score_lists(ranked, valid_targets, ks, n_items, "valid_")
    counts = stage_one_counts(frames.valid_candidates, valid_targets, ann_candidates)
    metrics.update(stage_one_recall(counts, valid_targets, ann_candidates, "valid_"))
    return metrics


def make_cutoffs(interactions: pl.DataFrame, config: RunConfig) -> Cutoffs:
    """The cut-offs of the run's protocol (split.protocol) over its interactions."""
    return build_cutoffs(interactions, config.split)


@dataclass(frozen=True)
class Trained:
    """The ranker and what evaluation reads of the validation and test cut-offs.

    Attributes:
        ranker, names: the fitted ranker and its feature names.
        rows: rows of the ranker's training frames (every candidate of every label cut-off);
            queries: training queries with a positive label.
        valid, test: the cut-offs' scores and stage-1 counts (`scoring.cutoff_scores`; test keeps
            the ranker's top `eval.top_k` lists).
    """

    ranker: Ranker
    names: list[str]
    rows: int
    queries: int
    valid: CutoffScores
    test: CutoffScores


def run_protocol(
    cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> ProtocolResult:
    """`_run_protocol` locally, or with features and ranker on Dask when `config.dask.enabled`."""
    if not config.dask.enabled:
        return _run_protocol(cutoffs, item_ids, content, config, llm)

    with dask_client(config.dask):
        return _run_protocol(cutoffs, item_ids, content, config, llm)


def train_local(cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
                llm: LLMSignals | None) -> Trained:
    """Every frame built here, the ranker fitted here (`ranking.fit_ranker`)."""
    fit_frame, names = ranker_training_frame(cutoffs.labels, item_ids, content, config, llm)
    valid_frame, _, _ = evaluation_frame(config, cutoffs.valid, item_ids, content, llm)
    test_frame, _, _ = evaluation_frame(config, cutoffs.test, item_ids, content, llm)
    with step("train ranker") as s:
        ranker = fit_ranker(fit_frame, valid_frame, names, config.ranker, seed=config.seed, group=QUERY)
        s.done(fit_note(ranker))
    queries = fit_frame.filter(pl.col(schema.LABEL) > 0)[QUERY].n_unique()
    ks, n, slots = config.eval.ks, config.retrieval.ann_candidates, config.slots.new_items
    return Trained(ranker, names, fit_frame.height, queries,
                   cutoff_scores(valid_frame, cutoffs.valid.targets, ranker, ks, n, 0, slots),
                   cutoff_scores(test_frame, cutoffs.test.targets, ranker, ks, n, config.eval.top_k, slots))


def fit_note(ranker: Ranker) -> str:
    return f"{ranker.best_iteration} trees on {ranker.train_rows:,} rows"


def train_on_cluster(cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings],
                     config: RunConfig, llm: LLMSignals | None) -> Trained:
    """`train_local` with every cut-off's frame built on the workers and kept there
    (jobs/distributed_frames.py), cut at the same user bounds, from stage 1 fitted on a worker:
    the ranker trains from those partitions and scores them where they lie; the driver gets back
    per-user metrics, stage-1 counts and the test lists."""
    from distributed import default_client  # dask: an optional dependency

    client = default_client()
    bounds = user_bounds(cutoffs.interactions[schema.USER_ID].unique().to_list(),
                         config.dask.user_partitions or n_workers(client))

    def on_workers(cutoff: Cutoff, query: str | None = None) -> tuple[Any, list[str], list[list[str]]]:
        with step(f"stage 1 [{cutoff.name}]") as s:
            users = split_users(cutoff.users, bounds)
            # Stage 1 is fitted on a worker, and again there for a partition lost with a worker.
            parts, names = cutoff_parts(client, config, FitOnWorker(item_ids, content), cutoff, users, llm, query)
            s.done(f"{len(cutoff.users):,} users, {parts.height:,} candidates x {len(names)} features (on the workers)")
        return parts, names, users

    if not cutoffs.labels:
        raise ValueError("no user has enough train interactions to give the ranker a label")
    train = [on_workers(c, f"#{j}")[0] for j, c in enumerate(cutoffs.labels, start=1)]
    valid, names, valid_users = on_workers(cutoffs.valid)
    test, _, test_users = on_workers(cutoffs.test)
    with step("train ranker") as s:
        ranker, queries = fit_ranker_parts(client, train, valid, names, config.ranker, config.seed, group=QUERY,
                                           n_partitions=config.dask.ranker_partitions,
                                           time_out=config.dask.ranker_time_out,
                                           attempts=config.dask.ranker_attempts)
        rows = sum(t.height for t in train)
        s.done(fit_note(ranker))
    del train
    ks, n, slots = config.eval.ks, config.retrieval.ann_candidates, config.slots.new_items
    return Trained(ranker, names, rows, queries,
                   cutoff_scores_dask(client, valid, valid_users, cutoffs.valid.targets, ranker, ks, n, 0, slots),
                   cutoff_scores_dask(client, test, test_users, cutoffs.test.targets, ranker, ks, n,
                                      config.eval.top_k, slots))


def _run_protocol(
    cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> ProtocolResult:
    """Train on train, stop early on validation, evaluate once on test; baselines on the same split.

    Args:
        cutoffs: the run's cut-offs (see make_cutoffs).
        item_ids: every catalog item, in the row order of the content embeddings.
        content: content embeddings of the catalog, e.g. {"text": ..., "image": ...} (may be empty
            when behaviour is enabled).
        config: the run configuration (only its stage sections are handed further down).
        llm: LLM signals (llm_features.prepare_llm); used only while `config.llm.enabled`.
    """
    train = train_on_cluster if config.dask.enabled else train_local
    trained = train(cutoffs, item_ids, content, config, llm)
    with step("baselines") as s:
        inputs = local_inputs(cutoffs, item_ids, content, config)
        s.done(f"{len(inputs.baselines)} baselines, {len(cutoffs.test.users):,} test users")
    return evaluate(trained, inputs, len(item_ids), config)


@dataclass(frozen=True)
class EvaluationInputs:
    """What evaluation reads besides the ranker's scores, from the driver's cut-offs
    (`local_inputs`) or from their shares on the workers (jobs/distributed_protocol.py).

    Attributes:
        counts: n_interactions, n_users, n_test_users, n_train_interactions.
        valid_targets, test_targets: the cut-offs' targets.
        baselines: each baseline's test lists scored, by name, most popular first.
        cold: the cold test users' most-popular lists scored (global time), None without any.
        slices: `slices.user_slices` of the test cut-off.
    """

    counts: dict[str, float]
    valid_targets: pl.DataFrame
    test_targets: pl.DataFrame
    baselines: dict[str, Scored]
    cold: Scored | None
    slices: pl.DataFrame


def local_inputs(cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings],
                 config: RunConfig, offset: int = 0) -> EvaluationInputs:
    """`EvaluationInputs` of cut-offs held here. The baselines' lists are built from the test
    history a batch of users at a time (`score_in_batches`); `offset`: where the test users
    start among all of them, when `cutoffs` is a partition's share."""
    test = cutoffs.test
    counts = {
        "n_interactions": float(cutoffs.interactions.height),
        "n_users": float(cutoffs.interactions[schema.USER_ID].n_unique()),
        "n_test_users": float(test.targets[schema.USER_ID].n_unique()),
        "n_train_interactions": float(cutoffs.valid.history.height),
    }
    top_k = max(max(config.eval.ks), config.eval.top_k)
    baselines = {name: score_in_batches(lists, test.users, test.targets, config.eval.ks, offset=offset)
                 for name, lists in baseline_rankings(test, item_ids, content, config, top_k).items()}
    return EvaluationInputs(counts, cutoffs.valid.targets, test.targets, baselines,
                            cold_user_scores(cutoffs.cold_test, test.history, config.eval.ks, top_k),
                            user_slices(test))


def evaluate(trained: Trained, inputs: EvaluationInputs, n_items: int, config: RunConfig) -> ProtocolResult:
    """The run's metrics: validation and test of the ranker, stage-1 recall, the baselines on
    the same split, bootstrap CIs of the gains, cold users and slices."""
    n = config.retrieval.ann_candidates
    ranker = trained.ranker
    metrics: dict[str, float] = {
        "n_items": float(n_items),
        "n_interactions": inputs.counts["n_interactions"],
        "n_users": inputs.counts["n_users"],
        "n_test_users": inputs.counts["n_test_users"],
        "n_train_interactions": inputs.counts["n_train_interactions"],
        "ranker_train_rows": float(trained.rows),
        # Fewer: queries without a positive are dropped and at most ranker.train_negatives are drawn.
        "ranker_fit_rows": float(ranker.train_rows),
        "ranker_train_queries_with_positive": float(trained.queries),
        "ranker_best_iteration": float(ranker.best_iteration),
    }
    with step("evaluate") as s:
        metrics.update(summary_of(trained.valid.ranker, n_items, "valid_"))
        metrics.update(stage_one_recall(trained.valid.stage1, inputs.valid_targets, n, "valid_"))
        popular, *others = inputs.baselines.items()
        scores: dict[str, Scored] = {"fuserank": trained.test.ranker, popular[0]: popular[1],
                                     "retrieval": trained.test.retrieval, **dict(others)}
        # Per-user rows held on the workers come here only as the columns the intervals and
        # slices read (and then every system's do, so that they stack).
        spread = any(not isinstance(scored.per_user, pl.DataFrame) for scored in scores.values())
        frames = []
        for system, scored in scores.items():
            prefix = "test_" if system == "fuserank" else f"test_{system}_"
            metrics.update(summary_of(scored, n_items, prefix))
            mine = scored.per_user.select([schema.USER_ID, *SLICE_METRICS]) if spread else scored.per_user
            frames.append(mine.with_columns(pl.lit(system).alias("system")))
        metrics.update(stage_one_recall(trained.test.stage1, inputs.test_targets, n, "test_"))
        per_user = pl.concat(frames)
        metrics.update(confidence_intervals(per_user, "fuserank", "ndcg_at_10", "test_", seed=config.seed))
        if inputs.cold is not None:
            metrics["n_test_cold_users"] = float(inputs.cold.per_user.height)
            metrics.update(summary_of(inputs.cold, n_items, "test_cold_"))
        metrics.update(slice_metrics(per_user, inputs.slices, trained.test.stage1, inputs.test_targets, "test_",
                                     config.seed))
        s.done(f"{int(inputs.counts['n_test_users']):,} test users, {len(scores)} systems")
    rows = {system: scored.per_user for system, scored in scores.items()} if spread else None
    return ProtocolResult(metrics, per_user, trained.test.ranked, ranker, trained.names, rows)


def baseline_rankings(cutoff: Cutoff, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
                      top_k: int) -> dict[str, BaselineLists]:
    """The baselines, each as a `BaselineLists` over the cut-off's history: the most popular
    unseen items, then those that can recommend a cold item (evaluation/baselines.py): the
    content-only kNN on text (when the run has text) and random, over every unseen item."""
    lists: dict[str, BaselineLists] = {"popular": lambda users, _: most_popular_rankings(cutoff.history, users, top_k)}
    if "text" in content:
        text = content["text"].align(item_ids)
        lists["content_knn"] = lambda users, _: content_knn_rankings(
            cutoff.history, users, text, top_k, config.retrieval.query_items, config.retrieval.recency_half_life)
    lists["random"] = lambda users, start: random_rankings(cutoff.history, users, item_ids, top_k, config.seed,
                                                           start=start)
    return lists


def score_in_batches(lists: BaselineLists, users: Sequence[str], targets: pl.DataFrame, ks: Sequence[int],
                     batch_users: int = BASELINE_BATCH_USERS, offset: int = 0) -> Scored:
    """`scoring.score_ranked` of a baseline's lists, built and scored `batch_users` users at a
    time in sorted order, so that only one batch's lists are held; the same as scoring the
    lists of every user at once. `offset`: where `users` start among all the users listed (a
    partition's users: see `BaselineLists`)."""
    users = sorted(set(users))
    wanted = targets[schema.USER_ID]
    parts = []
    for start in range(0, max(len(users), 1), batch_users):
        batch = users[start:start + batch_users]
        mine = targets.filter(wanted.is_in(pl.Series(batch, dtype=pl.String).implode()))
        parts.append(score_ranked(lists(batch, offset + start), mine, ks))
    return concat_scored(parts)


def cold_user_scores(cold_test: pl.DataFrame, history: pl.DataFrame, ks: Sequence[int], top_k: int
                     ) -> Scored | None:
    """The cold test users (global_time: no history before the test cut) served the
    most-popular list of `history` at the cut, which is all a system knows of them, scored
    against `cold_test` (their targets); None when there are none."""
    if cold_test.is_empty():
        return None
    users = cold_test[schema.USER_ID].unique().sort().to_list()
    return score_ranked(most_popular_rankings(history, users, top_k), cold_test, ks)
