"""The stage pipeline: one cut-off -> stage 1 -> candidates -> features -> labels.

`cutoff_frame` is the one chain. Its input is a data.cutoffs.Cutoff: stage 1 is fitted on the
cut-off's history alone, and every candidate source and feature of a query is bounded by that
query's reference time. The evaluation protocol (ranker labels, validation, test), tuning
(through the protocol's validation frames) and export (a serving cut-off, no targets) all call
it; the Dask path runs `stage_frame` on partitions of the users (jobs/distributed_frames.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import (
    BehaviourConfig,
    ExperimentConfig,
    FeatureConfig,
    FusionConfig,
    RetrievalConfig,
    SequenceConfig,
    cache_dir,
)
from fuserank.data.cutoffs import Cutoff
from fuserank.encoders.base import Embeddings
from fuserank.encoders.behaviour import fit_behaviour
from fuserank.encoders.behaviour_mapping import predict_unseen
from fuserank.ranking.features import build_features, select_features
from fuserank.ranking.llm_features import LLMSignals, add_llm_features
from fuserank.ranking.sequence_features import add_sequence_features, sequence_candidates
from fuserank.ranking.slots import NEW_ITEM, mark_new_items, new_items, slotted_ranks
from fuserank.retrieval.cold import SOURCE as COLD
from fuserank.retrieval.cold import cold_candidates, content_vectors
from fuserank.retrieval.collaborative import ItemItemModel, ease_candidates, fit_ease
from fuserank.retrieval.fusion import fuse
from fuserank.retrieval.index import ItemIndex, IVFPQSettings, build_index, merge_candidates, retrieve
from fuserank.retrieval.popularity import neighbourhood_popular, popular_candidates, reference_times
from fuserank.retrieval.sequence import VIEW as SEQUENCE
from fuserank.retrieval.sequence import SequenceModel, UserStates, fit_sequence_model


@dataclass(frozen=True)
class StageOne:
    """Stage 1 fitted on one history.

    Attributes:
        embeddings: per-modality item embeddings (content modalities plus behaviour), one item order.
        fused: float32 (n_items, D) fused, L2-normalised item vectors in that order.
        index: FAISS index over `fused`.
        modality_indexes: one index per fused modality, when per-modality candidates are on.
        ease: the EASE item-item model, when behaviour is on and behaviour.ease_l2 > 0.
        sequence: the SASRec model fitted on the same history, when sequence.enabled; its
            normalised item vectors are the view "sequence" of `embeddings`.
        sequence_index: FAISS index over the sequence model's raw output embeddings (the
            model's scores are inner products with them).
        cold_vectors: float32 (n_items, D) content-only fused item vectors, when
            retrieval.cold_candidates > 0 (the "cold" source, retrieval/cold.py).
        new_items: the catalog items no interaction of the history names, new to the model
            (ranking/slots.py).
    """

    embeddings: dict[str, Embeddings]
    fused: np.ndarray
    index: ItemIndex
    modality_indexes: dict[str, ItemIndex]
    ease: ItemItemModel | None = None
    sequence: SequenceModel | None = None
    sequence_index: ItemIndex | None = None
    cold_vectors: np.ndarray | None = None
    new_items: tuple[str, ...] = ()


def fit_stage_one(
    history: pl.DataFrame,
    item_ids: Sequence[str],
    content: Mapping[str, Embeddings],
    behaviour: BehaviourConfig,
    fusion: FusionConfig,
    retrieval: RetrievalConfig,
    seed: int,
    sequence: SequenceConfig | None = None,
    cache_dir: Path | None = None,
    shared_history: pl.DataFrame | None = None,
) -> StageOne:
    """Learn the behaviour embedding (and the sequence model) from `history`, fuse the views,
    index them.

    Args:
        history: interactions the stage may learn from (schema.INTERACTIONS).
        item_ids: every catalog item, in the row order of the content embeddings.
        content: content-only embeddings (text, image, ...) of every catalog item (may be empty).
        behaviour, fusion, retrieval: stage configs.
        seed: seed for the behaviour embedding and the sequence model.
        sequence: the sequence model's settings (None or not enabled: no sequence model).
        cache_dir: where fitted sequence models are cached (None: not cached).
        shared_history: the protocol's shared history (data.cutoffs), which the sequence model
            continues from under sequence.refit "continue" (None: it starts from scratch).
    """
    item_ids = tuple(item_ids)
    embeddings = {name: emb.align(item_ids) for name, emb in content.items()}
    # Content alone, fused once: the behaviour mapping and the cold source both read it.
    wanted = behaviour.enabled and behaviour.content_map_l2 > 0 or retrieval.cold_candidates > 0
    content_only = content_vectors(embeddings, fusion.weights) if wanted else None
    # Behaviour is fitted whenever enabled: with a fusion weight of 0 it still feeds the features.
    if behaviour.enabled:
        embeddings["behaviour"] = fit_behaviour(
            history, item_ids, dim=behaviour.dim, seed=seed, min_item_count=behaviour.min_item_count
        )
        if behaviour.content_map_l2 > 0 and content_only is not None:
            embeddings["behaviour"] = predict_unseen(embeddings["behaviour"], content_only, behaviour.content_map_l2)
    model = None
    if sequence is not None and sequence.enabled:
        model = fit_sequence_model(history, item_ids, sequence, seed, cache_dir, start_history=shared_history)
        norms = np.linalg.norm(model.item_vectors, axis=1, keepdims=True)
        unit = np.divide(model.item_vectors, norms, out=np.zeros_like(model.item_vectors), where=norms > 0)
        embeddings[SEQUENCE] = Embeddings(item_ids, unit.astype(np.float32), norms[:, 0] > 0)
    weights = {m: w for m, w in fusion.weights.items() if m in embeddings and w > 0}
    if not weights:
        raise ValueError(f"no modality to fuse: embeddings {sorted(embeddings)}, fusion weights {fusion.weights}")
    fused = fuse({m: embeddings[m] for m in weights}, weights)
    def index_of(vectors: np.ndarray) -> ItemIndex:
        return build_index(
            vectors,
            item_ids,
            kind=retrieval.index,
            hnsw_m=retrieval.hnsw_m,
            hnsw_ef_search=retrieval.hnsw_ef_search,
            use_gpu=retrieval.use_gpu,
            ivfpq=IVFPQSettings(retrieval.ivf_lists, retrieval.pq_m, retrieval.pq_bits, retrieval.nprobe,
                                retrieval.train_sample, retrieval.shards, seed),
        )

    own_index = retrieval.modality_candidates > 0 or retrieval.neighbourhood_candidates > 0
    per_modality = {m: index_of(embeddings[m].vectors) for m in weights} if own_index else {}
    ease = None
    if behaviour.enabled and behaviour.ease_l2 > 0:
        ease = fit_ease(history, item_ids, behaviour.ease_l2, behaviour.ease_max_items)
    sequence_index = index_of(model.item_vectors) if model is not None and retrieval.sequence_candidates > 0 else None
    cold_vectors = content_only if retrieval.cold_candidates > 0 else None
    return StageOne(embeddings, fused, index_of(fused), per_modality, ease, model, sequence_index, cold_vectors,
                    new_items(item_ids, history))


def generate_candidates(
    stage: StageOne, history: pl.DataFrame, users: Sequence[str], retrieval: RetrievalConfig,
    ref_times: pl.DataFrame | None = None, sequence_states: UserStates | None = None,
) -> pl.DataFrame:
    """ANN candidates over the fused index, then over each modality's own index (when on), then
    the sequence model's (when on), then EASE's (when on), then the most popular items;
    deduplicated. Popularity (the popular and neighbourhood sources) counts only interactions at
    or before each user's reference time (`ref_times`, schema.REF_TIMES; None: each user's
    newest history interaction). `sequence_states`: the users' sequence-model states after
    `history` when the caller computed them already (None: computed here).

    Returns a schema.CANDIDATES frame in stage-1 order (sources in that order, each by rank).
    """
    if ref_times is None:
        ref_times = reference_times(history, users)
    frames = [
        retrieve(
            stage.index,
            history,
            stage.fused,
            retrieval.ann_candidates,
            query_items=retrieval.query_items,
            half_life=retrieval.recency_half_life,
            users=users,
            batch_size=retrieval.batch_size,
        )
    ]
    popular_in = []
    for modality, index in stage.modality_indexes.items():
        depth = max(retrieval.modality_candidates, retrieval.neighbourhood_pool if retrieval.neighbourhood_candidates else 0)
        found = retrieve(
            index,
            history,
            stage.embeddings[modality].vectors,
            depth,
            query_items=retrieval.query_items,
            half_life=retrieval.recency_half_life,
            users=users,
            batch_size=retrieval.batch_size,
        )
        if retrieval.modality_candidates > 0:
            nearest = found.filter(pl.col(schema.RETRIEVAL_RANK) <= retrieval.modality_candidates)
            frames.append(nearest.with_columns(pl.lit(f"ann_{modality}").alias(schema.SOURCE)))
        if retrieval.neighbourhood_candidates > 0:
            popular_in.append(
                neighbourhood_popular(found, history, retrieval.neighbourhood_candidates, f"pop_{modality}", ref_times)
            )
    frames.extend(popular_in)
    if stage.sequence is not None and stage.sequence_index is not None:
        frames.append(sequence_candidates(stage.sequence, stage.sequence_index, history, users,
                                          retrieval.sequence_candidates, retrieval.batch_size, sequence_states))
    if stage.ease is not None and retrieval.ease_candidates > 0:
        frames.append(ease_candidates(stage.ease, history, users, retrieval.ease_candidates, retrieval.batch_size))
    if stage.cold_vectors is not None:
        frames.append(cold_candidates(stage.cold_vectors, stage.index.item_ids, history, users,
                                      retrieval.cold_candidates, retrieval.query_items, retrieval.recency_half_life,
                                      retrieval.batch_size))
    if retrieval.popular_candidates > 0:
        frames.append(popular_candidates(history, users, retrieval.popular_candidates, ref_times))
    return merge_candidates(frames)


def label_candidates(candidates: pl.DataFrame, targets: pl.DataFrame) -> pl.DataFrame:
    """Add schema.LABEL: 1 where (user, item) is a target, else 0."""
    if targets.height == 0:  # a serving cut-off: no join of millions of rows against nothing
        return candidates.with_columns(pl.lit(0, pl.Int8).alias(schema.LABEL))
    hits = targets.select(schema.USER_ID, schema.ITEM_ID).unique().with_columns(pl.lit(1, pl.Int8).alias(schema.LABEL))
    return candidates.join(hits, on=[schema.USER_ID, schema.ITEM_ID], how="left", maintain_order="left").with_columns(
        pl.col(schema.LABEL).fill_null(0)
    )


def fit_stage(config: ExperimentConfig, history: pl.DataFrame, item_ids: Sequence[str],
              content: Mapping[str, Embeddings], shared_history: pl.DataFrame | None = None) -> StageOne:
    """Stage 1 under a run's stage settings, fitted on `history` alone (`fit_stage_one`;
    `shared_history` is a subset of it, see there)."""
    return fit_stage_one(history, item_ids, content, config.behaviour, config.fusion, config.retrieval, config.seed,
                         config.sequence, cache_dir(config.sources) / SEQUENCE, shared_history)


def cutoff_frame(
    config: ExperimentConfig,
    cutoff: Cutoff,
    item_ids: Sequence[str],
    content: Mapping[str, Embeddings],
    llm: LLMSignals | None = None,
) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    """The stage pipeline for one cut-off: stage 1 fitted on its history alone, then
    `stage_frame`.

    Args:
        config: the run's config; its stage sections, seed, llm.enabled and sources are read.
        cutoff: history, targets and reference times (data.cutoffs).
        item_ids, content: the catalog and its content embeddings, in one item order; the
            cut-off's `absent` items leave the catalog, so no candidate names one.
        llm: LLM signals, used while config.llm.enabled.

    Returns:
        (features with labels, feature names, stage-1 candidates in stage-1 order).
    """
    return stage_frame(config, cutoff_stage(config, cutoff, item_ids, content), cutoff, llm)


def cutoff_stage(config: ExperimentConfig, cutoff: Cutoff, item_ids: Sequence[str],
                 content: Mapping[str, Embeddings]) -> StageOne:
    """Stage 1 of one cut-off: fitted on its history alone, over `cutoff_catalog`."""
    return fit_stage(config, cutoff.history, cutoff_catalog(cutoff.absent, item_ids), content, cutoff.shared_history)


def cutoff_catalog(absent: frozenset[str], item_ids: Sequence[str]) -> Sequence[str]:
    """The catalog less a cut-off's `absent` items (`Cutoff.absent`), so that no candidate names one."""
    return [item for item in item_ids if item not in absent] if absent else item_ids


def stage_frame(
    config: ExperimentConfig,
    stage: StageOne,
    cutoff: Cutoff,
    llm: LLMSignals | None = None,
    extra: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    """After stage 1: candidates and features of the cut-off's users as of their reference
    times, labels from its targets (all 0 for a serving cut-off).

    Args:
        config: the run's config (retrieval, features, llm.enabled).
        stage: stage 1 fitted on `cutoff.history` alone (export fits it once for all batches).
        cutoff: history, targets and reference times.
        llm: LLM signals, used while config.llm.enabled.
        extra: candidates merged after stage 1's own (export's seen items).

    Returns:
        (features with labels and the new-item flag (ranking/slots.py), feature names, stage-1
        candidates in stage-1 order).
    """
    llm = llm if config.llm.enabled else None
    options = {"extra": extra} if extra is not None else {}
    frame, names = candidate_features(stage, cutoff.history, cutoff.users, config.retrieval,
                                                 config.features, llm=llm, ref_times=cutoff.ref_times, **options)
    frame = mark_new_items(label_candidates(frame, cutoff.targets), stage.new_items)
    return frame, names, frame.select(list(schema.CANDIDATES))


def candidate_features(
    stage: StageOne,
    history: pl.DataFrame,
    users: Sequence[str],
    retrieval: RetrievalConfig,
    features: FeatureConfig,
    extra: pl.DataFrame | None = None,
    llm: LLMSignals | None = None,
    ref_times: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Candidates for `users` with every feature column; returns (frame, feature names), the names
    without those of `features.disabled_groups` (the frame keeps every column). `extra`
    (schema.CANDIDATES) is merged after stage 1's own candidates, e.g. seen items for export.
    `llm` adds the LLM feature columns (ranking/llm_features.py). `ref_times` (schema.REF_TIMES; None:
    each user's newest history interaction) bounds every statistic of each user's query."""
    if ref_times is None:
        ref_times = reference_times(history, users)
    # Both the sequence source and the sequence features read the users' states: computed once.
    states = stage.sequence.states(history, users) if stage.sequence is not None else None
    candidates = generate_candidates(stage, history, users, retrieval, ref_times, states)
    if extra is not None:
        candidates = merge_candidates([candidates, extra])
    frame, names = build_features(
        candidates,
        history,
        stage.embeddings,
        stage.fused,
        features,
        profile_items=retrieval.query_items,
        half_life=retrieval.recency_half_life,
        sources=candidate_sources(stage, retrieval),
        ease=stage.ease,
        ref_times=ref_times,
    )
    if stage.sequence is not None:
        frame, names = add_sequence_features(frame, names, stage.sequence, history, states)
    if llm is not None:
        frame, names = add_llm_features(frame, names, history, llm)
    return frame, select_features(names, features.disabled_groups)


def candidate_sources(stage: StageOne, retrieval: RetrievalConfig) -> tuple[str, ...]:
    """Names of the candidate sources a stage can produce (each gets a `from_<source>` feature)."""
    per_modality = []
    if retrieval.modality_candidates > 0:
        per_modality += [f"ann_{m}" for m in stage.modality_indexes]
    if retrieval.neighbourhood_candidates > 0:
        per_modality += [f"pop_{m}" for m in stage.modality_indexes]
    sequence = (SEQUENCE,) if stage.sequence_index is not None else ()
    ease = ("ease",) if stage.ease is not None and retrieval.ease_candidates > 0 else ()
    cold = (COLD,) if stage.cold_vectors is not None else ()
    return ("ann", *per_modality, *sequence, *ease, *cold, "popular")


def rank_candidates(frame: pl.DataFrame, scores: np.ndarray, top_k: int,
                    new_item_slots: Sequence[int] = ()) -> pl.DataFrame:
    """Top `top_k` per user by score (ties: stage-1 order), as schema.RANKED_LIST; with
    `new_item_slots` (config slots.new_items) those positions go to new items (ranking/slots.py)."""
    # Users as integers in user_id order: sorting and ranking them is cheaper than the strings.
    users = frame[schema.USER_ID].cast(pl.Enum(frame[schema.USER_ID].unique().sort())).to_physical()
    if new_item_slots and NEW_ITEM not in frame.columns:
        raise ValueError(f"slots.new_items needs the candidate frame's {NEW_ITEM!r} column")
    columns = [schema.USER_ID, schema.ITEM_ID] + ([NEW_ITEM] if new_item_slots else [])
    ranked = (
        frame.select(columns)
        .with_columns(pl.Series(schema.SCORE, scores, dtype=pl.Float32), pl.int_range(pl.len()).alias("_order"),
                      users.alias("_user"))
        .sort(["_user", schema.SCORE, "_order"], descending=[False, True, False])
        .with_columns((pl.int_range(pl.len()).over("_user") + 1).cast(pl.Int32).alias(schema.RANK))
    )
    if new_item_slots:
        ranked = ranked.with_columns(slotted_ranks(ranked, new_item_slots, "_user", schema.RANK).alias(schema.RANK))
        ranked = ranked.sort("_user", schema.RANK)
    return ranked.filter(pl.col(schema.RANK) <= top_k).select(list(schema.RANKED_LIST))
