"""Crash safety: a child process is SIGKILLed at a fixed point (text encoding, LLM generation,
tuning, export), then the work is rerun and compared with an uninterrupted run.

The kill is deterministic: the child installs a hook (KILL_HOOK below) before running its job.
`write:<module>:<n>` makes the n-th atomic write of that module write its bytes under the
temporary name and then SIGKILL the process before the rename (a kill in mid-write);
`call:<module>:<attr>:<n>` SIGKILLs the process when that function is called for the n-th time.

Checked each time: the child died of SIGKILL; every file under its final name is complete; the
rerun reuses what was finished (caches, completed trials) and gives the uninterrupted result;
an MLflow run of the killed process is not FINISHED, and the rerun marks it KILLED. What a killed writer leaves is only its
hidden temporary (`.<name>.*.<pid>.tmp`), which no reader ever matches and the next writer
to that folder removes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from fuserank import schema
from tiny_models import save_tiny_bert, save_tiny_llama
from tiny_project import write_project

KILL_HOOK = r'''
import importlib, os, signal, sys, tempfile
from pathlib import Path

import fuserank.atomic as atomic

kind, module, *rest = os.environ["FUSERANK_TEST_KILL"].split(":")
target = importlib.import_module(module)
calls = [0]
if kind == "write":
    at = int(rest[0])

    def write_atomic(path, write):
        calls[0] += 1
        if calls[0] < at:
            return atomic.write_atomic(path, write)
        path = Path(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=atomic.temp_suffix(), dir=path.parent)
        os.close(fd)
        write(Path(name))
        os.kill(os.getpid(), signal.SIGKILL)

    target.write_atomic = write_atomic
else:
    attr, at = rest[0], int(rest[1])
    original = getattr(target, attr)

    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(target, attr, hooked)
'''


def run_killed(body: str, kill: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run KILL_HOOK + `body` in a fresh interpreter; it must die of SIGKILL."""
    environ = os.environ | {"FUSERANK_TEST_KILL": kill, "OMP_WAIT_POLICY": "PASSIVE"} | (env or {})
    done = subprocess.run([sys.executable, "-c", KILL_HOOK + body], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def cli(args: list[str]) -> str:
    return f"from fuserank.cli import main\nsys.exit(main({args!r}))\n"


def stray_temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


# --- encoding and generation: library calls, seconds each -----------------------------------------

TEXTS = [f"item {i} about {w}" for i, w in enumerate(["cat", "dog", "tax", "red", "blue", "green"] * 5)]


def test_kill_during_text_encoding_resumes_from_the_finished_shards(tmp_path):
    from fuserank.encoders.text import TextEncoder

    model = save_tiny_bert(tmp_path / "bert")
    cache = tmp_path / "cache"
    body = (f"from fuserank.encoders.text import TextEncoder\n"
            f"TextEncoder(Path({str(model)!r}), batch_size=4, device='cpu', cache_dir=Path({str(cache)!r}),"
            f" chunk_batches=1).encode_texts({TEXTS!r})\n")
    run_killed(body, "write:fuserank.encoders.cache:3", tmp_path)

    shards = sorted(cache.rglob("*.npz"))
    assert len(shards) == 2  # two finished shards under their final names, the third was cut off
    for shard in shards:
        with np.load(shard, allow_pickle=False) as data:
            assert len(data["keys"]) == 4
    assert len(stray_temps(cache)) == 1  # the killed writer's temp: hidden, never matched as a shard

    resumed = TextEncoder(model, batch_size=4, device="cpu", cache_dir=cache, chunk_batches=1)
    rows: list[int] = []
    resumed.model.register_forward_hook(lambda m, a, k, out: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    vectors = resumed.encode_texts(TEXTS)
    assert sum(rows) == len(TEXTS) - 8  # the 8 cached texts were not encoded again
    expected = TextEncoder(model, batch_size=4, device="cpu").encode_texts(TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    assert not stray_temps(cache)  # the rerun swept the dead writer's temp


def test_kill_during_llm_generation_resumes_from_the_finished_shards(tmp_path):
    from fuserank.encoders import prompts
    from fuserank.encoders.llm import generate, load_causal_lm

    model = save_tiny_llama(tmp_path / "llama", seed=0)
    cache = tmp_path / "llm-cache"
    titles = [f"title number {i}" for i in range(12)]
    body = (f"from fuserank.encoders import prompts\nfrom fuserank.encoders.llm import generate, load_causal_lm\n"
            f"lm = load_causal_lm(Path({str(model)!r}), device='cpu', threads=1)\n"
            f"generate(lm, [prompts.item_description(t) for t in {titles!r}], Path({str(cache)!r}),"
            f" max_new_tokens=5, batch_size=2)\n")
    run_killed(body, "write:fuserank.encoders.llm:3", tmp_path)

    shards = sorted(cache.glob("*.json"))
    assert len(shards) == 2 and all(len(json.loads(s.read_text())["keys"]) == 2 for s in shards)
    assert len(stray_temps(cache)) == 1

    lm = load_causal_lm(model, device="cpu", threads=1)
    asks = [prompts.item_description(t) for t in titles]
    resumed = generate(lm, asks, cache, max_new_tokens=5, batch_size=2)
    assert not stray_temps(cache)
    assert lm.calls == (len(titles) - 4) // 2  # only the batches that were not finished
    assert resumed == generate(lm, asks, None, max_new_tokens=5, batch_size=2)


# --- tuning and export: whole CLI jobs on a tiny catalog (slow) ----------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny catalog and one config file with paths relative to the folder a job runs in."""
    root = tmp_path_factory.mktemp("crash")
    path = write_project(
        root, "crash",
        tune={"storage": "sqlite:///mlruns/optuna.db", "n_trials": 3, "n_startup_trials": 1, "prune_rounds": 0,
              "ann_candidates": [20, 30], "fusion_weights": [0.5, 1.0], "evaluate_best": False},
        export={"arms": {"control": "popular", "treatment": "run"}, "shares": {"control": 0.5, "treatment": 0.5},
                "holdout": 0.0, "top_k": 10, "batch_users": 10, "salt": "crash"},
    )
    return root, path


def run_cli(args: list[str], cwd: Path) -> None:
    """A job in its own process: MLflow caches one store per relative URI within a process."""
    environ = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", "import sys\n" + cli(args)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def mlflow_runs(folder: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crash")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def trials(folder: Path) -> list:
    import optuna

    study = optuna.load_study(study_name="fuserank", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
    return study.trials


def clean_and_killed(root: Path, command: str, config: Path, hook: str) -> tuple[Path, Path]:
    """Run `fuserank <command>` to the end in one new folder and SIGKILL it at `hook` in another."""
    clean, killed = root / f"{command}-clean", root / f"{command}-killed"
    clean.mkdir()
    killed.mkdir()
    run_cli([command, "--config", str(config), "--quiet"], clean)
    run_killed(cli([command, "--config", str(config), "--quiet"]), hook, killed)
    return clean, killed


@pytest.mark.slow  # three tuning jobs (~1 min on 2 cores)
def test_kill_during_tuning_keeps_finished_trials_and_the_rerun_completes(project):
    import optuna

    root, config = project
    clean, killed = clean_and_killed(root, "tune", config, "call:fuserank.jobs.tuning:run_trial:2")

    done = trials(killed)
    state = optuna.trial.TrialState
    assert [t.state for t in done] == [state.COMPLETE, state.RUNNING]  # the killed trial never completes
    reference = trials(clean)
    assert done[0].params == reference[0].params and done[0].value == reference[0].value
    statuses = sorted(r.info.status for r in mlflow_runs(killed))
    assert "FINISHED" not in [r.info.status for r in mlflow_runs(killed) if not r.data.tags.get("mlflow.parentRunId")]
    assert statuses.count("RUNNING") >= 1
    folder = killed / "outputs" / "crash"  # tune writes to output_dir/run_name
    assert not (folder / "best_config.yaml").exists() and not (folder / "summary.json").exists()
    assert not stray_temps(killed / "outputs")

    run_cli(["tune", "--config", str(config), "--quiet"], killed)
    resumed = trials(killed)
    assert resumed[0].number == 0 and resumed[0].value == reference[0].value  # not redone
    assert resumed[1].state == state.FAIL  # the killed process's trial, failed on resume
    assert "RUNNING" not in [r.info.status for r in mlflow_runs(killed)]  # its runs were marked KILLED
    assert sum(t.state == state.COMPLETE for t in resumed) == 1 + 3
    # The resumed study draws the trials the uninterrupted one drew, in order (plus one more).
    finished = [t for t in resumed if t.state == state.COMPLETE]
    assert [(t.params, t.value) for t in finished[:3]] == [(t.params, t.value) for t in reference]
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert best["run_name"] == "crash-best"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_complete"] == 4 and summary["best_valid_ndcg_at_10"] == max(
        t.value for t in resumed if t.state == state.COMPLETE)


@pytest.mark.slow  # a training run and four exports (~1 min on 2 cores)
def test_kill_during_export_leaves_the_previous_export_and_the_rerun_matches(project):
    root, config = project
    work = root / "export"
    work.mkdir()
    run_cli(["train-evaluate", "--config", str(config), "--quiet"], work)
    run_id = json.loads((work / "outputs" / "crash" / "metrics.json").read_text())["run_id"]
    export = ["export", "--config", str(config), "--quiet", "--run-id", run_id]
    run_cli([*export, "--out", "clean"], work)
    clean = {p.name: p.read_bytes() for p in (work / "clean").iterdir()}

    # Killed while streaming the second batch of lists: nothing appears under the final name.
    run_killed(cli([*export, "--out", "fresh"]), "call:fuserank.jobs.export:_count:2", work)
    assert not (work / "fresh").exists()
    # Killed while replacing an earlier export: the earlier export stays whole.
    run_cli([*export, "--out", "again"], work)
    before = {p.name: p.read_bytes() for p in (work / "again").iterdir()}
    run_killed(cli([*export, "--out", "again"]), "call:fuserank.jobs.export:_count:2", work)
    assert {p.name: p.read_bytes() for p in (work / "again").iterdir()} == before
    leftovers = [p.name for p in work.iterdir() if p.name.startswith(".")]
    assert leftovers and all(n.endswith(".tmp") for n in leftovers)  # hidden, never read

    run_cli([*export, "--out", "fresh"], work)
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]  # the rerun swept the dead one's
    fresh = {p.name: p.read_bytes() for p in (work / "fresh").iterdir()}
    assert fresh.keys() == clean.keys()
    for name in ("ranked_lists.parquet", "assignments.parquet"):
        assert fresh[name] == clean[name], name
    lists = pl.read_parquet(work / "fresh" / "ranked_lists.parquet")
    assert lists[schema.USER_ID].n_unique() == 70


@pytest.mark.slow  # two training runs (~40 s on 2 cores)
def test_kill_during_training_leaves_a_run_that_is_not_finished_and_the_rerun_matches(project):
    root, config = project
    clean, killed = clean_and_killed(root, "train-evaluate", config, "call:fuserank.evaluation.protocol:fit_ranker:1")
    (run,) = mlflow_runs(killed)
    assert run.info.status != "FINISHED"
    assert not (killed / "outputs" / "crash" / "metrics.json").exists()
    run_cli(["train-evaluate", "--config", str(config), "--quiet"], killed)
    for name in ("ranked_lists.parquet", "model/model.txt"):
        assert (killed / "outputs" / "crash" / name).read_bytes() == (clean / "outputs" / "crash" / name).read_bytes()
    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(killed)}
    assert statuses.pop(run.info.run_id) == "KILLED"  # the rerun ended the dead process's run
    assert list(statuses.values()) == ["FINISHED"]
