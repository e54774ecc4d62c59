"""Concurrency: jobs sharing one MLflow sqlite store or one Optuna study at the same time.

Two train-evaluate processes started together on a new store both finish and both runs are
recorded; two `fuserank tune` processes on one study lose no trial and repeat none. The unit
test below shows the seeding rule that makes the second hold, without processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuserank.config import RunConfig, with_overrides
from fuserank.jobs.tuning import create_study, sample_params
from fuserank.jobs.study import trial_position, trial_sampler
from tiny_project import write_project


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`fuserank <args>` in its own process (spawned, so no OpenMP state is forked)."""
    code = f"import sys\nfrom fuserank.cli import main\nsys.exit(main({args!r}))\n"
    environ = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def test_two_workers_sharing_a_study_draw_different_trials_and_a_lone_worker_stays_reproducible(tmp_path):
    import optuna

    config = with_overrides(RunConfig(), [f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}",
                                          "tune.n_startup_trials=2"])
    one, two = create_study(config.tune, config.seed), create_study(config.tune, config.seed)

    def draw(study):
        trial = study.ask()  # the storage hands out trial numbers one at a time
        study.sampler = trial_sampler(study, trial.number, config.tune, config.seed)
        return trial, sample_params(trial, config.tune, ["text", "image"], behaviour=True)

    first, params_one = draw(one)
    second, params_two = draw(two)  # while the first is still running elsewhere
    assert (first.number, second.number) == (0, 1)
    assert params_one != params_two
    one.tell(first, 0.5)
    two.tell(second, state=optuna.trial.TrialState.FAIL)  # e.g. a worker killed mid-trial
    third, _ = draw(one)
    # A failed trial takes no position: the third trial is seeded as the second of a lone worker.
    assert trial_position(one, third.number) == 1


@pytest.mark.slow  # two tiny train-evaluate jobs at once (~40 s on 2 cores)
def test_two_train_evaluate_jobs_on_one_new_sqlite_store_both_finish_and_are_recorded(tmp_path):
    from mlflow.tracking import MlflowClient

    config = write_project(tmp_path, "together")
    jobs = [start(["train-evaluate", "--config", str(config), "--quiet", "--set", f"run_name=job-{i}"], tmp_path)
            for i in range(2)]
    for job in jobs:
        finish(job)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name == "together"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job-0", "job-1"]
    assert all(r.info.status == "FINISHED" and "test_ndcg_at_10" in r.data.metrics for r in runs)


@pytest.mark.slow  # two tiny tuning jobs at once (~60 s on 2 cores)
def test_two_tune_jobs_on_one_study_lose_no_trial_and_repeat_none(tmp_path):
    import optuna

    tune = {"storage": "sqlite:///mlruns/optuna.db", "n_trials": 3, "n_startup_trials": 2, "prune_rounds": 0,
            "ann_candidates": [20, 30], "fusion_weights": [0.5, 1.0], "evaluate_best": False}
    config = write_project(tmp_path, "shared", tune=tune)
    jobs = [start(["tune", "--config", str(config), "--quiet", "--set", f"run_name=worker-{i}"], tmp_path)
            for i in range(2)]
    for job in jobs:
        finish(job)
    study = optuna.load_study(study_name="fuserank", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    state = optuna.trial.TrialState
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state in (state.COMPLETE, state.PRUNED) for t in study.trials)
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(drawn)) == 6, "two workers drew the same trial"
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
