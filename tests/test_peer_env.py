"""peer_env: the lock file's key and checks, the .npz exchange both ways, the subprocess runner and
its result cache (with a stand-in worker in this interpreter), and benchmarking.tune_and_test.
The real RecTools venv is exercised only by the slow test, which skips when it is not built."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import SourcesConfig, cache_dir
from fuserank.data.cutoffs import Cutoff, Cutoffs
from fuserank.evaluation.benchmarking import tune_and_test
from fuserank.evaluation.peer_env import (
    PeerEnv, check_lock, env_key, read_result, recommend_in_env, request_arrays, request_key,
)
from fuserank.evaluation.peers import PEERS, PeerFitError, edge_choices

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "pipelines" / "peer_envs" / "rectools.lock.txt"
WORKER = ROOT / "pipelines" / "peer_envs" / "rectools_worker.py"


def _history(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={schema.USER_ID: pl.String, schema.ITEM_ID: pl.String,
                                      schema.TIMESTAMP: pl.Int64}, orient="row")


def test_env_key_ignores_comments_order_and_blanks_but_not_pins_or_python():
    lock = "a==1.0\nb==2.0\n"
    assert env_key(lock, "3.11") == env_key("# made by pip freeze\n\nb==2.0  # why\na==1.0\n", "3.11")
    assert env_key(lock, "3.11") != env_key("a==1.0\nb==2.1\n", "3.11")
    assert env_key(lock, "3.11") != env_key(lock, "3.12")
    assert len(env_key(lock, "3.11")) == 16


def test_check_lock_wants_every_line_pinned_exactly():
    assert check_lock("# c\na==1.0\nb==2.0+cpu\n") == ["a==1.0", "b==2.0+cpu"]
    for loose in ("a>=1.0\n", "a\n", "a==1.*\n", "a==1.0; python_version<'4'\n", "# only a comment\n"):
        with pytest.raises(ValueError, match="pins every package"):
            check_lock(loose)


def test_committed_rectools_lock_is_fully_pinned():
    lines = check_lock(LOCK.read_text(encoding="utf-8"))
    names = {line.split("==")[0].lower() for line in lines}
    assert {"rectools", "torch", "numpy", "pandas", "pytorch-lightning"} <= names
    numpy_version = next(line.split("==")[1] for line in lines if line.lower().startswith("numpy=="))
    assert int(numpy_version.split(".")[0]) < 2  # the clash that needs the venv


def test_request_codes_follow_event_order_with_equal_timestamps_kept():
    # u1's two rows share a timestamp: the file's row order decides, as sort_interactions does.
    history = _history([("u2", "c", 5), ("u1", "b", 7), ("u1", "a", 7), ("u1", "x", 1), ("u1", "zz", 9)])
    arrays = request_arrays(history, ["u1", "u3"], ["a", "b", "c", "x"], k=3, seed=7, params={"lr": 0.1})
    # users u1, u2, u3 -> 0, 1, 2; item "zz" is outside the catalog and dropped
    assert arrays["user"].tolist() == [0, 0, 0, 1]
    assert arrays["item"].tolist() == [3, 1, 0, 2]  # x (t=1), b, a (t=7, file order), then u2's c
    assert arrays["score_users"].tolist() == [0, 2]
    assert (int(arrays["n_items"]), int(arrays["k"]), int(arrays["seed"])) == (4, 3, 7)
    assert json.loads(str(arrays["params"])) == {"lr": 0.1}


def test_result_round_trip_drops_history_items_and_padding(tmp_path):
    history = _history([("u1", "a", 1), ("u2", "b", 1)])
    items = ["a", "b", "c", "d"]
    # u1's worker list holds its own history item "a" (must go); u2's is padded after one item.
    np.savez(tmp_path / "r.npz", items=np.array([[2, 0, 3], [3, -1, -1]]),
             scores=np.array([[0.9, 0.8, 0.7], [0.5, -np.inf, -np.inf]], dtype=np.float32),
             meta=np.array(json.dumps({"epochs": 2})))
    ranked, meta = read_result(tmp_path / "r.npz", ["u1", "u2"], items, history)
    assert ranked.schema == pl.Schema(schema.RANKED_LIST)
    assert ranked.rows() == [("u1", "c", 1, pytest.approx(0.9)), ("u1", "d", 2, pytest.approx(0.7)),
                             ("u2", "d", 1, pytest.approx(0.5))]
    assert meta == {"epochs": 2, "history_items_dropped": 1}


def test_result_with_foreign_codes_or_shape_is_refused(tmp_path):
    history = _history([("u1", "a", 1)])
    np.savez(tmp_path / "r.npz", items=np.array([[9]]), scores=np.array([[1.0]], dtype=np.float32),
             meta=np.array("{}"))
    with pytest.raises(ValueError, match="outside the catalog"):
        read_result(tmp_path / "r.npz", ["u1"], ["a", "b"], history)
    with pytest.raises(ValueError, match="shape"):
        read_result(tmp_path / "r.npz", ["u1", "u2"], ["a", "b"], history)


# A stand-in worker speaking the same exchange format with numpy only: most popular first.
FAKE_WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np
    req = np.load(sys.argv[1], allow_pickle=False)
    params = json.loads(str(req["params"]))
    if params.get("fail"):
        sys.exit("asked to fail")
    counts = np.bincount(req["item"], minlength=int(req["n_items"])).astype(np.float32)
    order = np.argsort(-counts, kind="stable")[: int(req["k"])]
    n = len(req["score_users"])
    np.savez(sys.argv[2], items=np.tile(order, (n, 1)), scores=np.tile(counts[order], (n, 1)),
             meta=np.array(json.dumps({"seed": int(req["seed"])})))
''')


def test_recommend_in_env_runs_the_worker_and_reuses_its_cached_result(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(FAKE_WORKER)
    env = PeerEnv(Path(sys.executable), "test", 0.0)
    history = _history([("u1", "a", 1), ("u2", "a", 1), ("u2", "b", 2), ("u3", "a", 1), ("u3", "b", 2)])
    items = ["a", "b", "c"]
    cache = tmp_path / "cache"
    ranked, meta = recommend_in_env(env, worker, {"x": 1}, history, ["u1", "u2"], items, 3, 5, cache_dir=cache)
    # popularity a (3) > b (2) > c (0); each user's own items are left out
    assert ranked.select(schema.USER_ID, schema.ITEM_ID, schema.RANK).rows() == [
        ("u1", "b", 1), ("u1", "c", 2), ("u2", "c", 1)]
    assert meta["seed"] == 5 and meta["from_cache"] is False and meta["history_items_dropped"] == 3
    assert len(list(cache.glob("*.npz"))) == 1
    worker.write_text(FAKE_WORKER.replace("asked to fail", "never"))  # another worker: another key
    again, meta = recommend_in_env(env, worker, {"x": 1}, history, ["u1", "u2"], items, 3, 5, cache_dir=cache)
    assert again.equals(ranked) and meta["from_cache"] is False
    again, meta = recommend_in_env(env, worker, {"x": 1}, history, ["u1", "u2"], items, 3, 5, cache_dir=cache)
    assert again.equals(ranked) and meta["from_cache"] is True
    with pytest.raises(RuntimeError, match="failed"):
        recommend_in_env(env, worker, {"fail": True}, history, ["u1"], items, 2, 5)


def test_request_key_changes_with_any_input():
    env = PeerEnv(Path(sys.executable), "k1", 0.0)
    history = _history([("u1", "a", 1), ("u1", "b", 2)])
    base = request_arrays(history, ["u1"], ["a", "b"], 2, 0, {"lr": 0.1})
    key = request_key(base, env, "worker")
    assert key == request_key(request_arrays(history, ["u1"], ["a", "b"], 2, 0, {"lr": 0.1}), env, "worker")
    assert key != request_key(request_arrays(history, ["u1"], ["a", "b"], 2, 1, {"lr": 0.1}), env, "worker")
    assert key != request_key(request_arrays(history, ["u1"], ["a", "b"], 2, 0, {"lr": 0.2}), env, "worker")
    assert key != request_key(base, PeerEnv(Path(sys.executable), "k2", 0.0), "worker")
    assert key != request_key(base, env, "worker 2")


def test_edge_choices_by_hand():
    grid = [{"a": a, "b": b, "c": 1} for a in (1, 2, 3) for b in (0.0, 5.0)]
    assert edge_choices(grid, {"a": 2, "b": 0.0, "c": 1}, bounds={}) == {"b": "low"}
    assert edge_choices(grid, {"a": 2, "b": 0.0, "c": 1}, bounds={"b": 0.0}) == {}
    assert edge_choices(grid, {"a": 3, "b": 5.0, "c": 1}) == {"a": "high", "b": "high"}
    assert edge_choices(grid, {"a": 1, "b": 5.0, "c": 1}) == {"a": "low", "b": "high"}


def test_every_tuned_axis_has_an_inside():
    for name, peer in PEERS.items():
        for axis in peer.grid[0]:
            values = {params[axis] for params in peer.grid}
            assert len(values) == 1 or len(values) >= 3, (name, axis, values)


def test_tune_and_test_chooses_on_validation_and_scores_test():
    def cutoff(history_rows, targets_rows):
        targets = _history(targets_rows)
        return Cutoff(name="toy", history=_history(history_rows), targets=targets,
                      ref_times=targets.select(schema.USER_ID, schema.TIMESTAMP))

    valid = cutoff([("u1", "a", 1)], [("u1", "b", 2)])
    test = cutoff([("u1", "a", 1), ("u1", "b", 2)], [("u1", "c", 3)])
    seen: list[tuple[int, int]] = []

    def rank(params, history, users):
        seen.append((params["p"], history.height))
        if params["p"] == 3:
            raise PeerFitError("diverged")
        # p=2 puts the validation target first; the test list then holds the test target at rank 2.
        order = {1: ["c", "b"], 2: ["b", "c"], 3: ["d", "c"]}[params["p"]]
        order = list(dict.fromkeys([i for i in order if i not in history[schema.ITEM_ID].to_list()] + ["d"]))
        return pl.DataFrame({schema.USER_ID: ["u1"] * len(order), schema.ITEM_ID: order,
                             schema.RANK: list(range(1, len(order) + 1))}), {"p": params["p"]}

    cutoffs = Cutoffs(protocol="leave_last_out", labels=(), valid=valid, test=test, cold_test=_history([]),
                      interactions=_history([]))
    result = tune_and_test("toy", rank, [{"p": 1}, {"p": 2}, {"p": 3}], cutoffs)
    assert result.params == {"p": 2} and result.grid_size == 3 and result.edges == {}
    assert seen == [(1, 1), (2, 1), (3, 1), (2, 2)]  # three validation fits, then the refit on test history
    assert [row.get("fit") for row in result.tuning] == [{"p": 1}, {"p": 2}, None]
    assert result.tuning[2] == {"params": {"p": 3}, "valid_ndcg_at_10": None, "error": "diverged"}
    assert result.per_user["ndcg_at_10"].to_list() == pytest.approx([1.0])  # c first once b is history
    assert result.test_meta == {"p": 2}


@pytest.mark.slow
def test_rectools_worker_in_the_real_env_ranks_a_planted_sequence(tmp_path):
    """The committed lock's venv, if built (the peer benchmark builds it on first use)."""
    from fuserank.evaluation.peer_env import env_key as key_of

    env_dir = cache_dir(SourcesConfig()) / "peer_envs" / f"rectools-{key_of(LOCK.read_text(encoding='utf-8'))}"
    if not (env_dir / "fuserank-peer-env-ready.json").exists():
        pytest.skip(f"RecTools venv not built at {env_dir}: run pipelines/benchmark_peers.py with rectools_sasrec once")
    env = PeerEnv(env_dir / "bin" / "python", "real", 0.0)
    # Every user walks i0 -> i1 -> ... -> i9 from a random start; after i_j comes i_{j+1}.
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        start = int(rng.integers(0, 5))
        rows += [(f"u{u}", f"i{j}", j) for j in range(start, start + 5)]
    history = _history(rows)
    items = [f"i{j}" for j in range(10)]
    params = {"n_factors": 16, "session_max_len": 8, "lr": 0.01, "batch_size": 16, "max_epochs": 40, "patience": 40,
              "threads": 1}
    users = [f"u{u}" for u in range(60)]
    ranked, meta = recommend_in_env(env, WORKER, params, history, users, items, 3, 0)
    assert meta["library"].startswith("rectools 0.19") and meta["history_items_dropped"] == 0
    last = {u: max(j for uu, i, j in rows if uu == u) for u in users}
    top = {u: i for u, i, r in ranked.select(schema.USER_ID, schema.ITEM_ID, schema.RANK).rows() if r == 1}
    # Each user's newest item is RecTools' validation target, not trained on: the step i7 -> i8 is
    # never learned and i9 never occurs, so users ending at i7 or i8 have no learnable answer.
    hits = [top.get(u) == f"i{last[u] + 1}" for u in users if last[u] <= 6]
    assert len(hits) >= 20
    assert np.mean(hits) >= 0.8
