"""The sequence model in both stages: its candidates and features on the planted cycle, the
features worked by hand, and each cut-off's model fitted on that cut-off's history only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import BehaviourConfig, FeatureConfig, FusionConfig, RetrievalConfig
from fuserank.encoders.base import Embeddings
from fuserank.retrieval.sequence import cache_key
from fuserank.ranking.sequence_features import sequence_candidates, sequence_features
from fuserank.pipeline import candidate_features, candidate_sources, fit_stage_one
from test_sequence import CATALOG, TINY, cyclic, next_item


def test_sequence_features_by_hand():
    # user 0 scores items [0.1, 0.9, 0.5]; user 1 [0.3, 0.3, 0.2]
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]], dtype=np.float32)
    out = sequence_features(scores, np.array([0, 0, 1, 1]), np.array([2, 0, 0, 2]))
    assert out["seq_model_score"].tolist() == pytest.approx([0.5, 0.1, 0.3, 0.2])
    # ranks among all items: u0's item 2 has one item above it (0.9), item 0 two; u1's item 0 none
    # (the tie at 0.3 is not above it), item 2 two
    assert out["seq_model_rank"].tolist() == [2.0, 3.0, 1.0, 3.0]
    # within-user z: u0 (0.5, 0.1) -> (+1, -1); u1 (0.3, 0.2) -> (+1, -1)
    assert out["seq_model_score_z"].tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-5)


@pytest.fixture(scope="module")
def cycle_stage(tmp_path_factory):
    history = cyclic(n_users=60)
    content = {"text": Embeddings(CATALOG, np.eye(len(CATALOG), 8, dtype=np.float32), np.ones(len(CATALOG), bool))}
    retrieval = RetrievalConfig(ann_candidates=5, popular_candidates=3, sequence_candidates=5, ease_candidates=0)
    config = dataclasses.replace(TINY, enabled=True)
    stage = fit_stage_one(history, CATALOG, content, BehaviourConfig(dim=4, ease_l2=0.0), FusionConfig(), retrieval,
                          seed=0, sequence=config, cache_dir=tmp_path_factory.mktemp("seq"))
    return history, stage, retrieval, config


def test_the_sequence_source_finds_each_users_next_item(cycle_stage):
    history, stage, retrieval, config = cycle_stage
    assert stage.sequence.cache_key == cache_key(history, CATALOG, config, 0, stage.sequence.device)  # fitted on this history only
    assert "sequence" in candidate_sources(stage, retrieval) and "sequence" in stage.embeddings
    users = history[schema.USER_ID].unique().sort().to_list()
    frame, names = candidate_features(stage, history, users, retrieval, FeatureConfig())
    assert {"seq_model_score", "seq_model_score_z", "seq_model_rank", "from_sequence"} <= set(names)
    assert any(n.startswith("cos_sequence_") for n in names)
    last = history.group_by(schema.USER_ID, maintain_order=True).last()
    wanted = pl.DataFrame({schema.USER_ID: last[schema.USER_ID],
                           schema.ITEM_ID: [next_item(i) for i in last[schema.ITEM_ID]]})
    own = sequence_candidates(stage.sequence, stage.sequence_index, history, users, retrieval.sequence_candidates)
    # The states the pipeline computes once for both stages give the same candidates.
    shared = stage.sequence.states(history, users)
    assert own.equals(sequence_candidates(stage.sequence, stage.sequence_index, history, users,
                                          retrieval.sequence_candidates, states=shared))
    assert np.array_equal(shared.of(users[::-1]), stage.sequence.user_states(history, users[::-1]))
    assert own.join(wanted, on=[schema.USER_ID, schema.ITEM_ID], how="semi").height >= 0.8 * len(users)
    assert own.join(history, on=[schema.USER_ID, schema.ITEM_ID], how="semi").is_empty()  # never a seen item
    found = frame.join(wanted, on=[schema.USER_ID, schema.ITEM_ID], how="semi")
    assert found.height >= 0.8 * len(users)
    assert (found["seq_model_rank"] <= 2).mean() >= 0.8  # the model ranks the next item at or near the top


@pytest.mark.slow  # ~80 s on busy cores: a train-evaluate, MLflow and an export
def test_every_cutoff_and_the_export_continue_from_one_shared_history_model(tmp_path, monkeypatch):
    """train-evaluate then export on a tiny catalog with the sequence model on: one model is
    trained from scratch (on the shared history, which is the earliest label cut-off's), every
    other cut-off's model and the export's continue from it, and no fit is repeated."""
    import torch

    from fuserank.cli import main
    from tiny_project import write_project

    sequence = {"enabled": True, "max_length": 10, "dim": 8, "blocks": 1, "heads": 1, "max_epochs": 3,
                "patience": 1, "refit_epochs": 1, "batch_size": 32, "threads": 1}
    config = write_project(tmp_path, "seq", sequence=sequence)
    monkeypatch.chdir(tmp_path)
    assert main(["train-evaluate", "--config", str(config), "--quiet"]) == 0
    features = (tmp_path / "outputs" / "seq" / "model" / "features.json").read_text()
    assert "seq_model_score" in features
    folder = tmp_path / "cache" / "sequence"

    def starts() -> list[str | None]:
        return [torch.load(p, weights_only=True)["record"]["started_from"] for p in sorted(folder.glob("*.pt"))]

    # Label cut-offs 2 and 1, validation and test: the earliest is the shared history itself.
    after_run = starts()
    base = [p.name.removeprefix("sasrec-").removesuffix(".pt") for p in sorted(folder.glob("*.pt"))]
    assert after_run.count(None) == 1 and len(after_run) == 4
    assert set(after_run) == {None, base[after_run.index(None)]}
    run_id = json.loads((tmp_path / "outputs" / "seq" / "metrics.json").read_text())["run_id"]
    assert main(["export", "--config", str(config), "--run-id", run_id, "--quiet"]) == 0
    after_export = starts()
    assert len(after_export) == 5 and after_export.count(None) == 1  # one more fit, continued from the same base
    assert set(after_export) == set(after_run)
