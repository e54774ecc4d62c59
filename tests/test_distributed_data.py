"""Interactions read and cut into user partitions by the workers, against the local load."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fuserank import schema
from fuserank.config import DaskConfig
from fuserank.data.catalog import load_catalog
from fuserank.data.split import sort_interactions
from fuserank.data.synthetic import generate_catalog
from fuserank.data.validate import DataError

pytest.importorskip("distributed")

from fuserank.jobs.distributed import dask_client  # noqa: E402
from fuserank.jobs.distributed_data import read_user_parts  # noqa: E402
from fuserank.jobs.distributed_frames import split_users, user_bounds  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskConfig(enabled=True, n_workers=2, threads_per_worker=1)) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Items, and interactions in shuffled row order (every user's rows spread over the file's
    row groups) with a block of tied timestamps, whose order the file alone decides."""
    root = tmp_path_factory.mktemp("distributed_data")
    items, interactions = generate_catalog(n_items=120, n_users=90, seed=4)
    shuffled = interactions.sample(fraction=1.0, shuffle=True, seed=1)
    tied = shuffled.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.lit(1_000_000)).otherwise(pl.col(schema.TIMESTAMP))
        .alias(schema.TIMESTAMP)).unique([schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP], maintain_order=True)
    items_path = root / "items.parquet"
    items.write_parquet(items_path)
    return root, items_path, items[schema.ITEM_ID].to_list(), tied


def write(frame: pl.DataFrame, path, row_group_size: int = 97):
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path, row_group_size=row_group_size)
    return path


def gathered(client, parts) -> list[pl.DataFrame]:
    return client.gather(parts.futures)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_partitions_hold_the_sorted_interactions_of_their_users(client, catalog, suffix):
    root, items_path, item_ids, interactions = catalog
    path = write(interactions, root / f"interactions{suffix}")
    _, local = load_catalog(items_path, path)
    parts = read_user_parts(client, path, item_ids, n_parts=3, chunk_rows=300)
    users = local[schema.USER_ID].unique().to_list()
    # Every read task saw all of its users, so the bounds are those of all users, exactly.
    assert parts.bounds == user_bounds(users, 3)
    frames = gathered(client, parts)
    for frame, mine in zip(frames, split_users(users, parts.bounds), strict=True):
        assert sorted(frame[schema.USER_ID].unique().to_list()) == sorted(mine)
    assert_frame_equal(pl.concat(frames), sort_interactions(local))
    assert parts.rows == [f.height for f in frames] and sum(parts.users) == len(users)


def test_sampled_bounds_still_cut_whole_users(client, catalog):
    root, _, item_ids, interactions = catalog
    path = write(interactions, root / "sampled.parquet", row_group_size=50)
    parts = read_user_parts(client, path, item_ids, n_parts=4, chunk_rows=50, sample=3)
    frames = gathered(client, parts)
    assert len(frames) == len(parts.bounds) >= 2 and all(f.height for f in frames)
    assert_frame_equal(pl.concat(frames), sort_interactions(interactions.select(list(schema.INTERACTIONS))),
                       check_dtypes=False)
    owners = [set(f[schema.USER_ID].unique().to_list()) for f in frames]
    assert sum(len(o) for o in owners) == len(set().union(*owners))


def test_bad_rows_are_named_by_their_row_in_the_file(client, catalog):
    root, items_path, item_ids, interactions = catalog
    n = interactions.height
    # An unknown item in a later row group: the file row, as the local load names it.
    unknown = interactions.with_columns(
        pl.when(pl.int_range(pl.len()) == n - 5).then(pl.lit("nope")).otherwise(pl.col(schema.ITEM_ID))
        .alias(schema.ITEM_ID))
    path = write(unknown, root / "unknown.parquet")
    with pytest.raises(DataError) as local:
        load_catalog(items_path, path)
    with pytest.raises(DataError) as spread:
        read_user_parts(client, path, item_ids, n_parts=2, chunk_rows=100)
    assert (spread.value.row, spread.value.column, str(spread.value)) == (n - 4, schema.ITEM_ID, str(local.value))
    # The same event twice, far apart in the file (two read tasks): found where the user lies.
    repeated = pl.concat([interactions, interactions.slice(3, 1)])
    path = write(repeated, root / "repeated.parquet")
    with pytest.raises(DataError) as local:
        load_catalog(items_path, path)
    with pytest.raises(DataError) as spread:
        read_user_parts(client, path, item_ids, n_parts=2, chunk_rows=100)
    assert str(spread.value) == str(local.value)
    assert f"row {n + 1}" in str(spread.value) and "first seen in row 4" in str(spread.value)


# The second asks for 4 label cut-offs of 9 rows each: the fourth has no target anywhere, and
# the third's one user lies in one partition. Global time cuts at quantiles of all timestamps.
@pytest.mark.parametrize("overrides", [[], ["split.label_cutoffs=4", "split.label_window=9"],
                                       ["split.protocol=global_time", "split.label_cutoffs=6"],
                                       ["split.protocol=global_time", "split.valid_quantile=0.63",
                                        "split.test_quantile=0.77"]])
def test_cutoff_shares_are_the_cutoffs_of_the_whole(client, catalog, overrides):
    from fuserank.config import load_config
    from fuserank.data.cutoffs import build_cutoffs
    from fuserank.jobs.distributed_cutoffs import cutoff_of, cutoff_shares

    root, _, item_ids, interactions = catalog
    split = load_config(None, overrides).split
    parts = read_user_parts(client, write(interactions, root / "cut.parquet"), item_ids, n_parts=3, chunk_rows=300)
    whole = build_cutoffs(interactions.select(list(schema.INTERACTIONS)), split)
    shares = cutoff_shares(client, parts, split)
    expected = [*whole.labels, whole.valid, whole.test]
    assert shares.names == [c.name for c in expected]
    assert {name: sum(n) for name, n in shares.targets.items()} == {c.name: c.targets.height for c in expected}
    got = client.gather(shares.futures)
    if "split.label_window=9" in overrides:
        assert len(expected) == 5 and any(cutoff_of(s, "ranker labels 3").targets.is_empty() for s in got)
    for cutoff in expected:
        mine = [cutoff_of(share, cutoff.name) for share in got]
        for field in ("history", "targets", "ref_times", "shared_history"):
            assert_frame_equal(pl.concat([getattr(m, field) for m in mine]), getattr(cutoff, field),
                               check_dtypes=False)
    assert_frame_equal(pl.concat([s.interactions for s in got]), whole.interactions, check_dtypes=False)
    assert_frame_equal(pl.concat([s.cold_test for s in got]), whole.cold_test, check_dtypes=False)


def test_cutoff_shares_refuse_what_they_cannot_cut(client, catalog):
    from fuserank.config import load_config
    from fuserank.data.cutoffs import ProtocolError
    from fuserank.jobs.distributed_cutoffs import cutoff_shares

    root, _, item_ids, interactions = catalog
    parts = read_user_parts(client, write(interactions, root / "refuse.parquet"), item_ids, n_parts=2)
    with pytest.raises(ProtocolError, match="the most any user has is"):
        cutoff_shares(client, parts, load_config(None, ["split.min_interactions=1000"]).split)
    with pytest.raises(ProtocolError, match="ranker a label"):
        cutoff_shares(client, parts, load_config(None, ["split.label_window=1000"]).split)
    with pytest.raises(ProtocolError, match="both an interaction before the test cut"):
        cutoff_shares(client, parts, load_config(None, ["split.protocol=global_time", "split.valid_time=1000000000",
                                                        "split.test_time=1000000001"]).split)
    with pytest.raises(ProtocolError, match="on the driver"):
        cutoff_shares(client, parts, load_config(None, ["split.cold_items=0.1"]).split)


def test_frames_and_scores_from_the_shares_equal_the_local_ones(client, catalog):
    """From the file to the per-user scores with nothing on the driver but futures: every
    cut-off's frame (stage 1 fitted on a worker from the shares' history) and the ranker's
    per-user metrics equal those of the local path."""
    from fuserank.config import load_config
    from fuserank.data.cutoffs import build_cutoffs
    from fuserank.evaluation.scoring import cutoff_scores
    from fuserank.jobs.distributed_cutoffs import cluster_cutoff, cutoff_shares
    from fuserank.jobs.distributed_frames import FitOnWorker, collect, frames_on_workers, scores_on_workers
    from fuserank.pipeline import fit_stage, stage_frame
    from fuserank.ranking.ranker import fit_ranker

    root, _, item_ids, interactions = catalog
    config = load_config(None, ["seed=7", "retrieval.ann_candidates=40", "retrieval.popular_candidates=10",
                                "ranker.n_estimators=20", "ranker.n_jobs=1", "ranker.early_stopping_rounds=0"])
    parts = read_user_parts(client, write(interactions, root / "frames.parquet"), item_ids, n_parts=3, chunk_rows=300)
    shares = cutoff_shares(client, parts, config.split)
    whole = build_cutoffs(interactions.select(list(schema.INTERACTIONS)), config.split)
    local = {}
    for cutoff in (whole.labels[0], whole.test):
        stage = fit_stage(config, cutoff.history, item_ids, {}, cutoff.shared_history)
        local[cutoff.name], names, _ = stage_frame(config, stage, cutoff)
        on_cluster = cluster_cutoff(client, shares, cutoff.name)
        spread, spread_names = frames_on_workers(client, config, FitOnWorker(item_ids, {}), on_cluster)
        assert spread_names == names
        assert_frame_equal(collect(client, spread), local[cutoff.name], check_exact=False, rel_tol=0.0, abs_tol=1e-6)
    ranker = fit_ranker(local["ranker labels 1"], None, names, config.ranker, seed=7)
    expected = cutoff_scores(local["test"], whole.test.targets, ranker, (10,), 40, 0)
    got = scores_on_workers(client, spread, on_cluster.targets, ranker, (10,), 40, 0)
    assert_frame_equal(pl.concat(list(got.ranker.per_user.frames())), expected.ranker.per_user)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_the_data_hash_read_by_the_workers_is_the_local_loads(client, catalog, suffix):
    from fuserank.jobs.train_evaluate import frame_digest

    root, items_path, item_ids, interactions = catalog
    path = write(interactions, root / f"hashed{suffix}", row_group_size=53)
    _, local = load_catalog(items_path, path)
    parts = read_user_parts(client, path, item_ids, 2, chunk_rows=150, digest=True)
    assert parts.digest == frame_digest(local.select(list(schema.INTERACTIONS)))
    assert read_user_parts(client, path, item_ids, 2).digest is None


@pytest.mark.parametrize("overrides", [[], ["split.protocol=global_time", "split.valid_quantile=0.63",
                                            "split.test_quantile=0.77"]])
def test_train_evaluate_from_the_shares_equals_the_driver_path(client, catalog, overrides):
    """Every metric (ranker, baselines, cold users, slices, CIs), the per-user rows and the test
    lists equal those of the Dask path from the driver's cut-offs, cut at the same 2 partitions
    (the same data-parallel ranker)."""
    import numpy as np

    from fuserank.config import load_config
    from fuserank.data.cutoffs import build_cutoffs
    from fuserank.encoders.base import Embeddings
    from fuserank.evaluation.protocol import run_protocol
    from fuserank.jobs.distributed_cutoffs import cutoff_shares
    from fuserank.jobs.distributed_frames import HeldFrame
    from fuserank.jobs.distributed_protocol import run_protocol_on_shares

    root, _, item_ids, interactions = catalog
    config = load_config(None, ["seed=7", "retrieval.ann_candidates=30", "retrieval.popular_candidates=10",
                                "ranker.n_estimators=15", "ranker.n_jobs=1", "dask.enabled=true", *overrides])
    # Five users who arrive after every other interaction: cold test users under global time.
    late = pl.col(schema.USER_ID).is_in([f"u{i:05d}" for i in range(80, 85)])
    interactions = interactions.with_columns(
        pl.when(late).then(pl.col(schema.TIMESTAMP) + 10**9).otherwise(pl.col(schema.TIMESTAMP)))
    vectors = np.random.default_rng(0).normal(size=(len(item_ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    content = {"text": Embeddings(list(item_ids), vectors, np.ones(len(item_ids), dtype=bool))}
    parts = read_user_parts(client, write(interactions, root / "protocol.parquet"), item_ids, n_parts=2)
    spread = run_protocol_on_shares(client, cutoff_shares(client, parts, config.split), item_ids, content, config)
    local = run_protocol(build_cutoffs(interactions.select(list(schema.INTERACTIONS)), config.split), item_ids,
                         content, config)
    assert_frame_equal(spread.per_user, local.per_user)  # the columns the intervals and slices read
    assert list(spread.per_user_rows) == list(local.per_user_rows) == ["fuserank", "popular", "retrieval",
                                                                      "content_knn", "random"]
    for system, rows in spread.per_user_rows.items():  # every column, held on the workers
        assert isinstance(rows, HeldFrame) and isinstance(local.per_user_rows[system], (HeldFrame, pl.DataFrame))
        theirs = local.per_user_rows[system]
        theirs = theirs if isinstance(theirs, pl.DataFrame) else pl.concat(list(theirs.frames()))
        assert_frame_equal(pl.concat(list(rows.frames())), theirs)
    # The test lists stay on the workers, a partition at a time.
    assert isinstance(spread.ranked, HeldFrame) and isinstance(local.ranked, HeldFrame)
    assert_frame_equal(pl.concat(list(spread.ranked.frames())), pl.concat(list(local.ranked.frames())))
    assert spread.metrics == local.metrics
    if overrides:
        assert local.metrics["n_test_cold_users"] == 5
