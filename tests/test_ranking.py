"""LightGBM lambdarank on a generated ranking set where one feature decides the positive."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank.config import RankerConfig
from fuserank.ranking.ranker import (
    FEATURES_FILE,
    MODEL_FILE,
    Ranker,
    ScoreBase,
    fit_ranker,
    load_ranker,
    sample_negatives,
    save_ranker,
)
from fuserank.schema import ITEM_ID, LABEL, USER_ID

FEATURES = ("noise_a", "signal", "noise_b", "noise_c")
CONFIG = RankerConfig(n_estimators=40, learning_rate=0.1, num_leaves=7, min_child_samples=10, n_jobs=1)


def make_queries(n_queries: int, ann_candidates: int, seed: int, prefix: str = "q") -> pl.DataFrame:
    """One positive per query: the candidate whose `signal` is largest; other features are noise.

    The positive sits at a random position of its query so row order reveals nothing, and rows of
    different queries are interleaved to check that fitting groups them by user itself.
    """
    rng = np.random.default_rng(seed)
    n = n_queries * ann_candidates
    users = np.repeat([f"{prefix}{i:04d}" for i in range(n_queries)], ann_candidates)
    signal = rng.normal(size=(n_queries, ann_candidates))
    positive = rng.integers(0, ann_candidates, size=n_queries)
    rows = np.arange(n_queries)
    # The positive beats the best negative by a margin, so ranking by `signal` is always right.
    signal[rows, positive] = -np.inf
    signal[rows, positive] = signal.max(axis=1) + rng.uniform(0.3, 1.0, size=n_queries)
    label = np.zeros((n_queries, ann_candidates), dtype=np.int8)
    label[rows, positive] = 1
    label = label.ravel()
    frame = pl.DataFrame(
        {
            USER_ID: users,
            LABEL: label,
            "noise_a": rng.normal(size=n),
            "signal": signal.ravel().astype(np.float32),
            "noise_b": rng.normal(size=n).astype(np.float32),
            "noise_c": rng.integers(0, 5, size=n),
        }
    )
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)


def top1_hit_rate(ranker: Ranker, frame: pl.DataFrame) -> float:
    scored = frame.with_columns(pl.Series("s", ranker.score(frame)))
    best = scored.sort("s", descending=True).group_by(USER_ID).first()
    return float(best[LABEL].mean())


@pytest.fixture(scope="module")
def data() -> dict[str, pl.DataFrame]:
    return {
        "train": make_queries(200, 20, seed=0),
        "valid": make_queries(60, 20, seed=1, prefix="v"),
        "test": make_queries(100, 20, seed=2, prefix="t"),
    }


@pytest.fixture(scope="module")
def ranker(data: dict[str, pl.DataFrame]) -> Ranker:
    return fit_ranker(data["train"], data["valid"], FEATURES, CONFIG, seed=0)


def test_learns_the_planted_feature(ranker: Ranker, data: dict[str, pl.DataFrame]) -> None:
    assert top1_hit_rate(ranker, data["test"]) > 0.9
    gains = ranker.gain_importance()
    assert list(gains) == list(FEATURES)
    assert max(gains, key=gains.get) == "signal"
    assert gains["signal"] > 5 * sum(g for name, g in gains.items() if name != "signal")


def test_score_dtype_shape_and_row_alignment(ranker: Ranker, data: dict[str, pl.DataFrame]) -> None:
    test = data["test"]
    scores = ranker.score(test)
    assert scores.dtype == np.float32 and scores.shape == (test.height,)
    # Column order and extra columns must not matter: features are read by name.
    shuffled = test.select(["signal", LABEL, "noise_c", USER_ID, "noise_b", "noise_a"])
    np.testing.assert_array_equal(ranker.score(shuffled), scores)
    assert ranker.score(test.head(0)).shape == (0,)


def test_nulls_are_missing_values(ranker: Ranker, data: dict[str, pl.DataFrame]) -> None:
    frame = data["test"].head(5).with_columns(pl.lit(None, dtype=pl.Float64).alias("noise_a"))
    scores = ranker.score(frame)
    assert np.isfinite(scores).all()


def test_early_stopping_stops_before_n_estimators(data: dict[str, pl.DataFrame]) -> None:
    # The signal is learned within a few rounds; after that validation NDCG cannot improve.
    config = RankerConfig(
        n_estimators=500, learning_rate=0.3, num_leaves=7, min_child_samples=10, early_stopping_rounds=10,
        n_jobs=1,
    )
    fitted = fit_ranker(data["train"], data["valid"], FEATURES, config, seed=0)
    # lightgbm.train keeps only the best rounds, so the booster holds best_iteration trees.
    assert fitted.best_iteration < config.n_estimators // 2
    assert fitted.booster.current_iteration() == fitted.best_iteration


def test_without_valid_trains_fixed_rounds(data: dict[str, pl.DataFrame]) -> None:
    fitted = fit_ranker(data["train"], None, FEATURES, CONFIG, seed=0)
    assert fitted.best_iteration == fitted.booster.current_iteration() == CONFIG.n_estimators


def test_same_seed_same_scores(ranker: Ranker, data: dict[str, pl.DataFrame]) -> None:
    again = fit_ranker(data["train"], data["valid"], FEATURES, CONFIG, seed=0)
    np.testing.assert_array_equal(again.score(data["test"]), ranker.score(data["test"]))
    assert again.best_iteration == ranker.best_iteration


def test_save_load_round_trip(ranker: Ranker, data: dict[str, pl.DataFrame], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    save_ranker(ranker, folder)
    assert sorted(p.name for p in folder.iterdir()) == [FEATURES_FILE, MODEL_FILE]  # no temp files left
    meta = json.loads((folder / FEATURES_FILE).read_text())
    assert meta == {"feature_names": list(FEATURES), "best_iteration": ranker.best_iteration, "base": None}

    loaded = load_ranker(folder)
    assert loaded.feature_names == FEATURES
    assert loaded.best_iteration == ranker.best_iteration
    np.testing.assert_array_equal(loaded.score(data["test"]), ranker.score(data["test"]))


def test_trees_start_from_the_base_feature(data: dict[str, pl.DataFrame], tmp_path: Path) -> None:
    config = RankerConfig(n_estimators=3, learning_rate=0.1, num_leaves=7, min_child_samples=10, n_jobs=1,
                          base_feature="signal", base_scale=5.0)
    ranker = fit_ranker(data["train"], data["valid"], FEATURES, config, seed=0)
    assert ranker.base == ScoreBase("signal", 5.0)
    test = data["test"]
    x = test.select(pl.col(f).cast(pl.Float32) for f in FEATURES).to_numpy()
    trees = ranker.booster.predict(x, num_iteration=ranker.best_iteration)
    np.testing.assert_allclose(ranker.score(test), trees + 5.0 * test["signal"].to_numpy(), rtol=1e-5, atol=1e-5)
    # three shallow trees alone rank poorly; on top of the base every query's positive comes first
    assert top1_hit_rate(ranker, test) == 1.0

    save_ranker(ranker, tmp_path)
    loaded = load_ranker(tmp_path)
    assert loaded.base == ranker.base
    np.testing.assert_array_equal(loaded.score(test), ranker.score(test))
    meta = json.loads((tmp_path / FEATURES_FILE).read_text())
    del meta["base"]  # a model saved before bases existed
    (tmp_path / FEATURES_FILE).write_text(json.dumps(meta))
    assert load_ranker(tmp_path).base is None


def test_no_base_without_its_feature_or_scale(data: dict[str, pl.DataFrame]) -> None:
    train = data["train"]
    for config in (RankerConfig(n_estimators=2, n_jobs=1, base_feature="signal", base_scale=0.0),
                   RankerConfig(n_estimators=2, n_jobs=1, base_feature="not_a_feature")):
        assert fit_ranker(train, None, FEATURES, config, seed=0).base is None
    with pytest.raises(ValueError, match="base_scale"):
        fit_ranker(train, None, FEATURES, RankerConfig(n_estimators=2, base_feature="signal", base_scale=-1.0), seed=0)


def test_load_rejects_a_disagreeing_feature_list(ranker: Ranker, tmp_path: Path) -> None:
    save_ranker(ranker, tmp_path)
    meta = json.loads((tmp_path / FEATURES_FILE).read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (tmp_path / FEATURES_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained on"):
        load_ranker(tmp_path)


def test_groups_without_a_positive_are_dropped(data: dict[str, pl.DataFrame]) -> None:
    # Extra queries with no positive must not change the model: they carry no gradient.
    train = data["train"]
    empty = make_queries(30, 20, seed=9, prefix="e").with_columns(pl.lit(0, dtype=pl.Int8).alias(LABEL))
    base = fit_ranker(train, None, FEATURES, CONFIG, seed=0)
    padded = fit_ranker(pl.concat([empty, train]), None, FEATURES, CONFIG, seed=0)
    np.testing.assert_allclose(padded.score(data["test"]), base.score(data["test"]), rtol=1e-6)


def test_sample_negatives_keeps_positives_and_draws_per_query() -> None:
    frame = pl.DataFrame({
        USER_ID: ["a"] * 5 + ["b"] * 3 + ["c"] * 2,
        ITEM_ID: ["i1", "i2", "i3", "i4", "i5", "i1", "i2", "i3", "i1", "i2"],
        LABEL: [0, 1, 0, 0, 1, 0, 0, 0, 1, 0],
    })
    kept = sample_negatives(frame, 2, seed=7)
    counts = kept.group_by(USER_ID).agg(pl.col(LABEL).sum().alias("pos"), (pl.col(LABEL) == 0).sum().alias("neg"))
    assert dict(zip(counts[USER_ID], zip(counts["pos"], counts["neg"], strict=True), strict=True)) == {
        "a": (2, 2), "b": (0, 2), "c": (1, 1)}
    # Rows keep their order, and the draw of a query depends on its rows alone.
    assert kept.height == 8
    order = {row: i for i, row in enumerate(frame.select(USER_ID, ITEM_ID).iter_rows())}
    positions = [order[row] for row in kept.select(USER_ID, ITEM_ID).iter_rows()]
    assert positions == sorted(positions)
    per_query = pl.concat([sample_negatives(frame.filter(pl.col(USER_ID) == u), 2, seed=7) for u in "abc"])
    assert per_query.equals(kept)
    # Another seed draws other negatives; enough room keeps everything; 0 turns it off.
    draws = {tuple(sample_negatives(frame, 1, seed=s).filter(pl.col(USER_ID) == "a")[ITEM_ID]) for s in range(20)}
    assert len(draws) > 1
    assert sample_negatives(frame, 10, seed=7).equals(frame)
    assert sample_negatives(frame, 0, seed=7) is frame
    with pytest.raises(ValueError, match="item_id"):
        sample_negatives(frame.drop(ITEM_ID), 2, seed=7)


def test_fit_ranker_trains_on_the_drawn_negatives(data: dict[str, pl.DataFrame]) -> None:
    train = data["train"].with_columns(pl.int_range(pl.len()).cast(pl.String).alias(ITEM_ID))
    config = dataclasses.replace(CONFIG, train_negatives=5)
    sampled = fit_ranker(train, None, FEATURES, config, seed=0)
    by_hand = fit_ranker(sample_negatives(train, 5, seed=0), None, FEATURES, CONFIG, seed=0)
    np.testing.assert_array_equal(sampled.score(data["test"]), by_hand.score(data["test"]))
    assert top1_hit_rate(sampled, data["test"]) > 0.9
    # The rows the trees saw: the drawn ones of the queries with a positive.
    with_positive = sample_negatives(train, 5, seed=0).filter((pl.col(LABEL) > 0).any().over(USER_ID))
    assert sampled.train_rows == with_positive.height < train.height


def test_errors(data: dict[str, pl.DataFrame]) -> None:
    train = data["train"]
    with pytest.raises(ValueError, match="feature column"):
        fit_ranker(train.drop("noise_b"), None, FEATURES, CONFIG, seed=0)
    with pytest.raises(ValueError, match="valid lacks feature"):
        fit_ranker(train, data["valid"].drop("signal"), FEATURES, CONFIG, seed=0)
    with pytest.raises(ValueError, match="no user with a positive"):
        fit_ranker(train.with_columns(pl.lit(0).alias(LABEL)), None, FEATURES, CONFIG, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        fit_ranker(train, None, ("signal", "signal"), CONFIG, seed=0)
    ranker = fit_ranker(train, None, FEATURES, RankerConfig(n_estimators=2, n_jobs=1), seed=0)
    with pytest.raises(ValueError, match="feature column"):
        ranker.score(train.drop("signal"))
