"""Peer recommenders on tiny planted data: each must recover the planted structure."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import SplitConfig
from fuserank.data.cutoffs import build_cutoffs
from fuserank.evaluation import benchmarking
from fuserank.retrieval.collaborative import user_matrix
from fuserank.evaluation.peers import PEERS, edge_choices, item_similarity, recommend


def _frame(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            schema.USER_ID: [u for u, _ in pairs],
            schema.ITEM_ID: [i for _, i in pairs],
            schema.TIMESTAMP: list(range(len(pairs))),
        },
        schema={schema.USER_ID: pl.String, schema.ITEM_ID: pl.String, schema.TIMESTAMP: pl.Int64},
    )


def _checkerboard(n_users: int = 40, n_items: int = 20) -> tuple[pl.DataFrame, list[str]]:
    """Even users like even items, odd users odd items (implicit's checkerboard); every user
    misses one item of their own parity, the planted answer."""
    items = [f"i{j:02d}" for j in range(n_items)]
    pairs = []
    for u in range(n_users):
        own = [j for j in range(n_items) if j % 2 == u % 2]
        held_out = own[u % len(own)]
        pairs += [(f"u{u:02d}", items[j]) for j in own if j != held_out]
    return _frame(pairs), items


def test_interaction_matrix_is_binary_and_ignores_unknown_rows():
    history = _frame([("a", "x"), ("a", "x"), ("b", "y"), ("c", "x"), ("a", "zzz")])
    matrix = user_matrix(history, ["a", "b"], ["x", "y"])
    assert matrix.shape == (2, 2)
    assert matrix.toarray().tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_item_knn_recovers_planted_co_occurrence():
    # x and y always go together; z goes with w. A user who has only x must get y first.
    pairs = [(f"u{n}", "x") for n in range(10)] + [(f"u{n}", "y") for n in range(10)]
    pairs += [(f"v{n}", "z") for n in range(12)] + [(f"v{n}", "w") for n in range(12)]
    pairs += [("probe", "x")]
    history = _frame(pairs)
    ranked = recommend("item_knn", {"neighbours": 2, "shrink": 0.0}, history, ["probe"], ["w", "x", "y", "z"], 3, 0)
    assert ranked[schema.ITEM_ID].to_list()[0] == "y"
    assert "x" not in ranked[schema.ITEM_ID].to_list()  # seen items are excluded
    assert ranked[schema.RANK].to_list() == [1, 2, 3]


def test_item_similarity_prunes_to_neighbours_and_zeroes_diagonal():
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 8)) < 0.4).astype(np.float32)
    import scipy.sparse as sp

    sim = item_similarity(sp.csr_matrix(dense), neighbours=3, shrink=0.0)
    assert np.all(np.diag(sim) == 0)
    assert np.all((sim > 0).sum(axis=0) <= 3)
    full = item_similarity(sp.csr_matrix(dense), neighbours=0, shrink=0.0)
    a, b = dense[:, 0], dense[:, 1]
    assert full[0, 1] == pytest.approx(a @ b / np.sqrt(a.sum() * b.sum()), rel=1e-5)


def test_popular_ranks_by_count_without_seen_items():
    history = _frame([("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("c", "z")])
    ranked = recommend("popular", {}, history, ["c"], ["x", "y", "z"], 5, 0)
    assert ranked[schema.ITEM_ID].to_list() == ["y"]  # x and z are c's own items


@pytest.mark.parametrize("name", ["item_knn", "als", "bpr", "ease"])
def test_peer_recovers_checkerboard(name):
    pytest.importorskip({"als": "implicit", "bpr": "implicit", "ease": "cornac"}.get(name, "numpy"))
    history, items = _checkerboard()
    users = history[schema.USER_ID].unique().sort().to_list()
    params = dict(PEERS[name].grid[0])
    if name in ("als", "bpr"):
        # ALS with many factors would learn the planted holes themselves; 2 factors hold the parity.
        params |= {"factors": 2 if name == "als" else 8, "threads": 1}
    if name == "bpr":
        params |= {"learning_rate": 0.05, "iterations": 200}
    ranked = recommend(name, params, history, users, items, 1, seed=0)
    top = dict(zip(ranked[schema.USER_ID].to_list(), ranked[schema.ITEM_ID].to_list(), strict=True))
    # The one unseen item of the user's own parity must come first, for every user.
    hits = [int(top[u][1:]) % 2 == int(u[1:]) % 2 for u in users]
    assert np.mean(hits) >= 0.95, name
    again = recommend(name, params, history, users, items, 1, seed=0)
    assert again.equals(ranked)  # same seed, same lists


def test_recommend_rejects_unknown_peer():
    with pytest.raises(ValueError, match="unknown peer"):
        recommend("nope", {}, _frame([("a", "x")]), ["a"], ["x"], 1, 0)


def test_grids_hold_the_values_earlier_benchmarks_chose_inside_them():
    # Chosen on validation by the first 6-configuration grids, each on one of their edges
    # (benchmarks/peers_movielens-*.json before the grids were widened).
    chosen = {"item_knn": [{"neighbours": 50, "shrink": 0.0}, {"neighbours": 400, "shrink": 50.0}],
              "als": [{"factors": 128, "alpha": 1.0, "regularization": 0.05},
                      {"factors": 64, "alpha": 5.0, "regularization": 0.05}],
              "bpr": [{"factors": 64, "learning_rate": 0.01}, {"factors": 128, "learning_rate": 0.1}]}
    # Chosen on ML-100K global time by the grids before 8 factors were added.
    chosen["als"].append({"factors": 16, "alpha": 1.0, "regularization": 0.05})
    chosen["bpr"].append({"factors": 16, "learning_rate": 0.01})
    # Chosen on ML-1M global time before shrink 1000 and learning rate 0.001 were added.
    chosen["item_knn"].append({"neighbours": 400, "shrink": 200.0})
    chosen["bpr"].append({"factors": 32, "learning_rate": 0.003})
    # Chosen on ML-100K global time before shrink 5000 and learning rate 0.0003 were added.
    chosen["item_knn"].append({"neighbours": 20, "shrink": 1000.0})
    chosen["bpr"].append({"factors": 32, "learning_rate": 0.001})
    for name, choices in chosen.items():
        for params in choices:
            assert params in [dict(p) for p in PEERS[name].grid], (name, params)
            assert edge_choices(PEERS[name].grid, params) == {}, (name, params)


def test_a_rerun_reads_each_peer_fit_back_from_the_cache_and_new_inputs_fit_again(tmp_path, monkeypatch):
    history, items = _checkerboard()
    interactions = history.with_columns(pl.lit(None, dtype=pl.Float64).alias(schema.RATING)).select(
        list(schema.INTERACTIONS))
    cutoffs = build_cutoffs(interactions.cast(schema.INTERACTIONS), SplitConfig(label_cutoffs=1))
    first = benchmarking.run_peer("ease", cutoffs, items, seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("ease-*.parquet"))) == len(PEERS["ease"].grid) + 1  # the grid, then test

    fits = []
    fit = benchmarking.recommend
    monkeypatch.setattr(benchmarking, "recommend", lambda *args, **kwargs: fits.append(args) or fit(*args, **kwargs))
    again = benchmarking.run_peer("ease", cutoffs, items, seed=0, cache_dir=tmp_path)
    assert not fits
    assert again.tuning == [{**row, "fit": {**row["fit"], "from_cache": True}} for row in first.tuning]
    assert all(row["fit"]["fit_seconds"] > 0 for row in again.tuning)  # the first run's seconds
    assert again.per_user.equals(first.per_user)

    shorter = build_cutoffs(interactions.cast(schema.INTERACTIONS).head(interactions.height - 1),
                            SplitConfig(label_cutoffs=1))
    benchmarking.run_peer("ease", shorter, items, seed=0, cache_dir=tmp_path)
    assert fits  # another history is another key


_MODULE = '''"""Peers."""
from x import Peer, _grid


def fit_a(matrix, params, seed):
    """Fit a."""
    return matrix * params["factors"]  # scale


PEERS = {"a": Peer(fit_a, _grid(factors=(16, 32)), "lib")}
'''


def test_a_peer_fit_key_follows_the_fitting_code_not_the_grid_or_the_docstrings():
    digest = benchmarking.code_digest(_MODULE)
    same = [
        _MODULE.replace("factors=(16, 32)", "factors=(8, 16, 32)"),  # a widened grid
        _MODULE.replace('"""Fit a."""', '"""Fit a, reworded."""').replace('"""Peers."""', '"""Other."""'),
        _MODULE.replace("# scale", "# another comment"),
    ]
    assert all(benchmarking.code_digest(source) == digest for source in same)
    assert benchmarking.code_digest(_MODULE.replace('params["factors"]', 'params["factors"] + 1')) != digest


def test_a_fit_that_diverged_is_kept_as_its_error(tmp_path, monkeypatch):
    history, items = _checkerboard()
    interactions = history.with_columns(pl.lit(None, dtype=pl.Float64).alias(schema.RATING)).select(
        list(schema.INTERACTIONS))
    cutoffs = build_cutoffs(interactions.cast(schema.INTERACTIONS), SplitConfig(label_cutoffs=1))
    fits = []
    fit = benchmarking.recommend

    def diverging(name, params, *args, **kwargs):
        fits.append(dict(params))
        if params == PEERS["ease"].grid[-1]:
            raise benchmarking.PeerFitError("diverged")
        return fit(name, params, *args, **kwargs)

    monkeypatch.setattr(benchmarking, "recommend", diverging)
    first = benchmarking.run_peer("ease", cutoffs, items, seed=0, cache_dir=tmp_path)
    assert first.tuning[-1]["error"] == "diverged" and fits
    fits.clear()
    again = benchmarking.run_peer("ease", cutoffs, items, seed=0, cache_dir=tmp_path)
    assert not fits  # the diverged fit is not tried again
    assert again.tuning[-1] == first.tuning[-1]
