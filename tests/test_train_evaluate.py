"""End to end on a tiny generated catalog: CLI, outputs, MLflow run, planted answer, determinism."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from fuserank import schema
from fuserank.cli import main
from fuserank.config import load_config
from fuserank.data.split import leave_last_out
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.jobs.train_evaluate import train_evaluate
from tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Writes a catalog, a tiny text model and a YAML config; runs the CLI once."""
    root = tmp_path_factory.mktemp("e2e")
    items, interactions = generate_catalog(n_items=200, n_users=150, seed=3)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    config = {
        "seed": 7,
        "output_dir": str(root / "outputs"),
        "run_name": "tiny",
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(root / "cache"), "text_model": str(model)},
        "retrieval": {"ann_candidates": 60, "popular_candidates": 10},
        "ranker": {"n_estimators": 200, "min_child_samples": 10},
        "eval": {"top_k": 20},
        "tracking": {
            "tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            "artifact_root": str(root / "mlruns" / "artifacts"),
            "experiment": "e2e",
        },
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["train-evaluate", "--config", str(config_path), "--quiet"]) == 0
    return root, config_path, interactions


def test_cli_writes_every_output(tiny_run, capsys):
    root, _, _ = tiny_run
    folder = root / "outputs" / "tiny"
    for name in ("ranked_lists.parquet", "per_user_metrics.parquet", "metrics.json", "config.yaml",
                 "model/model.txt", "model/features.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("test_stage1_recall", "test_ndcg_at_10", "test_recall_at_10", "test_mrr_at_10", "test_map_at_50",
                "test_popular_ndcg_at_10", "test_retrieval_ndcg_at_10", "valid_ndcg_at_10", "test_coverage_at_10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert not list(folder.rglob("*.tmp"))


def test_ranked_lists_follow_the_contract_and_skip_history(tiny_run):
    root, _, interactions = tiny_run
    ranked = pl.read_parquet(root / "outputs" / "tiny" / "ranked_lists.parquet")
    assert dict(ranked.schema) == schema.RANKED_LIST
    split = leave_last_out(interactions)
    assert set(ranked[schema.USER_ID].unique()) == set(split.test[schema.USER_ID])
    per_user = ranked.group_by(schema.USER_ID).agg(pl.len(), pl.col(schema.RANK).min().alias("first"),
                                                     pl.col(schema.ITEM_ID).n_unique().alias("distinct"))
    assert per_user["len"].max() <= 20 and per_user["first"].min() == 1
    assert (per_user["len"] == per_user["distinct"]).all()
    history = pl.concat([split.train, split.valid]).select(schema.USER_ID, schema.ITEM_ID)
    assert ranked.join(history, on=[schema.USER_ID, schema.ITEM_ID]).is_empty()


def test_planted_taste_is_found_by_both_stages(tiny_run):
    # 150 users are too few to tell ranker and retrieval apart (the slow ML-100K test does that);
    # both must clearly beat most-popular, which ignores the users' favourite genre.
    root, _, _ = tiny_run
    metrics = json.loads((root / "outputs" / "tiny" / "metrics.json").read_text())
    assert metrics["test_ndcg_at_10"] > 1.5 * metrics["test_popular_ndcg_at_10"]
    assert metrics["test_retrieval_ndcg_at_10"] > 1.5 * metrics["test_popular_ndcg_at_10"]
    assert metrics["test_stage1_recall"] > 0.5


def test_mlflow_run_holds_metrics_params_and_artifacts(tiny_run):
    from mlflow.tracking import MlflowClient

    root, _, _ = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tiny'")
    assert run.info.status == "FINISHED"
    metrics = json.loads((root / "outputs" / "tiny" / "metrics.json").read_text())
    assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(metrics["test_ndcg_at_10"])
    # the slices (issue 17): by the target's kind and the user's history length, with CIs
    for key in ("test_slice_warm_ndcg_at_10", "test_slice_warm_recall_at_10_ci_low", "test_slice_cold_n_users",
                "test_slice_history_6_20_n_users"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]), key
    assert metrics["run_id"] == run.info.run_id
    assert run.data.params["ranker.learning_rate"] == "0.05"
    assert run.data.tags["data_hash"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "outputs", "evaluation", "ranker_text"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "ranker_text")} == {
        "ranker_text/model.txt", "ranker_text/features.json"}


def test_same_config_and_seed_give_identical_metrics_and_lists(tiny_run):
    root, config_path, _ = tiny_run
    config = load_config(config_path, ["run_name=again", "tracking.enabled=false"])
    metrics, folder = train_evaluate(config)
    first = json.loads((root / "outputs" / "tiny" / "metrics.json").read_text())
    for key, value in metrics.items():
        if key.startswith(("test_", "valid_")):
            assert value == first[key], key
    assert (folder / "ranked_lists.parquet").read_bytes() == (root / "outputs" / "tiny" / "ranked_lists.parquet").read_bytes()


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("retrieval:\n  n_candidate: 10\n")
    assert main(["train-evaluate", "--config", str(bad), "--quiet"]) == 2
    assert "n_candidate" in capsys.readouterr().err


def test_bad_catalog_is_a_clear_error_naming_file_and_column(tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("item_id,text\na,first\nb,second\n")
    interactions = tmp_path / "interactions.csv"
    interactions.write_text("user_id,item_id,timestamp\nu,a,1\nu,zz,2\n")
    code = main(["train-evaluate", "--quiet", "--set", "data.dataset=catalog",
                 "--set", f"data.items_path={items}", "--set", f"data.interactions_path={interactions}"])
    err = capsys.readouterr().err
    assert code == 1
    assert "interactions.csv" in err and "row 2" in err and "item_id" in err


def test_ablate_command_reports_every_modality_and_logs_the_table(tiny_run, capsys):
    from mlflow.tracking import MlflowClient

    root, config_path, _ = tiny_run
    assert main(["ablate", "--config", str(config_path), "--quiet", "--set", "run_name=ablation"]) == 0
    out = capsys.readouterr().out
    table = pl.read_csv(root / "outputs" / "ablation" / "ablation.csv")
    variants = table["variant"].to_list()
    assert [v for v in variants if not v.startswith("baseline_")] == ["full", "without_text", "without_behaviour"]
    assert {"baseline_popular", "baseline_content_knn", "baseline_random"} <= set(variants)
    assert {"warm_test_ndcg_at_10", "cold_delta_ci_low", "cold_users"} <= set(table.columns)
    assert "without_behaviour" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], "tags.kind = 'ablation'")
    assert len(runs) == 1
    assert runs[0].data.metrics["without_behaviour_test_ndcg_at_10"] == table.filter(
        pl.col("variant") == "without_behaviour")["test_ndcg_at_10"][0]


def test_the_run_registers_its_ranker_and_records_its_datasets(tiny_run):
    import hashlib

    from mlflow.tracking import MlflowClient

    root, _, interactions = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], "attributes.run_name = 'tiny'")
    # The ranker is a version of registered model "fuserank", tagged with the data and headline metrics.
    (version,) = client.search_model_versions(f"name = 'fuserank' and run_id = '{run.info.run_id}'")
    booster = (root / "outputs" / "tiny" / "model" / "model.txt").read_bytes()
    assert version.tags["model_hash"] == hashlib.sha256(booster).hexdigest() == run.data.tags["model_hash"]
    assert version.tags["data_hash"] == run.data.tags["data_hash"]
    assert float(version.tags["test_ndcg_at_10"]) == pytest.approx(run.data.metrics["test_ndcg_at_10"], rel=1e-5)
    assert run.data.tags["registered_model"] == f"models:/fuserank/{version.version}"
    # The registered model is the booster the run wrote, with its feature list and base as metadata.
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/fuserank/{version.version}",
                                                dst_path=str(root / "registered"), tracking_uri=client.tracking_uri)
    spec = yaml.safe_load(open(f"{local}/MLmodel", encoding="utf-8"))
    features = json.loads((root / "outputs" / "tiny" / "model" / "features.json").read_text())
    assert spec["metadata"] == features and "base" in spec["metadata"] and spec["metadata"]["feature_names"]
    assert open(f"{local}/{spec['flavors']['lightgbm']['data']}", "rb").read() == booster
    # Datasets: items and history for training, test targets for evaluation, with digests and counts.
    inputs = {(d.tags[0].value if d.tags[0].key == "mlflow.data.context" else d.tags[1].value, d.dataset.name): d
              for d in run.inputs.dataset_inputs}
    names = sorted(inputs)
    assert names == [("evaluation", "catalog interactions (test targets, leave_last_out)"),
                     ("training", "catalog interactions (history, leave_last_out)"), ("training", "catalog items")]
    split = leave_last_out(interactions)
    targets = inputs[names[0]].dataset
    assert json.loads(targets.profile)["num_rows"] == split.test.height
    history = inputs[names[1]].dataset
    assert json.loads(history.profile)["num_rows"] == split.train.height + split.valid.height
    assert json.loads(history.source)["uri"].startswith(str(root / "catalog")) and history.source_type == "local"
    assert "user_id" in history.schema and len(history.digest) == 16
    assert inputs[names[2]].dataset.digest == run.data.tags["items_hash"][:16]
