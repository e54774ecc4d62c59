"""The rows and seeds that let a data-parallel LightGBM machine draw the local fit's bag."""

from __future__ import annotations

import numpy as np
import pytest

from fuserank.jobs.bagging_blocks import BLOCK, bagging_seed, bags, held_rows, machine_seed, query_pieces


def test_held_rows_are_whole_blocks_around_the_owned_rows():
    assert held_rows(0, 2500, 5000) == (0, 3 * BLOCK)
    assert held_rows(2500, 5000, 5000) == (2 * BLOCK, 5000)  # the last block of all stays short
    assert held_rows(2048, 3072, 5000) == (2048, 3072)  # on block boundaries: nothing borrowed
    assert machine_seed({"bagging_seed": 10}, 2 * BLOCK) == {"bagging_seed": 12}


def test_query_pieces_cut_the_first_and_last_query():
    sizes = np.array([3, 4, 5])  # queries at rows [0, 3), [3, 7), [7, 12)
    assert query_pieces(sizes, 1, 9).tolist() == [2, 4, 2]
    assert query_pieces(sizes, 3, 7).tolist() == [4]
    assert query_pieces(sizes, 8, 12).tolist() == [4]


def test_bags_only_with_a_fraction_below_one_and_a_frequency():
    assert bags({"bagging_fraction": 0.8, "bagging_freq": 1})
    assert not bags({"bagging_fraction": 1.0, "bagging_freq": 1})
    assert not bags({"bagging_fraction": 0.8, "bagging_freq": 0})


@pytest.mark.parametrize("seed", [0, 5, 42, 123456])
def test_bagging_seed_is_the_one_lightgbm_derives_from_seed(seed):
    import lightgbm

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=3000) > 1).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "bagging_fraction": 0.5, "bagging_freq": 1, "seed": seed,
              "verbosity": -1, "num_threads": 1}

    def model(extra):
        return lightgbm.train({**params, **extra}, lightgbm.Dataset(x, label=y), 5).model_to_string()

    derived = bagging_seed(params)
    assert model({"bagging_seed": derived}) == model({})
    assert model({"bagging_seed": derived + 1}) != model({})
    assert bagging_seed({}) == 3 and bagging_seed({"seed": 1, "bagging_seed": 9}) == 9
