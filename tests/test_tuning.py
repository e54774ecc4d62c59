"""Tuning: search space -> config, stage-1 frame cache, pruning, and `fuserank tune` end to end
on a tiny catalog (study storage, nested MLflow runs, best config, its single test run)."""

from __future__ import annotations

import dataclasses
import json

import optuna
import polars as pl
import pytest
import yaml

from fuserank import schema, tracking
from fuserank.cli import main
from fuserank.config import RunConfig, load_config
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.ranking.features import select_features
from fuserank.evaluation.protocol import validation_frames
from fuserank.jobs.tuning import FrameCache, run_trial, sample_params, stage_one_key, trial_config
from tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    items, interactions = generate_catalog(n_items=200, n_users=150, seed=3)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    values = {
        "seed": 7,
        "output_dir": str(root / "outputs"),
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(root / "cache"), "text_model": str(model)},
        "retrieval": {"ann_candidates": 40, "popular_candidates": 10},
        "ranker": {"n_estimators": 60, "min_child_samples": 10, "early_stopping_rounds": 20},
        "eval": {"top_k": 20},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                     "artifact_root": str(root / "mlruns" / "artifacts"), "experiment": "tune-test"},
        "tune": {"storage": f"sqlite:///{root / 'mlruns' / 'optuna.db'}", "n_trials": 3, "n_startup_trials": 1,
                 "prune_rounds": 5, "ann_candidates": [20, 40], "fusion_weights": [0.5, 1.0]},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return root, path


def test_trial_params_become_a_config():
    params = {"ranker.learning_rate": 0.1, "retrieval.ann_candidates": 300, "fusion.weights.text": 0.0,
              "features.use_popularity": False, "features.use_user": True}
    config = trial_config(RunConfig(), params)
    assert config.ranker.learning_rate == 0.1 and config.retrieval.ann_candidates == 300
    assert config.fusion.weights["text"] == 0.0 and config.fusion.weights["behaviour"] == 1.0
    assert config.features.disabled_groups == ("popularity",)
    assert config.ranker.num_leaves == RunConfig().ranker.num_leaves


def test_llm_views_get_sampled_fusion_weights_that_become_a_config():
    # With llm.enabled the catalog's content holds the LLM views too; tune samples their weights.
    base = load_config(None, ["llm.enabled=true"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = sample_params(trial, base.tune, ["text", "llm_description", "llm_hidden"], behaviour=True)
    assert {"fusion.weights.llm_description", "fusion.weights.llm_hidden"} <= set(params)
    config = trial_config(base, params)
    for view in ("text", "llm_description", "llm_hidden"):
        assert config.fusion.weights[view] == params[f"fusion.weights.{view}"]
        assert config.fusion.weights[view] in base.tune.fusion_weights
    assert config.fusion.weights["behaviour"] == 1.0 and config.llm.enabled
    # The sampled weights reach stage 1: two draws that differ only there are different frames.
    other = trial_config(base, {**params, "fusion.weights.llm_hidden": 7.0})
    assert stage_one_key(other) != stage_one_key(config)


def test_stage_one_key_ignores_feature_groups_only():
    base = RunConfig()
    assert stage_one_key(trial_config(base, {"features.use_user": False})) == stage_one_key(base)
    assert stage_one_key(trial_config(base, {"ranker.num_leaves": 7})) == stage_one_key(base)
    assert stage_one_key(trial_config(base, {"retrieval.ann_candidates": 50})) != stage_one_key(base)
    assert stage_one_key(trial_config(base, {"fusion.weights.text": 1.0})) != stage_one_key(base)


def test_frame_cache_builds_each_stage_one_setting_once_and_drops_the_oldest():
    built = []

    def build(config):
        built.append(config)
        return f"frames-{config.retrieval.ann_candidates}"

    cache = FrameCache(build, max_entries=2)
    a, b, c = (trial_config(RunConfig(), {"retrieval.ann_candidates": n}) for n in (10, 20, 30))
    assert cache.get(a) == ("frames-10", False)
    assert cache.get(trial_config(a, {"features.use_user": False, "ranker.num_leaves": 8})) == ("frames-10", True)
    assert all(c.features.disabled_groups == () for c in built)  # frames always hold every group
    cache.get(b), cache.get(c)
    assert cache.get(a) == ("frames-10", False) and len(built) == 4  # a was evicted
    assert FrameCache(build, 0).get(a)[1] is False and FrameCache(build, 0).get(a)[1] is False


def test_select_features_drops_groups_and_rejects_unknown_ones():
    names = ["retrieval_rank", "cos_text_last", "item_log_count", "user_log_history"]
    assert select_features(names, ["text", "user"]) == ["retrieval_rank", "item_log_count"]
    with pytest.raises(ValueError, match="texts"):
        select_features(names, ["texts"])
    with pytest.raises(ValueError, match="no feature"):
        select_features(["cos_text_last"], ["text"])


class FakeTrial:
    def __init__(self, prune: bool) -> None:
        self.prune, self.reports = prune, []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune


def test_validation_frames_never_read_test_and_pruning_stops_after_the_short_fit(tiny):
    from fuserank.jobs.train_evaluate import prepare

    _, path = tiny
    config = load_config(path)
    data = prepare(config)
    item_ids = data.items[schema.ITEM_ID].to_list()
    # A test part no stage could use (unknown items, far future): the frames must not change.
    poisoned = pl.DataFrame({"user_id": ["nobody"], "item_id": ["no-such-item"], "timestamp": [2**40], "rating": [None]},
                            schema=schema.INTERACTIONS)
    clean = validation_frames(data.cutoffs, item_ids, data.content, config)
    poisoned_test = dataclasses.replace(data.cutoffs.test, targets=poisoned, history=poisoned)
    dirty = validation_frames(dataclasses.replace(data.cutoffs, test=poisoned_test), item_ids, data.content, config)
    assert clean.fit.equals(dirty.fit) and clean.valid.equals(dirty.valid)

    cache = FrameCache(lambda c: validation_frames(data.cutoffs, item_ids, data.content, c), 2)
    valid = data.cutoffs.valid.targets
    kept = run_trial(FakeTrial(prune=False), config, cache, valid, len(item_ids), prune_rounds=5)
    trial = FakeTrial(prune=True)
    pruned = run_trial(trial, config, cache, valid, len(item_ids), prune_rounds=5)
    assert not kept.pruned and pruned.pruned and pruned.metrics["stage1_cached"] == 1.0
    assert trial.reports == [(5, pruned.value)] and pruned.metrics["ranker_best_iteration"] <= 5
    assert kept.metrics["ranker_best_iteration"] > 5
    assert not any(k.startswith("test_") for k in kept.metrics)


def test_tune_records_a_resumable_study_and_tests_the_best_config_once(tiny):
    root, path = tiny
    assert main(["tune", "--config", str(path), "--quiet"]) == 0
    config = load_config(path)
    study = optuna.load_study(study_name="fuserank", storage=config.tune.storage)
    assert len(study.trials) == 3

    runs = tracking.search_runs(config.tracking, "tune-test")
    parent = next(r for r in runs if r["tags"].get("kind") == "tune")
    trials = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["run_id"]]
    assert len(trials) == 3 and all("valid_ndcg_at_10" in r["metrics"] for r in trials)
    assert not any(k.startswith("test_") for r in trials for k in r["metrics"])  # trials never see test
    assert parent["metrics"]["best_valid_ndcg_at_10"] == pytest.approx(study.best_value)

    folder = root / "outputs" / "tune-fuserank"
    for name in ("best_config.yaml", "optimisation_history.png", "trials.csv"):
        assert (folder / name).is_file(), name
    # Importances need two complete trials; how many the median pruner stops depends on the data
    # (test_plots covers both sides of the rule).
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert (folder / "param_importances.png").is_file() == (len(complete) >= 2)
    best = load_config(folder / "best_config.yaml")
    assert best.ranker.learning_rate == study.best_params["ranker.learning_rate"]
    assert best.retrieval.ann_candidates == study.best_params["retrieval.ann_candidates"]
    tested = [r for r in runs if r["tags"].get("tuned_by") == parent["run_id"]]
    assert len(tested) == 1
    # Same protocol, seed and config: the test run reproduces the best trial's validation score.
    assert tested[0]["metrics"]["valid_ndcg_at_10"] == pytest.approx(study.best_value, abs=1e-12)
    assert "test_ndcg_at_10" in tested[0]["metrics"] and tested[0]["tags"]["model_hash"]

    # Rerunning continues the same study (and may skip the test run).
    assert main(["tune", "--config", str(path), "--quiet", "--set", "tune.n_trials=1",
                 "--set", "tune.evaluate_best=false"]) == 0
    assert len(optuna.load_study(study_name="fuserank", storage=config.tune.storage).trials) == 4


def test_a_continued_study_is_bound_to_its_data_and_config_and_tests_its_best_once(tiny, capsys):
    root, path = tiny
    config = load_config(path)
    own = ["--config", str(path), "--quiet", "--set", f"tune.storage=sqlite:///{root / 'mlruns' / 'bound.db'}",
           "--set", "tune.study_name=bound", "--set", "run_name=tune-bound"]

    def tested_runs() -> list[dict]:
        return [r for r in tracking.search_runs(config.tracking, "tune-test")
                if r["tags"].get("study_name") == "bound" and r["tags"].get("kind") == "train-evaluate"]

    assert main(["tune", *own, "--set", "tune.n_trials=2"]) == 0
    first = json.loads((root / "outputs" / "tune-bound" / "summary.json").read_text())
    assert first["best_tested_now"] == 1.0 and len(tested_runs()) == 1
    # A rerun whose best trial is unchanged reports the recorded test metrics: test is looked at once.
    assert main(["tune", *own, "--set", "tune.n_trials=0"]) == 0
    again = json.loads((root / "outputs" / "tune-bound" / "summary.json").read_text())
    assert again["best_tested_now"] == 0.0 and len(tested_runs()) == 1
    assert again["best_test_ndcg_at_10"] == first["best_test_ndcg_at_10"]
    capsys.readouterr()

    # Other data (one interaction fewer) or another base config: a clear error naming the study.
    interactions = pl.read_parquet(config.data.interactions_path)
    other = root / "fewer_interactions.parquet"
    interactions.head(interactions.height - 1).write_parquet(other)
    assert main(["tune", *own, "--set", f"data.interactions_path={other}"]) == 1
    err = capsys.readouterr().err
    assert "Optuna study 'bound' in sqlite:///" in err and "data_hash" in err and "tune.study_name=bound-" in err
    assert main(["tune", *own, "--set", "ranker.n_estimators=50"]) == 1
    err = capsys.readouterr().err
    assert "ranker.n_estimators=60 (this run: 50)" in err and "data_hash" not in err
    study = optuna.load_study(study_name="bound", storage=f"sqlite:///{root / 'mlruns' / 'bound.db'}")
    assert len(study.trials) == 2 and study.user_attrs["tested_trial"] == study.best_trial.number
    # Bookkeeping keys (trial count, output folder, whether to test) may change between reruns.
    assert main(["tune", *own, "--set", "tune.n_trials=0", "--set", "tune.evaluate_best=false",
                 "--set", f"output_dir={root / 'elsewhere'}"]) == 0
