"""The model registry as the source of A/B arms: every train-evaluate registers a version,
`fuserank promote` sets aliases, and `fuserank export` serves arms named by alias, by version
number or by run id, recording in the manifest which version, run and booster each arm served."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest
import yaml

from fuserank import schema
from fuserank.cli import main
from fuserank.config import load_config
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.jobs.export import export
from tiny_models import save_tiny_bert

U, I = schema.USER_ID, schema.ITEM_ID


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs on one tiny catalog whose rankers differ (trees and depth), in one tmp store."""
    root = tmp_path_factory.mktemp("registry")
    items, interactions = generate_catalog(n_items=100, n_users=80, seed=9)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    config = {
        "seed": 3,
        "output_dir": str(root / "outputs"),
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(root / "cache"), "text_model": str(model)},
        "split": {"label_cutoffs": 2},
        "retrieval": {"ann_candidates": 30, "popular_candidates": 10},
        "ranker": {"n_estimators": 40, "min_child_samples": 10, "n_jobs": 1},
        "export": {"top_k": 20, "salt": "registry"},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                     "artifact_root": str(root / "mlruns" / "artifacts"), "experiment": "registry"},
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    ids = {}
    for name, extra in (("a", []), ("b", ["--set", "ranker.n_estimators=3", "--set", "ranker.num_leaves=4"])):
        assert main(["train-evaluate", "--config", str(config_path), "--quiet", "--set", f"run_name={name}",
                     *extra]) == 0
        ids[name] = json.loads((root / "outputs" / name / "metrics.json").read_text())["run_id"]
    return root, config_path, ids


def booster_sha(root, name: str) -> str:
    return hashlib.sha256((root / "outputs" / name / "model" / "model.txt").read_bytes()).hexdigest()


def test_each_run_is_a_version_and_promote_moves_aliases(two_runs, capsys):
    root, config_path, ids = two_runs
    common = ["--config", str(config_path), "--quiet"]
    assert main(["promote", ids["a"], "--alias", "champion", *common]) == 0
    assert capsys.readouterr().out.strip() == f"models:/fuserank@champion -> version 1 (run {ids['a']})"
    assert main(["promote", ids["b"], "--alias", "champion", *common]) == 0
    assert capsys.readouterr().out.strip().endswith(f"(run {ids['b']}; was version 1)")
    assert main(["promote", ids["a"], "--alias", "champion", *common]) == 0
    assert main(["promote", ids["b"], "--alias", "challenger", *common]) == 0
    capsys.readouterr()
    assert main(["promote", "0" * 32, "--alias", "champion", *common]) == 1
    assert "has no version of registered model 'fuserank'" in capsys.readouterr().err
    assert main(["promote", ids["a"], "--alias", "v2", *common]) == 1
    assert "reserves" in capsys.readouterr().err


def test_export_serves_two_arms_from_two_aliases_and_records_each_version(two_runs):
    root, config_path, ids = two_runs
    for run, alias in (("a", "champion"), ("b", "challenger")):  # independent of the test above
        assert main(["promote", ids[run], "--alias", alias, "--config", str(config_path), "--quiet"]) == 0
    arms = ["export.arms={A: 'models:/fuserank@champion', B: 'models:/fuserank/2', C: '%s'}" % ids["a"],
            "export.shares={A: 0.4, B: 0.4, C: 0.2}"]
    manifest, folder = export(load_config(config_path, arms), root / "ab")
    # What each model alone serves every user, as the reference.
    single = {run: pl.read_parquet(export(load_config(config_path), root / f"only-{run}", run_id=ids[run])[1]
                                   / "ranked_lists.parquet").select(U, I, schema.RANK, schema.SCORE)
              for run in ("a", "b")}
    differ = single["a"].join(single["b"], on=[U, schema.RANK], suffix="_b").filter(pl.col(I) != pl.col(f"{I}_b"))
    assert differ[U].n_unique() > 20  # the two models rank differently, so the check below can fail
    lists = pl.read_parquet(folder / "ranked_lists.parquet")
    for arm, run in (("A", "a"), ("B", "b"), ("C", "a")):
        mine = lists.filter(pl.col(schema.ARM) == arm)
        assert mine[U].n_unique() > 5, arm
        expected = single[run].join(mine.select(U).unique(), on=U, how="semi").sort(U, schema.RANK)
        assert mine.select(U, I, schema.RANK, schema.SCORE).sort(U, schema.RANK).equals(expected), arm
        assert set(mine[schema.RUN_ID]) == {ids[run]}
    facts = manifest["arms"]
    assert facts["A"]["registered_model"] == {"name": "fuserank", "version": "1", "alias": "champion",
                                              "uri": "models:/fuserank/1"}
    assert facts["B"]["registered_model"] == {"name": "fuserank", "version": "2", "alias": None,
                                              "uri": "models:/fuserank/2"}
    assert facts["C"]["source"] == f"run:{ids['a']}" and facts["C"]["registered_model"]["version"] == "1"
    for arm, run in (("A", "a"), ("B", "b"), ("C", "a")):
        assert facts[arm]["run_id"] == ids[run] and facts[arm]["booster_sha256"] == booster_sha(root, run)
        assert facts[arm]["model_version"] == booster_sha(root, run)[:12]
    assert manifest["run_id"] == ids["a"]  # no --run-id: the first arm's run supplies the data


def test_run_id_may_be_a_model_uri_and_unknown_aliases_are_clear_errors(two_runs, capsys):
    root, config_path, ids = two_runs
    assert main(["promote", ids["b"], "--alias", "challenger", "--config", str(config_path), "--quiet"]) == 0
    manifest, _ = export(load_config(config_path), root / "uri", run_id="models:/fuserank@challenger")
    facts = manifest["arms"]["treatment"]
    assert facts["source"] == "models:/fuserank@challenger" and facts["run_id"] == ids["b"]
    assert facts["registered_model"]["version"] == "2" and facts["booster_sha256"] == booster_sha(root, "b")
    code = main(["export", "--config", str(config_path), "--quiet", "--run-id", "models:/fuserank@nobody"])
    assert code == 1 and "models:/fuserank@nobody" in capsys.readouterr().err
    code = main(["export", "--config", str(config_path), "--quiet", "--set", "export.arms={t: 'models:/x/y'}",
                 "--set", "export.shares={t: 1.0}"])
    assert code == 1 and "unknown source 'models:/x/y'" in capsys.readouterr().err
