"""Features and the whole train-evaluate on a 2-worker LocalCluster against the local path."""

from __future__ import annotations

import dataclasses
import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fuserank import schema
from fuserank.config import BehaviourConfig, DaskConfig, FusionConfig, RetrievalConfig, load_config
from fuserank.data.split import leave_last_out
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.jobs.train_evaluate import train_evaluate
from tiny_models import save_tiny_bert

pytest.importorskip("distributed")

from fuserank.jobs.distributed import dask_client  # noqa: E402
from fuserank.jobs.distributed_frames import FitOnWorker, collect, cutoff_parts, split_users, user_bounds  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskConfig(enabled=True, n_workers=2, threads_per_worker=1)) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_e2e")
    items, interactions = generate_catalog(n_items=200, n_users=150, seed=3)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    return root, items_path, interactions_path, model, items, interactions


def spread_frame(client, config, stage, cutoff, n_parts: int, query: str | None = None):
    """A cut-off's frame built on the workers (`cutoff_parts`) and brought back whole, to compare."""
    users = split_users(cutoff.users, user_bounds(cutoff.users, n_parts))
    parts, names = cutoff_parts(client, config, stage, cutoff, users, query=query)
    assert len(parts.futures) == n_parts and all(rows > 0 for rows in parts.rows)
    return collect(client, parts), names


def test_features_over_user_partitions_equal_the_local_frame(client, catalog):
    from fuserank.data.cutoffs import Cutoff
    from fuserank.pipeline import fit_stage_one, stage_frame
    from fuserank.retrieval.popularity import reference_times

    _, _, _, _, items, interactions = catalog
    split = leave_last_out(interactions)
    retrieval = RetrievalConfig(ann_candidates=40, popular_candidates=10, modality_candidates=5)
    config = dataclasses.replace(load_config(None, []), retrieval=retrieval, behaviour=BehaviourConfig(dim=16))
    stage = fit_stage_one(split.train, items[schema.ITEM_ID].to_list(), {}, config.behaviour, FusionConfig(),
                          retrieval, seed=1)
    users = split.valid[schema.USER_ID].unique().sort().to_list()
    cutoff = Cutoff("valid", split.train, split.valid, reference_times(split.train, users))
    local, local_names, _ = stage_frame(config, stage, cutoff)
    spread, spread_names = spread_frame(client, config, stage, cutoff, 3)
    assert spread_names == local_names
    assert local.height > 40 * len(users) * 0.9
    # Same rows in the same order; every feature within 1e-6 (EASE scores are matrix products
    # over a partition's users, whose BLAS blocking may differ in the last bits).
    assert_frame_equal(spread, local, check_exact=False, rel_tol=0.0, abs_tol=1e-6)


def test_cutoff_frames_over_user_partitions_equal_the_local_frames(client, catalog):
    """Every frame the ranker meets in a train-evaluate (label, valid and test cut-offs: candidates,
    text and behaviour features as of the reference times, labels), local against Dask, where
    stage 1 (behaviour SVD, EASE, FAISS) is fitted on a worker as train-evaluate fits it there."""
    from fuserank.encoders.text import TextEncoder
    from fuserank.evaluation.protocol import make_cutoffs
    from fuserank.pipeline import fit_stage, stage_frame

    _, _, _, model, items, interactions = catalog
    config = load_config(None, ["seed=7", "retrieval.ann_candidates=60", "retrieval.popular_candidates=10"])
    item_ids = items[schema.ITEM_ID].to_list()
    content = {"text": TextEncoder(model, batch_size=16, max_length=32, device="cpu", cache_dir=None).encode(items)}
    cutoffs = make_cutoffs(interactions, config)
    for cutoff in (*cutoffs.labels, cutoffs.valid, cutoffs.test):
        stage = fit_stage(config, cutoff.history, item_ids, content, cutoff.shared_history)
        local, names, _ = stage_frame(config, stage, cutoff)
        spread, spread_names = spread_frame(client, config, FitOnWorker(item_ids, content), cutoff, 3, query="#1")
        assert spread_names == names and any(n.startswith("cos_text") for n in names), names
        assert local.height > 50 * len(cutoff.users) * 0.9 and local[schema.LABEL].sum() > 0
        assert spread[schema.QUERY].to_list() == [f"{u}#1" for u in local[schema.USER_ID]]
        assert_frame_equal(spread.drop(schema.QUERY), local, check_exact=False, rel_tol=0.0, abs_tol=1e-6)


def run(catalog, name: str, *overrides: str):
    root, items_path, interactions_path, model, _, _ = catalog
    config = load_config(None, [
        "seed=7", f"output_dir={root / 'outputs'}", f"run_name={name}", "data.dataset=catalog",
        f"data.items_path={items_path}", f"data.interactions_path={interactions_path}",
        f"sources.cache_dir={root / 'cache'}", f"sources.text_model={model}",
        "retrieval.ann_candidates=60", "retrieval.popular_candidates=10",
        "ranker.n_estimators=80", "ranker.num_leaves=7", "ranker.min_child_samples=10", "ranker.n_jobs=1",
        "ranker.early_stopping_rounds=0", "eval.top_k=20", "tracking.enabled=false", *overrides,
    ])
    metrics, folder = train_evaluate(config)
    return metrics, folder


def outcome(metrics: dict) -> dict:
    """Every metric of a run but its timings."""
    return {k: v for k, v in metrics.items() if not k.endswith("_seconds")}


@pytest.mark.slow  # three runs: 40-56 s on 2 cores shared with other jobs
def test_train_evaluate_on_a_local_cluster_matches_the_local_run(client, catalog):
    """Features on the workers, and the ranker on one LightGBM machine or two: every metric of
    the local run, to the last bit. Two data-parallel machines draw the local fit's bag
    (`jobs/bagging_blocks.py`); what still parts their trees from the local ones is
    `min_data_in_leaf`, which LightGBM's data-parallel learner checks against leaf counts it
    estimates from hessians (docs/scaling.md), so these runs set min_child_samples=1."""
    exact = "ranker.min_child_samples=1"
    local, local_folder = run(catalog, "local", exact)
    one, _ = run(catalog, "dask1", "dask.enabled=true", "dask.ranker_partitions=1", exact)
    assert outcome(one) == outcome(local)
    # Measured over 3 catalogs x 3 seeds (this one is catalog 3, seed 7), |Dask - local| with
    # min_child_samples=1: every metric equal in 9 of 9 (before the machines drew the local bag:
    # 0 of 9, test NDCG@10 up to 0.021). With min_child_samples=10 the trees part in 7 of 9
    # (refitted from the same arrays: after 12-33 of the 80 rounds): test NDCG@10 mean 0.0057,
    # max 0.0212; recall@10 mean 0.0104, max 0.0267; valid NDCG@10 mean 0.0071, max 0.0170
    # (before: 0.0153 / 0.0210, 0.0341 / 0.0733, 0.0088 / 0.0234). The 0.005 holds
    # exactly where min_data_in_leaf decides no split, and not in general.
    spread, folder = run(catalog, "dask", "dask.enabled=true", exact)
    assert outcome(spread) == outcome(local)
    assert spread["test_ndcg_at_10"] > 1.5 * spread["test_popular_ndcg_at_10"]
    saved = json.loads((folder / "model" / "features.json").read_text())
    assert saved["best_iteration"] == spread["ranker_best_iteration"] == 80
    # The outputs written from the rows held on the workers, a partition at a time, hold the
    # local run's rows.
    for name in ("ranked_lists.parquet", "per_user_metrics.parquet"):
        ours, theirs = pl.read_parquet(folder / name), pl.read_parquet(local_folder / name)
        assert ours.height > 0 and ours.equals(theirs), name


@pytest.mark.slow  # two runs on the cluster, one fitting stage 1 again: 20-63 s on 2 busy cores
def test_a_worker_killed_while_the_ranker_trains_leaves_every_metric_unchanged(client, catalog, caplog):
    """The ranker's frames on the killed worker are lost for good (their scattered inputs were
    released once they were built), so they are rebuilt from the driver (`Parts.rebuild`: the
    history sent again, stage 1 fitted again on a worker) before the fit starts again;
    validation and test are scored as usual."""
    import dask
    from worker_faults import killer, within

    extra = ("dask.enabled=true", "ranker.n_estimators=400")  # long enough to be killed in
    client.wait_for_workers(2, timeout=60)
    calm, _ = run(catalog, "calm", *extra)
    killed: list = []
    # LocalCluster closes the nanny of a worker name missing this long after a worker of that
    # name died (15 s by default): a second death of the name within it can close it for good.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"}):
        thread = killer(client, "_train_machine", killed, delay_s=0.3)
        with caplog.at_level("WARNING", logger="fuserank.jobs.distributed_lightgbm"):
            hit, _ = within(150, lambda: run(catalog, "killed", *extra))
        thread.join()
    assert killed, "no worker was running a LightGBM machine"
    assert "start 1:" in caplog.text, "the kill came after the fit"
    assert outcome(hit) == outcome(calm)
    client.wait_for_workers(2, timeout=60)


def test_text_encoding_over_catalog_partitions_equals_the_local_encoding(client, catalog):
    import numpy as np

    from fuserank.jobs.distributed import encode_dask
    from fuserank.encoders.text import TextEncoder

    _, _, _, model, items, _ = catalog
    kwargs = {"model_dir": model, "batch_size": 16, "max_length": 32, "device": "cpu", "cache_dir": None}
    local = TextEncoder(**kwargs).encode(items)
    spread = encode_dask(client, TextEncoder, kwargs, items, n_partitions=3)
    assert spread.item_ids == local.item_ids == tuple(items[schema.ITEM_ID].to_list())
    np.testing.assert_array_equal(spread.mask, local.mask)
    # Batches are cut at other rows, so padding differs; mean pooling masks padding out, and
    # the vectors agree to float32 rounding.
    np.testing.assert_allclose(spread.vectors, local.vectors, atol=1e-6)
    assert np.abs(local.vectors).sum() > 0


def test_media_encoding_over_catalog_partitions_equals_the_local_encoding(client, tmp_path):
    import numpy as np

    from fuserank.data.synthetic import generate_multimodal_catalog
    from fuserank.jobs.distributed import encode_fitted_dask
    from fuserank.encoders.audio import AudioEncoder
    from fuserank.encoders.image_descriptor import DescriptorImageEncoder

    items, _ = generate_multimodal_catalog(tmp_path / "media", n_items=24, n_users=10, seed=2, video_share=0.0)
    root = tmp_path / "media"
    images = DescriptorImageEncoder(root)
    audio = AudioEncoder(root)
    audio.fit(items)
    for encoder in (images, audio):
        local = encoder.encode(items)
        spread = encode_fitted_dask(client, encoder, items, n_partitions=3)
        assert spread.item_ids == local.item_ids and local.mask.sum() == items.height
        np.testing.assert_array_equal(spread.mask, local.mask)
        np.testing.assert_allclose(spread.vectors, local.vectors, atol=1e-6)


def gathered_frames(value) -> list[pl.DataFrame]:
    """Every polars frame inside a gathered result (lists, tuples, dataclasses)."""
    import dataclasses

    if isinstance(value, pl.DataFrame):
        return [value]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in gathered_frames(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [f for field in dataclasses.fields(value) for f in gathered_frames(getattr(value, field.name))]
    return []


def test_train_evaluate_on_a_cluster_never_builds_features_on_the_driver(client, catalog, monkeypatch):
    """The interactions, stage 1, features, the ranker's matrix, scoring and stage-1 counts stay
    on the workers: in the driver process the catalog's load, the local cut-offs, stage 1's fit,
    the feature builder, the matrix builder and `collect` fail if called, and nothing the driver
    gathers holds a feature column or more rows than the per-user results."""
    import fuserank.pipeline
    import fuserank.ranking.ranker
    from fuserank.jobs import distributed, distributed_frames, train_evaluate

    def forbidden(*args, **kwargs):
        raise AssertionError("called on the driver")

    for module, name in ((train_evaluate, "load_catalog"), (train_evaluate, "prepare"),
                         (fuserank.pipeline, "fit_stage_one"),
                         (fuserank.pipeline, "candidate_features"), (fuserank.pipeline, "stage_frame"),
                         (distributed_frames, "stage_frame"),
                         (fuserank.ranking.ranker, "_query_groups"), (distributed, "_query_groups"),
                         (distributed_frames, "collect")):
        monkeypatch.setattr(module, name, forbidden)
    seen: list[pl.DataFrame] = []
    gather = client.gather

    def spying(futures, *args, **kwargs):
        result = gather(futures, *args, **kwargs)
        seen.extend(gathered_frames(result))
        return result

    monkeypatch.setattr(client, "gather", spying)
    # with a new-item slot, which the workers apply where they rank
    metrics, folder = run(catalog, "dask_frames", "dask.enabled=true", "slots.new_items=[20]")
    names = json.loads((folder / "model" / "features.json").read_text())["feature_names"]
    assert metrics["test_ndcg_at_10"] > metrics["test_popular_ndcg_at_10"]
    assert seen, "the lists come back through client.gather"
    assert not any(set(names) & set(frame.columns) for frame in seen)
    # Per user: the top k by the ranker and by stage 1 (k the largest eval cut-off), one row of counts.
    top_k = max(int(key.rsplit("_", 1)[1]) for key in metrics
                if key.startswith("test_ndcg_at_") and key.rsplit("_", 1)[1].isdigit())
    n_users = metrics["n_users"]
    assert max(frame.height for frame in seen) <= top_k * n_users < metrics["ranker_train_rows"]
