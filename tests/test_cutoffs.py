"""Cut-offs and the time rule: planted timelines with known targets, and traps that add other
users' later interactions and check that nothing a query may not know changes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import BehaviourConfig, FeatureConfig, FusionConfig, RetrievalConfig, SplitConfig, load_config
from fuserank.data.cutoffs import build_cutoffs, cut_times, global_time_cutoffs
from fuserank.data.synthetic import generate_catalog
from fuserank.encoders.base import Embeddings
from fuserank.retrieval.popularity import reference_times
from fuserank.pipeline import candidate_features, fit_stage_one


def _frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    users, items, times = zip(*rows)
    return pl.DataFrame({schema.USER_ID: list(users), schema.ITEM_ID: list(items), schema.TIMESTAMP: list(times),
                         schema.RATING: [None] * len(rows)}, schema=schema.INTERACTIONS)


def _keys(frame: pl.DataFrame) -> list[tuple[str, str, int]]:
    return [tuple(r) for r in frame.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP).rows()]


# Cuts at 100 (validation) and 200 (test).
# a: before, in the validation window twice, after the test cut twice.
# b: a validation target, nothing after the test cut. c: only after the test cut (a cold user).
# d: no validation interaction, a test target.
TIMELINE = _frame([
    ("a", "a1", 10), ("a", "a2", 50), ("a", "a3", 150), ("a", "a4", 160), ("a", "a5", 250), ("a", "a6", 260),
    ("b", "b1", 20), ("b", "b2", 120),
    ("c", "c1", 210),
    ("d", "d1", 30), ("d", "d2", 220),
])
CUTS = SplitConfig(protocol="global_time", valid_time=100, test_time=200, label_cutoffs=1)


def test_global_time_targets_are_each_users_first_interaction_after_a_cut():
    cutoffs = global_time_cutoffs(TIMELINE, CUTS)
    assert _keys(cutoffs.valid.targets) == [("a", "a3", 150), ("b", "b2", 120)]
    assert _keys(cutoffs.valid.history) == [("a", "a1", 10), ("a", "a2", 50), ("b", "b1", 20), ("d", "d1", 30)]
    assert _keys(cutoffs.test.targets) == [("a", "a5", 250), ("d", "d2", 220)]
    # The test history is everything before the test cut, a's second validation-window row too.
    assert ("a", "a4", 160) in _keys(cutoffs.test.history)
    assert cutoffs.test.history[schema.TIMESTAMP].max() < 200
    assert _keys(cutoffs.cold_test) == [("c", "c1", 210)]
    # Every query's reference time is its cut.
    assert cutoffs.test.ref_times[schema.REF_TIME].to_list() == [200, 200]
    assert cutoffs.valid.ref_times[schema.REF_TIME].to_list() == [100, 100]


def test_global_time_label_cutoffs_step_back_before_the_validation_cut():
    cutoffs = global_time_cutoffs(TIMELINE, CUTS)
    # 4 of the 11 rows lie between the cuts, so the label cut is 4 rows earlier than the
    # validation cut (row 1 of the sorted times, t=20): targets are first rows in [20, 100).
    (label,) = cutoffs.labels
    assert label.history[schema.TIMESTAMP].max() < 20
    assert _keys(label.targets) == [("a", "a2", 50)]
    assert label.ref_times[schema.REF_TIME].to_list() == [20]


def test_cut_times_from_quantiles_or_seconds_and_their_checks():
    times = _frame([("u", f"i{t}", t) for t in range(100)])
    assert cut_times(times, SplitConfig(protocol="global_time")) == (80, 90)
    assert cut_times(times, SplitConfig(protocol="global_time", valid_time=5, test_time=7)) == (5, 7)
    with pytest.raises(ValueError, match="before the test cut"):
        cut_times(times, SplitConfig(protocol="global_time", valid_time=7, test_time=7))
    with pytest.raises(ValueError, match="set together"):
        cut_times(times, SplitConfig(protocol="global_time", valid_time=7))


def test_no_user_to_evaluate_is_one_clear_error_before_any_work():
    with pytest.raises(ValueError, match=r"min_interactions = 12 interactions \(the most any user has is 6\)"):
        build_cutoffs(TIMELINE, SplitConfig(min_interactions=12))
    with pytest.raises(ValueError, match="no user has both an interaction before the test cut"):
        build_cutoffs(TIMELINE, SplitConfig(protocol="global_time", valid_time=100, test_time=1000))


def _stage_inputs():
    items, interactions = generate_catalog(n_items=80, n_users=40, seed=3, interactions_per_user=(6, 14))
    interactions = interactions.select(list(schema.INTERACTIONS))
    ids = tuple(items[schema.ITEM_ID].to_list())
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return interactions, ids, {"text": Embeddings(ids, vectors, np.ones(len(ids), dtype=bool))}


def _features(history, users, ids, content, ref_times):
    retrieval = RetrievalConfig(ann_candidates=15, popular_candidates=10, neighbourhood_candidates=5,
                                neighbourhood_pool=20)
    stage = fit_stage_one(history, ids, content, BehaviourConfig(enabled=False), FusionConfig(weights={"text": 1.0}),
                          retrieval, seed=0)
    frame, _ = candidate_features(stage, history, users, retrieval, FeatureConfig(), ref_times=ref_times)
    return frame.sort(schema.USER_ID, schema.ITEM_ID)


def test_other_users_later_interactions_change_none_of_a_users_candidates_or_features():
    interactions, ids, content = _stage_inputs()
    users = interactions[schema.USER_ID].unique().sort().to_list()[:6]
    ref_times = reference_times(interactions, users)
    before = _features(interactions, users, ids, content, ref_times)
    # Other users pile onto a few items right after these users' reference times: under the old
    # whole-history counts these items would jump to the top of every popularity signal.
    late = int(ref_times[schema.REF_TIME].max()) + 1
    crowd = _frame([(f"late{u}", ids[k], late + u) for u in range(60) for k in (1, 2, 3)])
    after = _features(pl.concat([interactions, crowd]), users, ids, content, ref_times)
    assert before.equals(after)
    # The trap is live: with reference times after the crowd, the same call does change.
    moved = ref_times.with_columns(pl.lit(late + 10_000, pl.Int64).alias(schema.REF_TIME))
    assert not _features(pl.concat([interactions, crowd]), users, ids, content, moved).equals(before)


@pytest.mark.slow
def test_global_time_later_interactions_of_new_users_change_no_metric(tmp_path):
    from fuserank.evaluation.protocol import run_protocol

    interactions, ids, content = _stage_inputs()
    times = np.sort(interactions[schema.TIMESTAMP].to_numpy())
    valid_time, test_time = int(times[int(0.7 * len(times))]), int(times[int(0.85 * len(times))])
    config = load_config(None, [
        "seed=3", f"output_dir={tmp_path}", "tracking.enabled=false", "split.protocol=global_time",
        f"split.valid_time={valid_time}", f"split.test_time={test_time}", "retrieval.ann_candidates=30",
        "retrieval.popular_candidates=10", "behaviour.dim=8", "ranker.n_estimators=20", "ranker.min_child_samples=5",
    ])
    first = run_protocol(build_cutoffs(interactions, config.split), ids, content, config)
    late = int(interactions[schema.TIMESTAMP].max()) + 1
    newcomers = _frame([(f"new{u}", ids[u % 7], late + u) for u in range(30)])
    cutoffs = build_cutoffs(pl.concat([interactions, newcomers]), config.split)
    second = run_protocol(cutoffs, ids, content, config)
    assert first.per_user.equals(second.per_user)
    assert second.metrics["n_test_cold_users"] == first.metrics.get("n_test_cold_users", 0) + 30
    for key in ("test_ndcg_at_10", "test_recall_at_10", "valid_ndcg_at_10", "test_stage1_recall"):
        assert first.metrics[key] == second.metrics[key]


def test_train_evaluate_without_an_evaluable_user_stops_with_one_line_and_no_run(tmp_path, capsys):
    from fuserank.cli import main

    (tmp_path / "items.csv").write_text("item_id,text\na,x\nb,y\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp,rating\nu1,a,1,1\nu2,b,2,2\nu2,a,3,3\n")
    db = tmp_path / "mlflow.db"
    code = main(["train-evaluate", "--quiet", "--set", "data.dataset=catalog",
                 "--set", f"data.items_path={tmp_path / 'items.csv'}",
                 "--set", f"data.interactions_path={tmp_path / 'inter.csv'}",
                 "--set", f"tracking.tracking_uri=sqlite:///{db}", "--set", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == ("fuserank: no user has split.min_interactions = 3 interactions (the most any user has is 2), "
                       "so nobody can be evaluated; lower split.min_interactions or add data")
    # Stopped before any run or output (the output folder may exist: it is checked writable first).
    assert not db.exists() and not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_export_queries_take_the_reference_time_rule_of_their_protocol():
    from fuserank.data.cutoffs import serving_ref_times

    users = ["d", "a", "c"]
    per_user = serving_ref_times(TIMELINE, users, "leave_last_out")
    assert per_user.rows() == [("d", 220), ("a", 260), ("c", 210)]  # each user's newest interaction
    now = serving_ref_times(TIMELINE, users, "global_time")
    assert now.rows() == [("d", 260), ("a", 260), ("c", 260)]  # the newest interaction in the data


def test_no_ranker_label_is_a_clear_error_too():
    from fuserank.data.cutoffs import ProtocolError

    # Three interactions each: one train row per user, and a label cut-off needs two.
    rows = _frame([(u, f"{u}{n}", n) for u in ("a", "b") for n in range(3)])
    with pytest.raises(ProtocolError, match="enough train interactions to give the ranker a label"):
        build_cutoffs(rows, SplitConfig())


@pytest.mark.parametrize("cold_items", [0.0, 0.2])
@pytest.mark.parametrize("protocol", ["leave_last_out", "global_time"])
def test_the_shared_history_is_in_every_cutoffs_history_and_nothing_else(protocol, cold_items):
    _, interactions = generate_catalog(n_items=120, n_users=80, seed=5, interactions_per_user=(6, 12))
    interactions = interactions.select(list(schema.INTERACTIONS))
    times = np.sort(interactions[schema.TIMESTAMP].to_numpy())
    extra = ({"valid_time": int(times[len(times) * 6 // 10]), "test_time": int(times[len(times) * 8 // 10])}
             if protocol == "global_time" else {})
    cutoffs = build_cutoffs(interactions, SplitConfig(protocol=protocol, cold_items=cold_items, **extra))
    every = (*cutoffs.labels, cutoffs.valid, cutoffs.test)
    shared = set(_keys(cutoffs.test.shared_history))
    assert shared and all(cutoff.shared_history is cutoffs.test.shared_history for cutoff in every)
    in_all = set.intersection(*(set(_keys(cutoff.history)) for cutoff in every))
    assert shared == in_all
    if cold_items == 0:  # nested histories: the shared one is the earliest cut-off's
        assert cutoffs.test.shared_history.equals(cutoffs.labels[-1].history)
    else:  # each earlier cut-off hides its own items, so the shared history is smaller than any
        assert all(len(shared) < cutoff.history.height for cutoff in every)
