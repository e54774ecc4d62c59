"""Export building blocks on hand-made frames: bucketing, arms, list guarantees, files, manifest."""

from __future__ import annotations

import hashlib
import json
import random

import polars as pl
import pytest

from fuserank import schema
from fuserank.evaluation.scoring import most_popular_rankings
from fuserank.jobs.arms import (
    BUCKETS,
    ExportError,
    Server,
    arm_users,
    assign_arms,
    complete_lists,
    export_batches,
    plan_arms,
    popular_lists,
    popular_server,
    popularity_pool,
    user_buckets,
)
from fuserank.jobs.export import pick_best_run, read_user_list, write_export

U, I = schema.USER_ID, schema.ITEM_ID


def test_bucket_is_sha256_of_salt_and_user_modulo_10000():
    expected = int.from_bytes(hashlib.sha256(b"exp-7u42").digest()[:8], "big") % 10_000
    assert user_buckets(["u42"], "exp-7")[0] == expected
    many = user_buckets([f"u{i}" for i in range(20_000)], "s")
    assert many.min() >= 0 and many.max() < BUCKETS
    # A new salt reshuffles users: buckets agree only by chance (1 in 10,000).
    assert (many == user_buckets([f"u{i}" for i in range(20_000)], "t")).mean() < 0.01


def test_arm_plans_cover_every_bucket_once_with_holdout_on_top():
    plans = plan_arms({"control": "popular", "a": "run", "b": "run:xyz"}, {"control": 0.5, "a": 0.2, "b": 0.2}, 0.1)
    assert [(p.name, p.low, p.high) for p in plans] == [
        ("control", 0, 5000), ("a", 5000, 7000), ("b", 7000, 9000), ("holdout", 9000, 10000)]
    other = plan_arms({"control": "popular", "a": "run"}, {"control": 0.3, "a": 0.6}, 0.1)
    assert other[-1].low == 9000  # other shares, same holdout users


@pytest.mark.parametrize(
    ("arms", "shares", "holdout", "words"),
    [
        ({"a": "run"}, {"b": 1.0}, 0.0, "same arms"),
        ({"a": "run", "b": "popular"}, {"a": 0.5, "b": 0.4}, 0.0, "sum to"),
        ({"a": "model"}, {"a": 1.0}, 0.0, "unknown source"),
        ({"holdout": "run"}, {"holdout": 1.0}, 0.0, "reserved"),
        ({"a": "run", "b": "run"}, {"a": 0.99999, "b": 0.00001}, 0.0, "no bucket"),
        ({"a": "run"}, {"a": 0.0}, 1.0, "holdout"),
    ],
)
def test_bad_arm_settings_are_errors(arms, shares, holdout, words):
    with pytest.raises(ExportError, match=words):
        plan_arms(arms, shares, holdout)


def test_assignment_is_stable_order_free_and_puts_each_user_in_one_arm():
    users = [f"user-{i}" for i in range(10_000)]
    plans = plan_arms({"control": "popular", "treatment": "run"}, {"control": 0.3, "treatment": 0.6}, 0.1)
    first = assign_arms(users, plans, "salt")
    shuffled = users[:]
    random.Random(1).shuffle(shuffled)
    assert assign_arms(shuffled, plans, "salt").equals(first)
    assert first.height == len(users) and first[U].n_unique() == len(users)
    shares = first.group_by(schema.ARM).len().sort(schema.ARM)
    assert dict(shares.iter_rows()) == pytest.approx({"control": 3000, "treatment": 6000, "holdout": 1000}, abs=200)
    for plan in plans:
        arm = first.filter(pl.col(schema.ARM) == plan.name)[schema.BUCKET]
        assert arm.min() >= plan.low and arm.max() < plan.high


def _history() -> pl.DataFrame:
    # Popularity: a (4), b (3), c (2), d (1); e and f never interacted with.
    rows = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u2", "c"), ("u3", "a"), ("u3", "b"),
            ("u3", "c"), ("u3", "d"), ("u4", "a")]
    return pl.DataFrame({U: [r[0] for r in rows], I: [r[1] for r in rows],
                         schema.TIMESTAMP: list(range(len(rows))), schema.RATING: [None] * len(rows)},
                        schema=schema.INTERACTIONS)


def test_popular_lists_skip_seen_items_and_reach_k_from_the_whole_catalog():
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    lists = popular_lists(pool, history.select(U, I), ["u1", "u3", "new"], 3)
    by_user = {u: g.sort(schema.RANK)[I].to_list() for (u,), g in lists.group_by(U)}
    assert by_user == {"u1": ["c", "d", "e"], "u3": ["e", "f"], "new": ["a", "b", "c"]}
    assert lists.filter(pl.col(U) == "new")[schema.SCORE].to_list() == [4.0, 3.0, 2.0]
    # The same order as the evaluation baseline wherever that one has items.
    baseline = most_popular_rankings(history, ["u1", "u3", "new"], 3)
    assert lists.join(baseline, on=[U, I], how="semi").sort(U, schema.RANK).equals(
        lists.filter(pl.col(schema.SCORE) > 0).sort(U, schema.RANK))
    assert popular_lists(pool, None, ["u3"], 2)[I].to_list() == ["a", "b"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_popular_lists_equal_a_user_by_user_walk_down_the_pool(seed):
    rnd = random.Random(seed)
    catalog = [f"i{n}" for n in range(12)]
    seen = pl.DataFrame({U: [f"u{rnd.randrange(8)}" for _ in range(50)],  # repeats, items off the catalog
                         I: [f"i{rnd.randrange(14)}" for _ in range(50)]})
    history = seen.with_columns(pl.lit(0, pl.Int64).alias(schema.TIMESTAMP),
                                pl.lit(None, pl.Float64).alias(schema.RATING))
    pool = popularity_pool(history, catalog)
    users = [f"u{n}" for n in rnd.sample(range(10), 9)] + ["u1"]  # some without history, one twice
    for k in (1, 4, 12, 20):
        lists = popular_lists(pool, seen, users, k)
        want = []
        for user in sorted(set(users)):
            mine = set(seen.filter(pl.col(U) == user)[I].to_list())
            kept = [row for row in pool.iter_rows(named=True) if row[I] not in mine][:k]
            want += [(user, row[I], rank, float(row["_count"])) for rank, row in enumerate(kept, 1)]
        assert lists.rows() == want
        assert lists.schema == pl.Schema(schema.RANKED_LIST)
    assert popular_lists(pool.head(0), seen, users, 3).height == 0


def test_complete_lists_dedupe_drop_seen_and_top_up_without_scores():
    ranked = pl.DataFrame({U: ["u1"] * 4, I: ["x", "a", "x", "y"], schema.RANK: [1, 2, 3, 4],
                           schema.SCORE: [0.9, 0.8, 0.7, 0.6]}, schema=schema.RANKED_LIST)
    fallback = pl.DataFrame({U: ["u1"] * 3, I: ["y", "c", "d"], schema.RANK: [1, 2, 3],
                             schema.SCORE: [3.0, 2.0, 1.0]}, schema=schema.RANKED_LIST)
    seen = pl.DataFrame({U: ["u1"], I: ["a"]})
    out = complete_lists(ranked, fallback, seen, 4)
    assert out[I].to_list() == ["x", "y", "c", "d"]
    assert out[schema.RANK].to_list() == [1, 2, 3, 4]
    assert out[schema.SCORE].to_list()[:2] == pytest.approx([0.9, 0.6])
    assert out[schema.SCORE].to_list()[2:] == [None, None]
    assert complete_lists(ranked, fallback, None, 2)[I].to_list() == ["x", "a"]


def _fake_server(seen_item: str = "a") -> Server:
    """Lists that break every guarantee: a duplicate, a seen item, and only 2 items."""

    def lists(users):
        rows = [(u, item, rank) for u in users for rank, item in enumerate([seen_item, "e", "e"], start=1)]
        return pl.DataFrame({U: [r[0] for r in rows], I: [r[1] for r in rows], schema.RANK: [r[2] for r in rows],
                             schema.SCORE: [1.0 / r[2] for r in rows]}, schema=schema.RANKED_LIST)

    return Server("run-1", "abc123", lists)


def _assignments(users, plans, known) -> pl.DataFrame:
    return assign_arms(users, plans, "s").with_columns((~pl.col(U).is_in(known)).alias(schema.COLD_START))


def test_export_batches_keep_every_guarantee_whatever_the_batch_size():
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    plans = plan_arms({"t": "run"}, {"t": 1.0}, 0.0)
    assignments = _assignments(["u1", "u2", "u3", "u4", "zz"], plans, ["u1", "u2", "u3", "u4"])
    servers = {"t": _fake_server()}
    seen = history.select(U, I)
    one = pl.concat(export_batches(assignments, servers, seen, pool, 3, True, batch_users=1))
    all_at_once = pl.concat(export_batches(assignments, servers, seen, pool, 3, True, batch_users=100))
    assert one.equals(all_at_once)
    assert dict(one.schema) == schema.EXPORT_LIST
    assert one.join(seen, on=[U, I], how="semi").is_empty()
    assert one.group_by(U).agg(pl.col(I).n_unique() == pl.len())[I].all()
    lengths = dict(one.group_by(U).len().iter_rows())
    assert lengths == {"u1": 3, "u2": 3, "u3": 2, "u4": 3, "zz": 3}  # u3 has seen 4 of 6 items
    cold = one.filter(pl.col(schema.COLD_START))
    assert set(cold[U]) == {"zz"} and cold[I].to_list() == ["a", "b", "c"]
    u2 = one.filter(pl.col(U) == "u2")
    assert u2[I].to_list() == ["e", "d", "f"] and u2[schema.SCORE].null_count() == 2  # top-up after "e"
    assert set(one[schema.RUN_ID]) == {"run-1"} and set(one[schema.MODEL_VERSION]) == {"abc123"}


def test_batches_built_at_once_come_out_in_order_and_equal_one_at_a_time():
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    plans = plan_arms({"t": "run", "c": "popular"}, {"t": 0.5, "c": 0.5}, 0.0)
    users = [f"u{i}" for i in range(1, 5)] + [f"n{i}" for i in range(30)]
    assignments = _assignments(users, plans, ["u1", "u2", "u3", "u4"])
    servers = {"t": _fake_server(), "c": popular_server(pool, 3)}
    seen = history.select(U, I)
    alone = list(export_batches(assignments, servers, seen, pool, 3, True, 4, parallel_batches=1))
    at_once = list(export_batches(assignments, servers, seen, pool, 3, True, 4, parallel_batches=3))
    assert len(alone) == len(at_once) == 9
    assert all(a.equals(b) for a, b in zip(alone, at_once, strict=True))
    assert pl.concat(at_once)[U].to_list() == sorted(pl.concat(at_once)[U].to_list())


def test_a_failed_batch_stops_the_export_when_batches_are_built_at_once():
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    plans = plan_arms({"t": "run"}, {"t": 1.0}, 0.0)
    users = [f"n{i:02d}" for i in range(20)]

    def lists(batch):
        if "n13" in list(batch):
            raise RuntimeError("scoring failed")
        return _fake_server().lists(batch)

    batches = export_batches(_assignments(users, plans, users[:-1]), {"t": Server("run-1", "abc", lists)},
                             history.select(U, I), pool, 3, True, 5, parallel_batches=2)
    assert next(batches)[U].unique().sort().to_list() == users[:5]
    with pytest.raises(RuntimeError, match="scoring failed"):
        list(batches)


def test_seen_items_stay_when_configured():
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    plans = plan_arms({"t": "run"}, {"t": 1.0}, 0.0)
    out = pl.concat(export_batches(_assignments(["u1"], plans, ["u1"]), {"t": _fake_server()}, history.select(U, I),
                                   pool, 3, False, 10))
    assert out[I].to_list() == ["a", "e", "b"]


def test_holdout_users_get_no_rows():
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    users = [f"n{i}" for i in range(200)]
    plans = plan_arms({"t": "run"}, {"t": 0.5}, 0.5)
    assignments = _assignments(users, plans, [])
    served = assignments.filter(pl.col(schema.ARM) == "t")
    out = pl.concat(export_batches(served, {"t": _fake_server()}, history.select(U, I), pool, 2, True, 50))
    assert set(out[U]) == set(served[U]) and 0 < served.height < 200


def _write(folder, fmt="parquet", fail_after=None):
    history = _history()
    pool = popularity_pool(history, ["a", "b", "c", "d", "e", "f"])
    plans = plan_arms({"t": "run", "c": "popular"}, {"t": 0.5, "c": 0.5}, 0.0)
    users = [f"u{i}" for i in range(1, 5)] + [f"n{i}" for i in range(40)]
    assignments = _assignments(users, plans, ["u1", "u2", "u3", "u4"])
    servers = {"t": _fake_server(), "c": Server(None, "most-popular",
                                                lambda us: popular_lists(pool, history.select(U, I), us, 3))}

    def batches():
        for n, frame in enumerate(export_batches(assignments, servers, history.select(U, I), pool, 3, True, 7)):
            if fail_after is not None and n == fail_after:
                raise RuntimeError("disk full")
            yield frame

    return write_export(folder, batches(), assignments.iter_slices(7), arm_users(assignments), plans, servers,
                        {"salt": "s"}, ["n1"], fmt)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_inputs_give_byte_identical_files_and_a_manifest_of_their_hashes(tmp_path, fmt):
    first, second = _write(tmp_path / "one", fmt), _write(tmp_path / "two", fmt)
    for name in (f"ranked_lists.{fmt}", f"assignments.{fmt}"):
        data = (tmp_path / "one" / name).read_bytes()
        assert data == (tmp_path / "two" / name).read_bytes()
        assert first["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert {k: v for k, v in first.items() if k != "created_at"} == {k: v for k, v in second.items() if k != "created_at"}
    on_disk = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert on_disk["users"]["unknown_ids"] == ["n1"] and on_disk["users"]["total"] == 44
    lists = pl.read_parquet(tmp_path / "one" / "ranked_lists.parquet") if fmt == "parquet" else \
        pl.read_csv(tmp_path / "one" / "ranked_lists.csv", schema=schema.EXPORT_LIST)
    assert lists.height == on_disk["rows"] == sum(a["rows"] for a in on_disk["arms"].values())
    assert on_disk["arms"]["c"]["model_version"] == "most-popular" and on_disk["arms"]["t"]["run_id"] == "run-1"


def test_parquet_is_written_in_one_row_group_per_batch(tmp_path):
    import pyarrow.parquet as pq

    _write(tmp_path / "out")
    for name in ("ranked_lists.parquet", "assignments.parquet"):
        assert pq.ParquetFile(tmp_path / "out" / name).num_row_groups == 7, name  # 44 users / 7


def test_a_failed_export_leaves_no_partial_folder_and_keeps_the_old_one(tmp_path):
    _write(tmp_path / "out")
    before = (tmp_path / "out" / "ranked_lists.parquet").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        _write(tmp_path / "out", fail_after=2)
    assert (tmp_path / "out" / "ranked_lists.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):
        _write(tmp_path / "fresh", fail_after=0)
    assert not (tmp_path / "fresh").exists()


def test_user_lists_from_text_csv_and_parquet(tmp_path):
    (tmp_path / "u.txt").write_text("b\n\na\nb\n")
    assert read_user_list(tmp_path / "u.txt") == ["b", "a"]
    pl.DataFrame({U: [3, 1]}).write_csv(tmp_path / "u.csv")
    assert read_user_list(tmp_path / "u.csv") == ["3", "1"]
    pl.DataFrame({"who": ["x"]}).write_parquet(tmp_path / "u.parquet")
    with pytest.raises(ExportError, match="u.parquet"):
        read_user_list(tmp_path / "u.parquet")


def test_best_run_by_metric_ignores_unfinished_runs_and_runs_without_it():
    runs = [
        {"run_id": "a", "status": "FINISHED", "metrics": {"m": 0.2}},
        {"run_id": "b", "status": "FAILED", "metrics": {"m": 0.9}},
        {"run_id": "c", "status": "FINISHED", "metrics": {"m": 0.3, "loss": 2.0}},
        {"run_id": "d", "status": "FINISHED", "metrics": {"loss": 1.0}},
    ]
    assert pick_best_run(runs, "m") == "c"
    assert pick_best_run(runs, "loss", minimize=True) == "d"
    with pytest.raises(ExportError, match="nothing"):
        pick_best_run(runs, "nothing")
