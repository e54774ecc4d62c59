"""The sequence model in both stages: its candidates (stage 1) and its scores as features (stage 2).

The model a cut-off uses is fitted on that cut-off's history only (pipeline.fit_stage_one), so
neither its candidates nor its scores have seen the cut-off's targets or anything later.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.ranking.features import within_user_z
from fuserank.retrieval.index import ItemIndex, search_candidates, seen_rows
from fuserank.retrieval.sequence import VIEW, SequenceModel, UserStates


def sequence_candidates(model: SequenceModel, index: ItemIndex, history: pl.DataFrame, users: Sequence[str], n: int,
                        batch_size: int = 1024, states: UserStates | None = None) -> pl.DataFrame:
    """The n items with the best sequence-model score per user (inner product of the user's last
    hidden state and the item's output embedding, through the FAISS index over those
    embeddings), never an item of the user's history.

    Args:
        states: the users' states after `history` when already computed (`SequenceModel.states`;
            they must cover `users`); None computes them.

    Returns:
        CANDIDATES frame, source "sequence", sorted by user_id, retrieval_rank; a user without
        history gets none.
    """
    users = sorted(set(users) & set(history[schema.USER_ID].unique().to_list()))
    vectors = states.of(users) if states is not None else model.user_states(history, users)
    return search_candidates(index, users, vectors, seen_rows(history, users, model.item_ids), n, VIEW,
                             batch_size)


def add_sequence_features(frame: pl.DataFrame, names: list[str], model: SequenceModel, history: pl.DataFrame,
                          states: UserStates | None = None) -> tuple[pl.DataFrame, list[str]]:
    """`frame` (features of candidates) with the `sequence_features` columns added, and the names.
    `states`: as in `sequence_candidates`, covering the frame's users."""
    users = frame[schema.USER_ID].unique(maintain_order=True).to_list()
    user_index = pl.DataFrame({schema.USER_ID: pl.Series(users, dtype=pl.String),
                               "_u": np.arange(len(users), dtype=np.int64)})
    item_index = pl.DataFrame({schema.ITEM_ID: pl.Series(model.item_ids, dtype=pl.String),
                               "_i": np.arange(len(model.item_ids), dtype=np.int64)})
    rows = frame.select(schema.USER_ID, schema.ITEM_ID).join(user_index, on=schema.USER_ID, how="left",
                                                             maintain_order="left").join(
        item_index, on=schema.ITEM_ID, how="left", maintain_order="left")
    scores = (states.of(users) @ model.item_vectors.T if states is not None else model.scores(history, users))
    columns = sequence_features(scores, rows["_u"].to_numpy(), rows["_i"].to_numpy())
    frame = frame.with_columns(pl.Series(name, values, dtype=pl.Float32) for name, values in columns.items())
    return frame, [*names, *columns]


def sequence_features(scores: np.ndarray, user_rows: np.ndarray, item_rows: np.ndarray) -> dict[str, np.ndarray]:
    """The sequence model's view of each candidate.

    Args:
        scores: float32 (n_users, n_items) every catalog item's score for each of the candidates'
            users (`SequenceModel.scores` after the cut-off's history, model.item_ids order).
        user_rows, item_rows: int64 (n,) each candidate's row of `scores` and its item column.

    Returns:
        float32 (n,) arrays: `seq_model_score` (state . item vector), `seq_model_score_z` (within
        the user's candidates) and `seq_model_rank` (1 + the number of catalog items, seen ones
        included, that the model scores higher; users without history rank every item last).
    """
    score = scores[user_rows, item_rows]
    # Each user's scores sorted ascending: the items above a candidate are those past its position.
    ordered = np.sort(scores, axis=1)
    above = np.empty(len(score), dtype=np.float64)
    by_user = np.argsort(user_rows, kind="stable")
    bounds = np.searchsorted(user_rows[by_user], np.arange(len(scores) + 1))
    for u in range(len(scores)):
        rows = by_user[bounds[u]:bounds[u + 1]]
        above[rows] = scores.shape[1] - np.searchsorted(ordered[u], score[rows], side="right")
    return {
        "seq_model_score": score.astype(np.float32),
        "seq_model_score_z": within_user_z(user_rows, score.astype(np.float64)),
        "seq_model_rank": (above + 1).astype(np.float32),
    }
