"""`fuserank tune` with dask.enabled: trials run as tasks on a 2-worker LocalCluster, all against
one Optuna sqlite storage."""

from __future__ import annotations

import os

import pytest
import yaml

from fuserank.config import DaskConfig, load_config
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.jobs.tuning import tune
from tiny_models import save_tiny_bert

pytest.importorskip("distributed")

from fuserank.jobs.distributed import dask_client  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskConfig(enabled=True, n_workers=2, threads_per_worker=1)) as c:
        yield c


@pytest.mark.slow  # every worker prepares the tiny catalog and runs two trials (~1-2 min on busy cores)
def test_trials_run_on_the_workers_against_one_storage(client, tmp_path):
    import optuna

    items, interactions = generate_catalog(n_items=150, n_users=100, seed=3)
    items_path, interactions_path = write_catalog(tmp_path / "catalog", items, interactions)
    model = save_tiny_bert(tmp_path / "bert", words=["a", "story", "number", *GENRES])
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    values = {
        "seed": 7, "output_dir": str(tmp_path / "outputs"),
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(tmp_path / "cache"), "text_model": str(model)},
        "split": {"label_cutoffs": 1},
        "retrieval": {"ann_candidates": 30, "popular_candidates": 10},
        "ranker": {"n_estimators": 30, "min_child_samples": 10, "early_stopping_rounds": 10, "n_jobs": 1},
        "tracking": {"enabled": False},
        "tune": {"storage": storage, "n_trials": 4, "n_startup_trials": 1, "prune_rounds": 0,
                 "ann_candidates": [20, 30], "fusion_weights": [0.5, 1.0], "evaluate_best": False},
        "dask": {"enabled": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    summary, folder = tune(load_config(path, []))
    study = optuna.load_study(study_name="fuserank", storage=storage)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == len(finished) == 4 == summary["n_complete"]
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2 and all(not w.endswith(f":{os.getpid()}") for w in workers)  # two worker processes
    assert (folder / "best_config.yaml").is_file()
    assert load_config(folder / "best_config.yaml").retrieval.ann_candidates in (20, 30)
