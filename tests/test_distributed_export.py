"""`fuserank export` with dask.enabled: batches scored on a 2-worker LocalCluster, files byte for
byte those of the local export."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from fuserank.config import DaskConfig, load_config
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.jobs.export import export
from fuserank.jobs.train_evaluate import train_evaluate
from tiny_models import save_tiny_bert
from worker_faults import killer

pytest.importorskip("distributed")

from fuserank.jobs.distributed import dask_client  # noqa: E402
from fuserank.jobs.distributed_export import batch_pieces  # noqa: E402

ARMS = ["export.arms={control: popular, treatment: run, plain: retrieval}",
        "export.shares={control: 0.3, treatment: 0.4, plain: 0.2}", "export.holdout=0.1", "export.top_k=20",
        "export.batch_users=17", "export.salt=exp-dask"]


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskConfig(enabled=True, n_workers=2, threads_per_worker=1)) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_export")
    items, interactions = generate_catalog(n_items=100, n_users=80, seed=9)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    config = {
        "seed": 4, "output_dir": str(root / "outputs"), "run_name": "tiny",
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": str(root / "cache"), "text_model": str(model)},
        "split": {"label_cutoffs": 1},
        "retrieval": {"ann_candidates": 30, "popular_candidates": 10},
        "ranker": {"n_estimators": 20, "min_child_samples": 10, "n_jobs": 1},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                     "artifact_root": str(root / "mlruns" / "artifacts"), "experiment": "dask-export"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    _, folder = train_evaluate(load_config(path, []))
    return root, path, json.loads((folder / "metrics.json").read_text())["run_id"]


@pytest.mark.slow  # trains a tiny run (~30 s on 2 busy cores), then exports it twice
def test_cluster_export_writes_the_local_files_byte_for_byte(client, tiny_run):
    """The workers read the interactions, and stage 1 and the arms' lists are built on a worker:
    the driver's load and stage-1 fit fail if called."""
    import fuserank.jobs.export
    import fuserank.pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("data loaded or stage 1 fitted on the driver")

    root, path, run_id = tiny_run
    local, local_dir = export(load_config(path, ARMS), root / "local", run_id=run_id)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fuserank.pipeline, "fit_stage_one", forbidden)
        patch.setattr(fuserank.jobs.export, "prepare", forbidden)
        spread, spread_dir = export(load_config(path, [*ARMS, "dask.enabled=true"]), root / "spread", run_id=run_id)
    assert local["users"]["total"] == 80 and local["rows"] > 0
    for name in ("ranked_lists.parquet", "assignments.parquet"):
        assert (spread_dir / name).read_bytes() == (local_dir / name).read_bytes(), name
    assert {k: v for k, v in spread.items() if k != "created_at"} == {k: v for k, v in local.items() if k != "created_at"}


@pytest.mark.slow  # exports the tiny run twice more (~1 min on 2 busy cores)
def test_a_worker_killed_mid_export_is_retried_and_the_files_do_not_change(client, tiny_run):
    from distributed import get_task_stream

    root, path, run_id = tiny_run
    _, local_dir = export(load_config(path, ARMS), root / "local-2", run_id=run_id)
    before = set(client.scheduler_info()["workers"])
    killed: list = []
    with get_task_stream(client) as stream:
        thread = killer(client, "_export_piece", killed)
        _, spread_dir = export(load_config(path, [*ARMS, "dask.enabled=true"]), root / "killed", run_id=run_id)
        thread.join()
    assert killed and killed[0] in before, "no worker was running an export batch"
    assert any("_export_piece" in str(task["key"]) for task in stream.data)  # batches ran on the workers
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info()["workers"]) != before  # the killed worker came back as a new one
    for name in ("ranked_lists.parquet", "assignments.parquet"):
        assert (spread_dir / name).read_bytes() == (local_dir / name).read_bytes(), name


def test_batch_pieces_cut_partitions_at_the_global_batch_bounds():
    assert batch_pieces([5, 0, 4, 3], 4) == [[(0, 0, 4)], [(0, 4, 5), (2, 0, 3)], [(2, 3, 4), (3, 0, 3)]]
    assert batch_pieces([0, 0], 3) == []
    assert batch_pieces([2], 10) == [[(0, 0, 2)]]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_export_from_user_partitions_writes_the_local_files_byte_for_byte(client, tmp_path, exclude_seen):
    """The interactions read into user partitions by the workers; the driver never holds them."""
    from fuserank import schema
    from fuserank.data.catalog import load_catalog
    from fuserank.data.cutoffs import build_cutoffs
    from fuserank.jobs.arms import Server, arm_users, assign_arms, export_batches, plan_arms, popular_server, \
        popularity_pool
    from fuserank.jobs.distributed_data import read_user_parts
    from fuserank.jobs.distributed_export import export_parts, pool_from_parts, whole_history
    from fuserank.jobs.export import ArmLists, write_export

    items, interactions = generate_catalog(n_items=90, n_users=70, seed=3)
    # Ids that sort differently with the "#" of query keys: "u1" < "u1!" but "u1#" > "u1!#".
    interactions = interactions.with_columns(
        pl.col(schema.USER_ID).replace({"u00003": "u00002!", "u00004": "u00002 "}))
    assert {"u00002", "u00002!", "u00002 "} <= set(interactions[schema.USER_ID])
    items.write_parquet(tmp_path / "items.parquet")
    interactions.sample(fraction=1.0, shuffle=True, seed=2).write_parquet(tmp_path / "events.parquet",
                                                                          row_group_size=101)
    config = load_config(None, ["seed=1", "retrieval.ann_candidates=15", "retrieval.popular_candidates=5",
                                "behaviour.dim=8"])
    plans = plan_arms({"control": "popular", "plain": "retrieval"}, {"control": 0.45, "plain": 0.45}, 0.1)
    item_ids = items[schema.ITEM_ID].to_list()
    k, batch = 12, 9

    def servers(build: ArmLists, pool) -> dict[str, Server]:
        return {"control": popular_server(pool, k),
                "plain": Server(None, "retrieval-only", build.retrieval(build.stage(config, {}, None), config))}

    _, loaded = load_catalog(tmp_path / "items.parquet", tmp_path / "events.parquet")
    history = build_cutoffs(loaded, config.split).interactions.select(list(schema.INTERACTIONS))
    pool = popularity_pool(history, item_ids)
    assignments = assign_arms(history[schema.USER_ID].unique().to_list(), plans, "s").with_columns(
        pl.lit(False).alias(schema.COLD_START))
    local_servers = servers(ArmLists(None, history, item_ids, k, exclude_seen), pool)
    served = assignments.filter(pl.col(schema.ARM) != "holdout")
    batches = export_batches(served, local_servers, history.select(schema.USER_ID, schema.ITEM_ID), pool, k,
                             exclude_seen, batch)
    local = write_export(tmp_path / "local", batches, assignments.iter_slices(batch), arm_users(assignments), plans,
                         local_servers, {}, [], "parquet")

    parts = read_user_parts(client, tmp_path / "events.parquet", item_ids, 3, by_user=True)
    whole = whole_history(client, parts)
    assert client.gather(whole).equals(history)
    pool_parts = pool_from_parts(client, parts, item_ids)
    assert pool_parts.equals(pool)
    spread_servers = servers(ArmLists(client, whole, item_ids, k, exclude_seen), pool_parts)
    built = export_parts(client, parts, plans, "s", spread_servers, pool_parts, k, exclude_seen, batch)
    spread = write_export(tmp_path / "spread", built.lists, built.assignments, built.users, plans, spread_servers,
                          {}, [], "parquet")
    assert built.batches == -(-served.height // batch) and sum(1 for n in parts.users if n) == 3
    for name in ("ranked_lists.parquet", "assignments.parquet"):
        assert (tmp_path / "spread" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert {k: v for k, v in spread.items() if k != "created_at"} == {k: v for k, v in local.items() if k != "created_at"}
