"""The cold-item protocol (issue 17): planted catalogs where the cold items, their interactions
and the slices are known, and traps on every place that learns or counts from a history."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import SplitConfig, load_config
from fuserank.data.cutoffs import (
    Cutoff,
    build_cutoffs,
    cutoffs_from_split,
    global_time_cutoffs,
    select_cold_items,
)
from fuserank.data.split import leave_last_out
from fuserank.data.synthetic import generate_catalog
from fuserank.encoders.base import Embeddings
from fuserank.evaluation.baselines import content_knn_rankings, random_rankings
from fuserank.evaluation.scoring import stage_one_counts
from fuserank.evaluation.slices import format_slices, slice_metrics, user_slices
from fuserank.retrieval.cold import cold_candidates, content_vectors
from fuserank.retrieval.popularity import reference_times

ITEM = pl.col(schema.ITEM_ID)


def _frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    users, items, times = zip(*rows)
    return pl.DataFrame({schema.USER_ID: list(users), schema.ITEM_ID: list(items), schema.TIMESTAMP: list(times),
                         schema.RATING: [None] * len(rows)}, schema=schema.INTERACTIONS)


def _catalog():
    items, interactions = generate_catalog(n_items=120, n_users=80, seed=5, interactions_per_user=(6, 12))
    interactions = interactions.select(list(schema.INTERACTIONS))
    ids = tuple(items[schema.ITEM_ID].to_list())
    vectors = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return interactions, ids, {"text": Embeddings(ids, vectors, np.ones(len(ids), dtype=bool))}


def _unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_cold_items_by_seeded_hash_or_latest_first_appearance():
    rows = _frame([("u", "a", 1), ("u", "b", 2), ("v", "c", 3), ("v", "a", 9), ("w", "d", 8), ("w", "e", 8)])
    # latest: first interactions at a 1, b 2, c 3, d 8, e 8 (e's row is later): e, then d.
    assert select_cold_items(rows, 0.2, "latest") == {"e"}
    assert select_cold_items(rows, 0.4, "latest") == {"d", "e"}
    # hash: a fixed share (at least one item), the same for the same seed, independent of the row order.
    chosen = select_cold_items(rows, 0.4, "hash", seed=1)
    assert len(chosen) == 2 and chosen == select_cold_items(rows.reverse(), 0.4, "hash", seed=1)
    assert len(select_cold_items(rows, 0.01)) == 1
    seeds = {select_cold_items(rows, 0.4, "hash", seed=s) for s in range(8)}
    assert len(seeds) > 1  # the seed moves the choice
    with pytest.raises(ValueError, match="cold share"):
        select_cold_items(rows, 0.0)


def test_cold_items_off_leaves_every_cutoff_exactly_as_it_was():
    interactions, _, _ = _catalog()
    split = SplitConfig()
    plain = cutoffs_from_split(leave_last_out(interactions, split.min_interactions), split)
    built = build_cutoffs(interactions, split)
    assert built.cold_items == frozenset()
    for a, b in zip((built.valid, built.test, *built.labels), (plain.valid, plain.test, *plain.labels), strict=True):
        assert a.history.equals(b.history) and a.targets.equals(b.targets) and a.ref_times.equals(b.ref_times)
    times = np.sort(interactions[schema.TIMESTAMP].to_numpy())
    cuts = SplitConfig(protocol="global_time", valid_time=int(times[len(times) * 7 // 10]),
                       test_time=int(times[len(times) * 85 // 100]))
    plain, built = global_time_cutoffs(interactions, cuts), build_cutoffs(interactions, cuts)
    assert built.test.history.equals(plain.test.history) and built.test.targets.equals(plain.test.targets)


@pytest.mark.parametrize("protocol", ["leave_last_out", "global_time"])
def test_no_history_holds_a_cold_item_and_only_test_targets_name_one(protocol):
    interactions, _, _ = _catalog()
    times = np.sort(interactions[schema.TIMESTAMP].to_numpy())
    extra = ({"valid_time": int(times[len(times) * 6 // 10]), "test_time": int(times[len(times) * 8 // 10])}
             if protocol == "global_time" else {})
    cutoffs = build_cutoffs(interactions, SplitConfig(protocol=protocol, cold_items=0.2, **extra))
    cold = list(cutoffs.cold_items)
    assert len(cold) == round(0.2 * interactions[schema.ITEM_ID].n_unique())
    for cutoff in (*cutoffs.labels, cutoffs.valid, cutoffs.test):
        assert cutoff.history.filter(ITEM.is_in(cold)).is_empty(), cutoff.name
        # every query has history, and its reference time comes from the masked history
        assert set(cutoff.users) <= set(cutoff.history[schema.USER_ID].to_list())
    for cutoff in (*cutoffs.labels, cutoffs.valid):
        assert cutoff.targets.filter(ITEM.is_in(cold)).is_empty(), cutoff.name
        assert cutoff.absent == cutoffs.cold_items, cutoff.name  # no target there may name one
        # cold-like positives: targets on items the cut-off hid from its own history
        unseen = cutoff.targets.join(cutoff.history.select(schema.ITEM_ID).unique(), on=schema.ITEM_ID, how="anti")
        assert unseen.height > 0, cutoff.name
    assert not cutoffs.test.targets.filter(ITEM.is_in(cold)).is_empty()  # the cold slice
    assert cutoffs.test.absent == frozenset()
    if protocol == "leave_last_out":
        test = cutoffs.test
        assert test.ref_times.equals(reference_times(test.history, test.users))


def test_earlier_cutoffs_offer_only_zero_interaction_items_that_may_be_the_answer():
    """At a label cut-off a cold item can never be the answer, so it is no candidate there: every
    zero-interaction candidate is an item that cut-off hid, as every one at test is a cold item."""
    from fuserank.pipeline import cutoff_frame

    interactions, ids, content = _catalog()
    config = load_config(None, ["seed=3", "tracking.enabled=false", "retrieval.ann_candidates=40",
                                "retrieval.popular_candidates=10", "retrieval.cold_candidates=30",
                                "behaviour.dim=8", "split.cold_items=0.2"])
    cutoffs = build_cutoffs(interactions, config.split)
    cold = list(cutoffs.cold_items)
    for cutoff in (cutoffs.labels[0], cutoffs.valid, cutoffs.test):
        _, _, candidates = cutoff_frame(config, cutoff, ids, content)
        unseen = candidates.join(cutoff.history.select(schema.ITEM_ID).unique(), on=schema.ITEM_ID, how="anti")
        named = candidates.filter(ITEM.is_in(cold))
        if cutoff is cutoffs.test:
            assert not named.is_empty()
        else:
            assert named.is_empty(), cutoff.name
            assert not unseen.is_empty() and set(unseen[schema.ITEM_ID]).isdisjoint(cold), cutoff.name


def test_cold_source_finds_only_unseen_items_by_content():
    ids = ("a", "b", "c", "d")
    # b and d are unseen; u's history (a) points at d's content, not b's.
    text = Embeddings(ids, _unit([[1, 0], [0, 1], [0.5, 0.5], [0.9, 0.1]]), np.ones(4, dtype=bool))
    history = _frame([("u", "a", 1), ("v", "c", 2)])
    vectors = content_vectors({"text": text, "behaviour": text}, {"text": 1.0, "behaviour": 1.0})
    assert vectors.shape == (4, 2)  # behaviour is left out
    found = cold_candidates(vectors, ids, history, ["u"], 5)
    assert found[schema.ITEM_ID].to_list() == ["d", "b"] and set(found[schema.SOURCE]) == {"cold"}
    assert cold_candidates(vectors, ids, history, ["u"], 0).is_empty()


def test_slices_by_hand():
    history = _frame([("u1", "a", 1), ("u2", "a", 2), ("u2", "b", 3)] + [("u3", f"i{k}", k) for k in range(7)])
    targets = _frame([("u1", "b", 9), ("u2", "z", 9), ("u3", "a", 9)])  # z: no interaction in the history
    users = ["u1", "u2", "u3"]
    cutoff = Cutoff("test", history, targets, reference_times(history, users))
    slices = user_slices(cutoff)
    assert slices["target_kind"].to_list() == ["warm", "cold", "warm"]
    assert slices["history_length"].to_list() == [1, 2, 7]
    assert slices["history_bin"].to_list() == ["history_1_5", "history_1_5", "history_6_20"]
    per_user = pl.DataFrame({
        "system": ["fuserank"] * 3 + ["popular"] * 3,
        schema.USER_ID: users * 2,
        "ndcg_at_10": [1.0, 0.5, 0.0, 0.25, 0.0, 1.0],
        "recall_at_10": [1.0, 1.0, 0.0, 1.0, 0.0, 1.0],
    })
    candidates = pl.DataFrame({schema.USER_ID: ["u1", "u2", "u3"], schema.ITEM_ID: ["b", "x", "a"]})
    out = slice_metrics(per_user, slices, stage_one_counts(candidates, targets, 10), targets, "test_", seed=0, n_boot=200)
    assert out["test_slice_warm_n_users"] == 2 and out["test_slice_cold_n_users"] == 1
    assert out["test_slice_warm_ndcg_at_10"] == 0.5 and out["test_slice_cold_ndcg_at_10"] == 0.5
    assert out["test_popular_slice_warm_ndcg_at_10"] == 0.625 and out["test_popular_slice_cold_ndcg_at_10"] == 0.0
    assert out["test_slice_history_1_5_ndcg_at_10"] == 0.75 and out["test_slice_history_1_5_recall_at_10"] == 1.0
    assert out["test_slice_history_6_20_ndcg_at_10"] == 0.0
    assert out["test_slice_history_21_100_n_users"] == 0 and "test_slice_history_21_100_ndcg_at_10" not in out
    assert out["test_slice_warm_stage1_recall"] == 1.0 and out["test_slice_cold_stage1_recall"] == 0.0
    assert out["test_slice_cold_ndcg_at_10_ci_low"] == out["test_slice_cold_ndcg_at_10_ci_high"] == 0.5
    assert out["test_slice_cold_ndcg_at_10_gain_vs_popular_ci_low"] == 0.5
    table = format_slices(out)
    assert table.splitlines()[0].split()[:3] == ["slice", "users", "NDCG@10"] and "popular" in table.splitlines()[0]
    assert [line.split()[0] for line in table.splitlines()[1:3]] == ["warm", "cold"]


def test_baselines_rank_unseen_items_content_knn_by_text():
    ids = ("a", "b", "c", "d")
    text = Embeddings(ids, _unit([[1, 0], [0, 1], [0.6, 0.4], [0.9, 0.1]]), np.ones(4, dtype=bool))
    history = _frame([("u", "a", 1), ("v", "b", 1)])
    knn = content_knn_rankings(history, ["u"], text, 2)
    assert knn[schema.ITEM_ID].to_list() == ["d", "c"] and knn[schema.RANK].to_list() == [1, 2]
    drawn = random_rankings(history, ["u", "v"], ids, 10, seed=1)
    assert drawn.filter(pl.col(schema.USER_ID) == "u")[schema.ITEM_ID].sort().to_list() == ["b", "c", "d"]
    assert drawn.equals(random_rankings(history, ["v", "u"], ids, 10, seed=1))


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """run_protocol under the cold-item protocol, with the histories every learner was given."""
    import fuserank.pipeline as pipeline
    import fuserank.ranking.features as features
    from fuserank.evaluation.protocol import run_protocol

    interactions, ids, content = _catalog()
    seen: dict[str, list[pl.DataFrame]] = {"behaviour": [], "ease": [], "candidates": [], "features": [],
                                           "popular": [], "transitions": [], "timeline": []}
    monkeypatch = pytest.MonkeyPatch()

    def watch(module, name, key, position=0):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            seen[key].append(args[position])
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    watch(pipeline, "fit_behaviour", "behaviour")
    watch(pipeline, "fit_ease", "ease")
    watch(pipeline, "generate_candidates", "candidates", 1)
    watch(pipeline, "build_features", "features", 1)
    watch(pipeline, "popular_candidates", "popular")
    watch(features, "fit_transitions", "transitions")
    watch(features, "item_timeline", "timeline")
    try:
        config = load_config(None, [
            "seed=3", f"output_dir={tmp_path_factory.mktemp('cold')}", "tracking.enabled=false",
            "retrieval.ann_candidates=40", "retrieval.popular_candidates=10", "retrieval.cold_candidates=15",
            "behaviour.dim=8", "ranker.n_estimators=20", "ranker.min_child_samples=5", "eval.top_k=20",
            "split.cold_items=0.2", "features.transition_window=3",
        ])
        cutoffs = build_cutoffs(interactions, config.split)
        result = run_protocol(cutoffs, list(ids), content, config)
    finally:
        monkeypatch.undo()
    return cutoffs, result, seen


def test_cold_interactions_reach_no_learner_and_no_statistic(cold_run):
    cutoffs, _, seen = cold_run
    cold = list(cutoffs.cold_items)
    for key in ("behaviour", "ease", "candidates", "features", "popular", "transitions", "timeline"):
        assert seen[key], f"{key} was never called"
        for history in seen[key]:
            assert history.filter(ITEM.is_in(cold)).is_empty(), key


def test_cold_slice_ranks_over_unseen_items_and_most_popular_scores_zero(cold_run):
    cutoffs, result, _ = cold_run
    metrics = result.metrics
    n_cold = metrics["test_slice_cold_n_users"]
    assert n_cold == cutoffs.test.targets.filter(ITEM.is_in(list(cutoffs.cold_items))).height > 0
    assert metrics["test_slice_warm_n_users"] + n_cold == metrics["n_test_users"]
    assert metrics["test_popular_slice_cold_ndcg_at_10"] == 0.0  # it can never name a cold item
    assert metrics["test_slice_cold_stage1_recall"] > 0  # the cold source reaches them
    for key in ("test_slice_cold_ndcg_at_10_ci_low", "test_content_knn_slice_cold_ndcg_at_10",
                "test_random_slice_cold_recall_at_10", "test_slice_history_6_20_recall_at_10_ci_high"):
        assert key in metrics
    # fuserank's lists hold cold items, and never an item of the user's history
    ranked = result.ranked
    assert not ranked.filter(ITEM.is_in(list(cutoffs.cold_items))).is_empty()
    assert ranked.join(cutoffs.test.history, on=[schema.USER_ID, schema.ITEM_ID], how="semi").is_empty()


def test_the_run_summary_prints_the_slice_table(cold_run):
    from fuserank.jobs.train_evaluate import format_summary

    _, result, _ = cold_run
    text = format_summary(result.metrics)
    assert "test_ndcg_at_10_gain_vs_content_knn" in text and "_slice_" not in text
    table = text.split("\n\n")[-1].splitlines()
    assert table[0].split()[:2] == ["slice", "users"]
    assert [line.split()[0] for line in table[1:]] == ["warm", "cold", "history_1_5", "history_6_20",
                                                     "history_21_100", "history_over_100"]


@pytest.mark.slow
def test_benchmark_cold_writes_the_slice_tables_and_the_spread(tmp_path):
    import json

    module = _pipeline_script("benchmark_cold")
    out = tmp_path / "cold.json"
    assert module.main([*_tiny_synthetic_arguments(tmp_path), "--out", str(out), "--seeds", "5", "6"]) == 0
    report = json.loads(out.read_text())
    assert report["seeds"] == [5, 6] and "split.cold_items=0.1" in report["settings"]
    rows = {row["variant"]: row for row in report["runs"]["5"]["table"]}
    assert {"full", "without_text", "without_behaviour", "baseline_popular", "baseline_content_knn"} <= set(rows)
    assert rows["full"]["cold_users"] > 0 and rows["baseline_popular"]["cold_test_ndcg_at_10"] == 0.0
    assert set(report["over_seeds"]["full/cold_test_ndcg_at_10"]["by_seed"]) == {"5", "6"}
    assert "cold-item slice" in out.with_suffix(".txt").read_text()


def test_unseen_candidate_report_by_hand():
    from fuserank.evaluation.cold_diagnosis import unseen_candidate_report

    seen = ["a", "b", *(f"s{k}" for k in range(10))]
    history = _frame([("h", item, k) for k, item in enumerate(seen)])
    # u1 and u2 rank unseen items (x, y; y is a cold item) among seen ones; u3's target is its 10th seen item.
    rows = [("u1", "a", 0.9, 0), ("u1", "x", 0.8, 1), ("u1", "b", 0.1, 0),
            ("u2", "b", 0.5, 1), ("u2", "y", 0.4, 0), ("u2", "x", 0.3, 0),
            *(("u3", f"s{k}", 1.0 - k / 10, int(k == 9)) for k in range(10))]
    users, items, scores, labels = zip(*rows)
    frame = pl.DataFrame({schema.USER_ID: users, schema.ITEM_ID: items, schema.LABEL: labels})
    report = unseen_candidate_report(frame, np.array(scores), history, cold_items={"y"})
    assert report == {
        "candidates": 16.0, "users": 3.0, "unseen_share": 3 / 16, "cold_items_offered": 1.0,
        "positives": 3.0, "unseen_positives": 1.0, "seen_positive_rate": 2 / 13, "unseen_positive_rate": 1 / 3,
        "unseen_in_top10": 3.0, "unseen_positives_in_top10": 1.0, "unseen_positive_median_rank": 2.0,
        "best_unseen_is_target": 1.0, "tenth_seen_is_target": 1.0,
    }


def test_new_item_slots_put_each_users_best_new_candidate_first(tmp_path):
    from fuserank.evaluation.protocol import run_protocol

    interactions, ids, content = _catalog()
    config = load_config(None, [
        "seed=3", f"output_dir={tmp_path}", "tracking.enabled=false", "retrieval.ann_candidates=40",
        "retrieval.popular_candidates=10", "retrieval.cold_candidates=15", "behaviour.dim=8",
        "ranker.n_estimators=20", "ranker.min_child_samples=5", "eval.top_k=20", "split.cold_items=0.2",
        "slots.new_items=[1]",
    ])
    cutoffs = build_cutoffs(interactions, config.split)
    result = run_protocol(cutoffs, list(ids), content, config)
    first = result.ranked.filter(pl.col(schema.RANK) == 1)
    assert first.height == len(cutoffs.test.users)
    # new to the model: no interaction in the history stage 1 was fitted on
    assert first.join(cutoffs.test.history, on=schema.ITEM_ID, how="semi").is_empty()
    assert not first.filter(ITEM.is_in(list(cutoffs.cold_items))).is_empty()


@pytest.mark.parametrize("l2", [0.0, 10.0])
def test_cold_items_get_a_behaviour_vector_from_content_only_when_asked(l2):
    from fuserank.pipeline import fit_stage

    interactions, ids, content = _catalog()
    config = load_config(None, ["behaviour.dim=8", "split.cold_items=0.2", f"behaviour.content_map_l2={l2}"])
    cutoffs = build_cutoffs(interactions, config.split)
    stage = fit_stage(config, cutoffs.test.history, ids, content)
    behaviour = stage.embeddings["behaviour"]
    cold = np.isin(np.asarray(ids), list(cutoffs.cold_items))
    assert cold.any()
    assert behaviour.mask[cold].all() == (l2 > 0) and behaviour.vectors[cold].any() == (l2 > 0)
    # the items the history encodes keep their vectors
    unmapped = fit_stage(load_config(None, ["behaviour.dim=8"]), cutoffs.test.history, ids, content)
    known = unmapped.embeddings["behaviour"].mask
    np.testing.assert_array_equal(behaviour.vectors[known], unmapped.embeddings["behaviour"].vectors[known])


def _pipeline_script(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _tiny_synthetic_arguments(tmp_path) -> list[str]:
    """A cold benchmark's arguments for a small synthetic catalog and a tiny text model written
    under `tmp_path`, with a small ranker."""
    from fuserank.data.synthetic import GENRES, write_catalog
    from tiny_models import save_tiny_bert

    items, interactions = generate_catalog(n_items=120, n_users=100, seed=3)
    catalog = write_catalog(tmp_path / "catalog", items, interactions)[0].parent
    model = save_tiny_bert(tmp_path / "bert", words=["a", "story", "number", *GENRES])
    return ["--dataset", "synthetic", "--catalog", str(catalog), "--quiet",
            "--set", f"sources.cache_dir={tmp_path / 'cache'}", "--set", f"sources.text_model={model}",
            "--set", "retrieval.ann_candidates=40", "--set", "retrieval.popular_candidates=10",
            "--set", "ranker.n_estimators=20", "--set", "ranker.min_child_samples=5"]


def test_slot_count_chosen_on_validation_within_the_price():
    _pipeline_script("benchmark_cold")
    chosen = _pipeline_script("benchmark_new_item_slots").chosen_slots
    rows = [{"slots": 0, "all": 0.100}, {"slots": 1, "all": 0.097}, {"slots": 2, "all": 0.0951},
            {"slots": 3, "all": 0.0949}]
    assert chosen(rows, 0.05) == 2  # 0.0951 >= 0.095, 0.0949 is not
    assert chosen(rows, 0.0) == 0


@pytest.mark.slow
def test_benchmark_new_item_slots_writes_each_slot_count_on_validation_and_test(tmp_path):
    import json

    _pipeline_script("benchmark_cold")
    module = _pipeline_script("benchmark_new_item_slots")
    out = tmp_path / "slots.json"
    assert module.main([*_tiny_synthetic_arguments(tmp_path), "--out", str(out), "--seeds", "5",
                        "--slots", "0", "2"]) == 0
    report = json.loads(out.read_text())
    run = report["runs"]["5"]
    assert run["chosen_slots"] in (0, 2)
    for name in ("validation", "test"):
        rows = {r["slots"]: r for r in run[name]["rows"]}
        assert set(rows) == {0, 2} and rows[2]["positions"] == [9, 10]
        assert rows[0]["all_vs_no_slots"]["delta"] == 0.0 and rows[0]["n_cold_users"] > 0
        assert "cold_vs_content_knn" in rows[2]
    assert set(report["over_seeds"]) >= {"0", "2", "chosen_slots"}
    assert "cold vs kNN" in out.with_suffix(".txt").read_text()


def test_random_lists_of_consecutive_runs_of_users_with_their_starts_are_the_whole_lists():
    ids = tuple(f"i{n}" for n in range(7))
    history = _frame([("u1", "i0", 1), ("u2", "i3", 1), ("u3", "i1", 1), ("u4", "i6", 1), ("u5", "i2", 1)])
    users = ["u1", "u2", "u3", "u4", "u5"]
    whole = random_rankings(history, users, ids, 4, seed=3)
    runs = [random_rankings(history, users[a:b], ids, 4, seed=3, start=a) for a, b in ((0, 2), (2, 3), (3, 5))]
    assert pl.concat(runs).equals(whole)
    assert not random_rankings(history, users[2:], ids, 4, seed=3).equals(whole.filter(pl.col(schema.USER_ID) >= "u3"))


def test_baselines_scored_in_batches_of_users_equal_the_lists_of_every_user_scored_at_once():
    from fuserank.evaluation.protocol import score_in_batches
    from fuserank.evaluation.scoring import most_popular_rankings, score_ranked

    ids = tuple(f"i{n}" for n in range(6))
    rng = np.random.default_rng(0)
    text = Embeddings(ids, _unit(rng.normal(size=(6, 3))), np.ones(6, dtype=bool))
    rows = [(f"u{n}", ids[int(i)], t) for n in range(9) for t, i in enumerate(rng.choice(6, size=3, replace=False))]
    history = _frame(rows)
    targets = _frame([(f"u{n}", ids[n % 6], 9) for n in range(9) if n != 4])  # u4 has no target
    users = [f"u{n}" for n in range(9)]
    baselines = {
        "popular": lambda batch, _: most_popular_rankings(history, batch, 3),
        "content_knn": lambda batch, _: content_knn_rankings(history, batch, text, 3),
        "random": lambda batch, start: random_rankings(history, batch, ids, 3, seed=5, start=start),
    }
    for name, lists in baselines.items():
        whole = score_ranked(lists(users, 0), targets, (1, 3))
        batched = score_in_batches(lists, users, targets, (1, 3), batch_users=2)
        assert batched.per_user.equals(whole.per_user), name
        assert batched.covered == whole.covered, name
        assert whole.per_user.height == 8
