"""Next-item (sequential) systems for the peer benchmark: RecTools' SASRec from its own library,
and fuserank's own SASRec alone (no retrieval fusion, no ranker).

Both read each user's history in event order (data.split.sort_interactions), rank every catalog
item not in the user's history, and go through benchmarking.tune_and_test, so they are tuned,
refitted and scored exactly as the other peers are.

RecTools cannot share fuserank's pins, so it runs in the venv of
pipelines/peer_envs/rectools.lock.txt through peer_env (built on first use, minutes).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fuserank.config import SequenceConfig
from fuserank.data.cutoffs import Cutoffs
from fuserank.evaluation.benchmarking import PeerResult, tune_and_test
from fuserank.evaluation.peer_env import PeerEnv, recommend_in_env
from fuserank.retrieval.sequence import fit_sequence_model

# RecTools SASRec with the settings fuserank's SASRec defaults to (64 factors, 2 blocks, 1 head,
# dropout 0.2, the newest 200 items, batch 128, learning rate 0.001, full softmax), one torch
# thread, and early stopping on RecTools' validation loss of each user's last history item
# (patience 3, at most 50 epochs; the best epoch's weights rank). One configuration, as fuserank's
# SASRec has: on ML-100K one fit took 20 s an epoch on an idle core and over a minute on the
# shared one, so the learning-rate grid RECTOOLS_SASREC_LR_GRID (0.001, 0.003, 0.01) was not run.
RECTOOLS_SASREC_BASE: dict[str, Any] = {
    "n_factors": 64, "n_blocks": 2, "n_heads": 1, "dropout": 0.2, "session_max_len": 200, "batch_size": 128,
    "max_epochs": 50, "patience": 3, "threads": 1,
}
RECTOOLS_SASREC_LR_GRID: tuple[dict[str, Any], ...] = tuple(
    RECTOOLS_SASREC_BASE | {"lr": lr} for lr in (0.001, 0.003, 0.01)
)
RECTOOLS_SASREC_GRID: tuple[dict[str, Any], ...] = RECTOOLS_SASREC_LR_GRID[:1]


def run_rectools_sasrec(cutoffs: Cutoffs, item_ids: Sequence[str], seed: int, env: PeerEnv, worker: Path,
                        grid: Sequence[Mapping[str, Any]] = RECTOOLS_SASREC_GRID, k: int = 50,
                        cache_dir: Path | None = None) -> PeerResult:
    """Tune RecTools' SASRec on validation and rank test, inside `env` (peer_env.ensure_env).

    Args:
        cutoffs: the protocol's cut-offs.
        item_ids: the catalog (items never in a history cannot be ranked by it).
        seed: the model's seed.
        env: the built venv; worker: pipelines/peer_envs/rectools_worker.py.
        grid: configurations tried on validation.
        k: list length.
        cache_dir: where worker results are kept and reused (None: always fit).
    """

    def rank(params: Mapping[str, Any], history: pl.DataFrame, users: Sequence[str]) -> tuple[pl.DataFrame, dict]:
        return recommend_in_env(env, worker, params, history, users, item_ids, k, seed, cache_dir)

    return tune_and_test("rectools_sasrec", rank, grid, cutoffs, k)


def run_fuserank_sequence(cutoffs: Cutoffs, item_ids: Sequence[str], config: SequenceConfig, seed: int,
                          k: int = 50, cache_dir: Path | None = None) -> PeerResult:
    """fuserank's SASRec alone: `config` (one configuration, so no validation fit) fitted on the
    test cut-off's history as the pipeline fits the model whose features its ranker reads
    (under sequence.refit "continue", continued from the model of the cut-offs' shared
    history), its early stopping on each user's last history item, ranking the catalog minus
    history by user state . item vector.

    Args:
        cutoffs: the protocol's cut-offs.
        item_ids: the catalog.
        config: the sequence section (its `enabled` flag is ignored).
        seed: the model's seed.
        k: list length.
        cache_dir: fitted-model cache (sequence.fit_sequence_model).
    """

    def rank(params: Mapping[str, Any], history: pl.DataFrame, users: Sequence[str]) -> tuple[pl.DataFrame, dict]:
        start = time.perf_counter()
        model = fit_sequence_model(history, item_ids, config, seed, cache_dir, cutoffs.test.shared_history)
        meta = {"epochs": model.epochs, "best_epoch": model.best_epoch,
                "inner_valid_ndcg_at_10": model.best_valid_ndcg, "from_cache": model.from_cache,
                **({} if model.from_cache else {"fit_seconds": time.perf_counter() - start})}
        return model.recommend(history, users, k), meta

    return tune_and_test("fuserank_sasrec", rank, (dataclasses.asdict(config),), cutoffs, k)
