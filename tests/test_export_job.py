"""`fuserank export` end to end on a tiny tracked run: arms, guarantees, planted taste, determinism."""

from __future__ import annotations

import hashlib
import json
import random

import polars as pl
import pytest
import yaml

from fuserank import schema
from fuserank.cli import main
from fuserank.config import load_config
from fuserank.data.synthetic import GENRE, GENRES, generate_catalog, write_catalog
from fuserank.jobs.export import export
from tiny_models import save_tiny_bert

U, I = schema.USER_ID, schema.ITEM_ID
AB = ["export.arms={control: popular, treatment: run}", "export.shares={control: 0.4, treatment: 0.5}",
      "export.holdout=0.1", "export.top_k=30", "export.batch_users=25", "export.salt=exp-1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny catalog with planted genre taste, trained once with tracking to a tmp sqlite store."""
    root = tmp_path_factory.mktemp("export")
    items, interactions = generate_catalog(n_items=120, n_users=90, seed=5)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    config = {
        "seed": 3,
        "output_dir": str(root / "outputs"),
        "run_name": "tiny",
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(root / "cache"), "text_model": str(model)},
        "split": {"label_cutoffs": 2},
        "retrieval": {"ann_candidates": 40, "popular_candidates": 10},
        "ranker": {"n_estimators": 40, "min_child_samples": 10, "n_jobs": 1},
        "tracking": {
            "tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            "artifact_root": str(root / "mlruns" / "artifacts"),
            "experiment": "export-e2e",
        },
    }
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["train-evaluate", "--config", str(config_path), "--quiet"]) == 0
    run_id = json.loads((root / "outputs" / "tiny" / "metrics.json").read_text())["run_id"]
    return root, config_path, items, interactions, run_id


@pytest.fixture(scope="module")
def ab_export(tiny_run):
    root, config_path, _, _, run_id = tiny_run
    manifest, folder = export(load_config(config_path, AB), root / "ab", run_id=run_id)
    return manifest, folder


def test_every_user_gets_one_arm_and_lists_keep_the_guarantees(tiny_run, ab_export):
    root, _, _, interactions, run_id = tiny_run
    manifest, folder = ab_export
    lists = pl.read_parquet(folder / "ranked_lists.parquet")
    assignments = pl.read_parquet(folder / "assignments.parquet")
    assert dict(lists.schema) == schema.EXPORT_LIST and dict(assignments.schema) == schema.ASSIGNMENTS
    users = set(interactions[U])
    assert assignments[U].n_unique() == assignments.height == len(users) and set(assignments[U]) == users
    holdout = set(assignments.filter(pl.col(schema.ARM) == "holdout")[U])
    assert holdout and not holdout & set(lists[U]) and set(lists[U]) == users - holdout
    assert lists.join(interactions.select(U, I), on=[U, I], how="semi").is_empty()
    per_user = lists.group_by(U).agg(pl.len(), pl.col(I).n_unique().alias("distinct"),
                                     (pl.col(schema.RANK).sort() == pl.int_range(1, pl.len() + 1)).all().alias("ok"))
    assert (per_user["len"] == 30).all() and (per_user["distinct"] == 30).all() and per_user["ok"].all()
    booster = (root / "outputs" / "tiny" / "model" / "model.txt").read_bytes()
    treatment = lists.filter(pl.col(schema.ARM) == "treatment")
    assert set(treatment[schema.MODEL_VERSION]) == {hashlib.sha256(booster).hexdigest()[:12]}
    assert set(treatment[schema.RUN_ID]) == {run_id} and treatment[schema.SCORE].null_count() == 0
    assert set(lists.filter(pl.col(schema.ARM) == "control")[schema.MODEL_VERSION]) == {"most-popular"}
    assert not lists[schema.COLD_START].any()
    assert manifest["run_id"] == run_id and manifest["salt"] == "exp-1"
    assert manifest["arms"]["treatment"]["buckets"] == [4000, 9000]
    assert sum(a["users"] for a in manifest["arms"].values()) == len(users)
    for name, facts in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == facts["sha256"]
    assert json.loads((folder / "manifest.json").read_text()) == manifest


def test_the_run_arm_finds_the_planted_taste_that_popularity_misses(tiny_run, ab_export):
    _, _, items, interactions, _ = tiny_run
    _, folder = ab_export
    favourite = (interactions.join(items.select(I, GENRE), on=I).group_by(U, GENRE).len()
                 .sort([U, "len", GENRE], descending=[False, True, False]).group_by(U, maintain_order=True).first()
                 .select(U, pl.col(GENRE).alias("favourite")))
    lists = pl.read_parquet(folder / "ranked_lists.parquet").filter(pl.col(schema.RANK) <= 10)
    hits = (lists.join(items.select(I, GENRE), on=I).join(favourite, on=U)
            .group_by(schema.ARM).agg((pl.col(GENRE) == pl.col("favourite")).mean().alias("share")))
    share = dict(hits.iter_rows())
    assert share["treatment"] > share["control"] + 0.2, share


def test_same_inputs_give_byte_identical_files_and_the_best_run_is_found(tiny_run, ab_export):
    root, config_path, _, _, run_id = tiny_run
    first, folder = ab_export
    # Again with batches built three at once: the same bytes.
    code = main(["export", "--config", str(config_path), "--quiet", *[a for s in AB for a in ("--set", s)],
                 "--set", "export.parallel_batches=3",
                 "--experiment", "export-e2e", "--metric", "test_ndcg_at_10", "--out", str(root / "again")])
    assert code == 0
    again = json.loads((root / "again" / "manifest.json").read_text())
    assert again["run_id"] == run_id
    for name in ("ranked_lists.parquet", "assignments.parquet"):
        assert (root / "again" / name).read_bytes() == (folder / name).read_bytes(), name
    assert {k: v for k, v in again.items() if k != "created_at"} == {k: v for k, v in first.items() if k != "created_at"}


def test_a_user_list_in_any_order_with_unknown_ids(tiny_run, ab_export, capsys):
    root, config_path, _, interactions, run_id = tiny_run
    _, folder = ab_export
    some = sorted(set(interactions[U]))[::3]
    wanted = some + ["nobody-1", "nobody-2"]
    random.Random(0).shuffle(wanted)
    (root / "users.txt").write_text("\n".join(wanted + [some[0]]) + "\n")
    manifest, out = export(load_config(config_path, AB), root / "subset", run_id=run_id, users_file=root / "users.txt")
    assert "nobody-1" in capsys.readouterr().err
    assert manifest["users"]["unknown"] == 2 and manifest["users"]["unknown_ids"] == ["nobody-1", "nobody-2"]
    assignments = pl.read_parquet(out / "assignments.parquet")
    everyone = pl.read_parquet(folder / "assignments.parquet")
    assert assignments.filter(pl.col(U).is_in(some)).equals(everyone.filter(pl.col(U).is_in(some)))
    lists = pl.read_parquet(out / "ranked_lists.parquet")
    # A user's list does not depend on which other users are exported with them.
    full = pl.read_parquet(folder / "ranked_lists.parquet")
    assert lists.filter(pl.col(U).is_in(some)).equals(full.filter(pl.col(U).is_in(some)))
    cold = lists.filter(pl.col(U).str.starts_with("nobody"))
    served_unknown = assignments.filter(pl.col(U).str.starts_with("nobody") & (pl.col(schema.ARM) != "holdout"))
    assert cold[schema.COLD_START].all() and set(cold[U]) == set(served_unknown[U])
    assert cold.group_by(U).len()["len"].to_list() == [30] * served_unknown.height


def test_seen_items_are_scored_by_the_ranker_when_not_excluded(tiny_run):
    root, config_path, _, interactions, run_id = tiny_run
    config = load_config(config_path, ["export.exclude_seen=false", "export.top_k=120"])
    _, out = export(config, root / "with-seen", run_id=run_id)
    lists = pl.read_parquet(out / "ranked_lists.parquet")
    seen = lists.join(interactions.select(U, I), on=[U, I], how="semi")
    assert seen.height == interactions.select(U, I).unique().height  # K = the catalog: every seen item is listed
    assert seen[schema.SCORE].null_count() == 0


def test_csv_on_request_and_clear_errors(tiny_run, capsys):
    root, config_path, _, _, run_id = tiny_run
    assert main(["export", "--config", str(config_path), "--quiet", "--run-id", run_id, "--format", "csv",
                 "--out", str(root / "csv"), "--set", "export.top_k=5"]) == 0
    lists = pl.read_csv(root / "csv" / "ranked_lists.csv", schema=schema.EXPORT_LIST)
    assert lists.group_by(U).len()["len"].max() == 5 and (root / "csv" / "assignments.csv").is_file()
    assert main(["export", "--config", str(config_path), "--quiet", "--run-id", "no-such-run"]) == 1
    assert "no-such-run" in capsys.readouterr().err
    assert main(["export", "--config", str(config_path), "--quiet", "--run-id", run_id,
                 "--set", "export.shares={treatment: 0.5}"]) == 1
    assert "sum to" in capsys.readouterr().err


def test_retrieval_and_another_run_as_arms(tiny_run, ab_export):
    root, config_path, _, _, run_id = tiny_run
    arms = [f"export.arms={{base: retrieval, again: 'run:{run_id}'}}", "export.shares={base: 0.5, again: 0.5}",
            "export.top_k=30", "export.salt=exp-1"]
    manifest, out = export(load_config(config_path, arms), root / "arms", run_id=run_id)
    lists = pl.read_parquet(out / "ranked_lists.parquet")
    base = lists.filter(pl.col(schema.ARM) == "base")
    assert set(base[schema.MODEL_VERSION]) == {"retrieval-only"}
    assert (base[schema.SCORE] == -base[schema.RANK].cast(pl.Float32)).all()  # stage-1 order
    again = lists.filter(pl.col(schema.ARM) == "again").drop(schema.ARM)
    first = pl.read_parquet(ab_export[1] / "ranked_lists.parquet").filter(pl.col(schema.ARM) == "treatment")
    common = set(again[U]) & set(first[U])
    assert common and again.filter(pl.col(U).is_in(common)).equals(
        first.filter(pl.col(U).is_in(common)).drop(schema.ARM))
    assert manifest["arms"]["again"]["model_version"] == ab_export[0]["arms"]["treatment"]["model_version"]
