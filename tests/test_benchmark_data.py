"""The RecBole-style split, the ML-1M id mapping and the benchmark summary, on planted data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.evaluation.benchmarking import format_table, order_as_time, summarise_systems
from fuserank.data.movielens import RECBOLE_ITEM_ID, load_movielens_1m
from fuserank.data.split import k_core, random_split, ratio_counts, recbole_split


def _interactions(counts: dict[str, int], seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for user, n in counts.items():
        items = rng.choice(500, size=n, replace=False)
        rows += [(user, f"i{int(i):03d}", int(t), float(rng.integers(1, 6))) for t, i in enumerate(items)]
    return pl.DataFrame(rows, schema=dict(zip(schema.INTERACTIONS, (pl.String, pl.String, pl.Int64, pl.Float64))),
                        orient="row")


def test_ratio_counts_follow_recbole():
    assert ratio_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert ratio_counts(25, (0.8, 0.1, 0.1)) == (21, 2, 2)
    assert ratio_counts(5, (0.8, 0.1, 0.1)) == (3, 1, 1)  # 0.5 rounds down to 0, then bumped to 1
    assert ratio_counts(2, (0.8, 0.1, 0.1)) == (1, 0, 1)  # train keeps one: valid gets none


def test_random_split_invariants():
    frame = _interactions({f"u{n}": n for n in range(10, 40)})
    split = random_split(frame, seed=5)
    union = pl.concat([split.train, split.valid, split.test])
    key = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    assert union.sort(key).equals(frame.sort(key))  # disjoint, nothing lost or added
    for part, share in ((split.train, 0), (split.valid, 1), (split.test, 2)):
        sizes = dict(part.group_by(schema.USER_ID).len().iter_rows())
        for n in range(10, 40):
            assert sizes.get(f"u{n}", 0) == ratio_counts(n, (0.8, 0.1, 0.1))[share]
    # Not temporal: over 30 users, some test row is older than some train row of its user.
    first_train = split.train.group_by(schema.USER_ID).agg(pl.col(schema.TIMESTAMP).min().alias("t0"))
    older = split.test.join(first_train, on=schema.USER_ID).filter(pl.col(schema.TIMESTAMP) > pl.col("t0"))
    assert older.height > 0
    # Deterministic, independent of input row order; another seed gives another split.
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    assert random_split(shuffled, seed=5).test.equals(split.test)
    assert not random_split(frame, seed=6).test.equals(split.test)


def test_k_core_is_iterative():
    # z has one user; without it b has one row, then r has one user, then d has one row: a
    # single pass would keep b, d and r, the fixpoint keeps only a and c with x and y.
    rows = [("a", "x"), ("a", "y"), ("c", "x"), ("c", "y"), ("d", "x"), ("d", "r"), ("b", "r"), ("b", "z")]
    frame = pl.DataFrame({schema.USER_ID: [u for u, _ in rows], schema.ITEM_ID: [i for _, i in rows]})
    kept = k_core(frame, 2)
    for col in (schema.USER_ID, schema.ITEM_ID):
        assert kept.group_by(col).len()["len"].min() >= 2
    assert set(kept[schema.USER_ID]) == {"a", "c"} and set(kept[schema.ITEM_ID]) == {"x", "y"}
    assert k_core(frame, 1).equals(frame)


def test_recbole_split_drops_low_ratings():
    frame = _interactions({f"u{n}": 60 for n in range(40)})
    split = recbole_split(frame, seed=0, core=2)
    union = pl.concat([split.train, split.valid, split.test])
    assert union[schema.RATING].min() >= 3.0
    assert union.height == k_core(frame.filter(pl.col(schema.RATING) >= 3), 2).height


def test_order_as_time_puts_test_last():
    split = random_split(_interactions({f"u{n}": 20 for n in range(5)}), seed=0)
    ordered = order_as_time(split, seed=0)
    for user in ordered.test[schema.USER_ID].unique():
        times = [p.filter(pl.col(schema.USER_ID) == user)[schema.TIMESTAMP] for p in ordered.__dict__.values()]
        assert times[0].max() < times[1].min() and times[1].max() < times[2].min()
    assert ordered.test.drop(schema.TIMESTAMP).sort(schema.ITEM_ID).equals(
        split.test.drop(schema.TIMESTAMP).sort(schema.ITEM_ID))


def test_summarise_systems_planted_gain():
    users = [f"u{n}" for n in range(200)]
    base = {"ndcg_at_10": 0.2, "recall_at_10": 0.3, "recall_at_20": 0.4, "mrr_at_10": 0.1}
    ours = pl.DataFrame({schema.USER_ID: users} | {m: [v + 0.1] * 200 for m, v in base.items()})
    theirs = pl.DataFrame({schema.USER_ID: users[::-1]} | {m: [v] * 200 for m, v in base.items()})
    rows = summarise_systems({"fuserank": ours, "peer": theirs}, reference="fuserank", seed=0)
    assert rows[0]["ndcg_at_10"] == pytest.approx(0.3)
    assert rows[1]["fuserank_gain_ndcg_at_10"] == pytest.approx(0.1)
    assert rows[1]["fuserank_gain_ndcg_at_10_ci_low"] == pytest.approx(0.1)
    assert "| peer | 0.2000 [0.2000, 0.2000]" in format_table(rows)
    with pytest.raises(ValueError, match="other users"):
        summarise_systems({"fuserank": ours, "peer": theirs.head(10)}, reference="fuserank", seed=0)


def test_load_movielens_1m_maps_titles_to_stable_integer_ids(tmp_path: Path):
    (tmp_path / "ml-1m.item").write_text(
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Comedy\n"
        "Heat (1995)\tHeat\t1995\tAction\n",
        encoding="utf-8",
    )
    (tmp_path / "ml-1m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1m_7\tHeat (1995)\t5\t978300760\n1m_12\tToy Story (1995)\t3\t978300761\n",
        encoding="utf-8",
    )
    items, inter = load_movielens_1m(tmp_path)
    assert items[schema.ITEM_ID].to_list() == ["1", "2"]
    assert items[RECBOLE_ITEM_ID].to_list() == ["Toy Story (1995)", "Heat (1995)"]
    assert inter.select(schema.USER_ID, schema.ITEM_ID).rows() == [("7", "2"), ("12", "1")]
