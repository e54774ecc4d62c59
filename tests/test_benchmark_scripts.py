"""The benchmark pipelines on tiny data: ANN trade-off points and the peer benchmark's record."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fuserank.data.synthetic import GENRES, generate_catalog, generate_multimodal_catalog, write_catalog
from tiny_models import save_tiny_bert

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _catalog_settings(folder: Path, n_items: int, n_users: int) -> list[str]:
    """--set arguments that point a pipeline at a generated catalog written under `folder`."""
    items, interactions = generate_catalog(n_items=n_items, n_users=n_users, seed=3)
    items_path, interactions_path = write_catalog(folder, items, interactions)
    return ["--set", f"data.items_path={items_path}", "--set", f"data.interactions_path={interactions_path}"]


def test_ann_benchmark_points_are_ordered_and_exact_is_the_truth():
    perf = _load("benchmark_performance")
    out = perf.ann_benchmark(n=3000, d=16, n_queries=50, seed=0, k=20)
    hnsw = [p["recall_at_100"] for p in out["hnsw"]["points"]]
    ivf = [p["recall_at_100"] for p in out["ivf"]["points"]]
    # More search effort never loses recall, and the widest settings nearly match exact search.
    assert hnsw == sorted(hnsw) and ivf == sorted(ivf)
    assert hnsw[-1] > 0.9 and ivf[-1] > 0.9
    assert all(p["qps"] > 0 and p["speedup_vs_exact"] > 0 for p in out["hnsw"]["points"] + out["ivf"]["points"])


def test_clustered_vectors_are_unit_and_seeded():
    perf = _load("benchmark_performance")
    a = perf.clustered_vectors(500, 8, seed=1, n_clusters=5)
    assert a.shape == (500, 8) and abs(float((a * a).sum(axis=1).mean()) - 1.0) < 1e-5
    assert (a == perf.clustered_vectors(500, 8, seed=1, n_clusters=5)).all()


@pytest.mark.slow
def test_benchmark_peers_on_a_tiny_catalog(tmp_path):
    pytest.importorskip("cornac")
    peers = _load("benchmark_peers")
    catalog = _catalog_settings(tmp_path / "catalog", n_items=120, n_users=100)
    model = save_tiny_bert(tmp_path / "bert", words=["a", "story", "number", *GENRES])
    out = tmp_path / "peers.json"
    code = peers.main([
        "--dataset", "catalog", "--quiet", "--out", str(out), "--peers", "popular", "item_knn", "ease",
        *catalog, "--set", f"sources.cache_dir={tmp_path / 'cache'}", "--set", f"sources.text_model={model}",
        "--set", "retrieval.ann_candidates=40", "--set", "retrieval.popular_candidates=10",
        "--set", "ranker.n_estimators=50", "--set", "ranker.min_child_samples=5",
        "--recbole-set", "split.label_share=0.25", "--recbole-set", "ranker.base_scale=0.3", "--seeds", "5", "6",
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["protocols"]) == {"leave_last_out", "global_time", "recbole"}
    for protocol in report["protocols"]:
        result = report["protocols"][protocol]
        systems = [row["system"] for row in result["systems"]]
        assert systems == ["fuserank", "popular", "item_knn", "ease"]
        assert len({row["n_users"] for row in result["systems"]}) == 1  # one set of test users
        for row in result["systems"]:
            for metric in ("ndcg_at_10", "recall_at_10", "recall_at_20", "mrr_at_10"):
                assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"]
        assert len(result["details"]["ease"]["tuning"]) == 6
        # fuserank ran once per seed; the table shows the first
        spread = result["details"]["fuserank"]["over_seeds"]["test_ndcg_at_10"]
        assert set(spread["by_seed"]) == {"5", "6"} and spread["min"] <= spread["mean"] <= spread["max"]
        assert spread["by_seed"]["5"] == pytest.approx(result["systems"][0]["ndcg_at_10"], abs=1e-12)
    for protocol in ("leave_last_out", "global_time"):  # one target per test user
        assert report["protocols"][protocol]["n_test_targets"] == report["protocols"][protocol]["n_test_users"]
    assert report["protocols"]["recbole"]["n_test_targets"] > report["protocols"]["recbole"]["n_test_users"]
    # the recbole-only settings reach fuserank on that protocol and nowhere else
    recbole, temporal = report["protocols"]["recbole"]["details"], report["protocols"]["leave_last_out"]["details"]
    assert (recbole["fuserank"]["label_share"], recbole["fuserank"]["base_scale"]) == (0.25, 0.3)
    assert (temporal["fuserank"]["label_share"], temporal["fuserank"]["base_scale"]) == (0.0, 0.0)


@pytest.mark.slow
def test_stage_costs_measure_features_and_ranker_on_movielens():
    perf = _load("benchmark_performance")
    out = perf.stage_costs("movielens-100k", seed=0, trees=5)
    assert out["feature_rows"] > 100_000 and out["features"] > 30
    assert out["ranker_rows"] > out["feature_rows"] and out["ranker_trees"] == 5
    assert out["feature_rows_per_second"] > 0 and out["ranker_seconds_per_million_rows"] > 0


def test_neighbour_agreement_and_chance_match_hand_computed_values():
    purity = _load("benchmark_modality_purity")
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = ["x", "x", "y", "x"]
    # k=1: a<->b agree, c<->d do not. k=2: a: b, d (1); b: a, d (1); c: d, b (0); d: c, b (1/2).
    assert purity.neighbour_agreement(vectors, labels, k=1) == pytest.approx(0.5)
    assert purity.neighbour_agreement(vectors, labels, k=2, block=3) == pytest.approx(2.5 / 4)
    assert purity.chance_agreement(labels) == pytest.approx(3 * 2 / (4 * 3))
    with pytest.raises(ValueError, match="k must be"):
        purity.neighbour_agreement(vectors, labels, k=4)


def test_modality_purity_on_a_tiny_catalog(tmp_path):
    purity = _load("benchmark_modality_purity")
    generate_multimodal_catalog(tmp_path / "cat", n_items=48, n_users=10, seed=3, video_share=0.0)
    out = tmp_path / "purity.json"
    assert purity.main([str(tmp_path / "cat"), "--k", "5", "--out", str(out), "--quiet"]) == 0
    rows = {(r["view"], r["attributes"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 12
    # Colour and pitch are what the descriptor and the audio statistics see best.
    assert rows["image descriptor", "colour"]["agreement"] > 2 * rows["image descriptor", "colour"]["chance"]
    assert rows["audio statistics", "pitch"]["agreement"] > 2 * rows["audio statistics", "pitch"]["chance"]


def test_spread_over_seeds_by_hand():
    from fuserank.evaluation.benchmarking import spread_over_seeds

    out = spread_over_seeds({42: {"test_ndcg_at_10": 0.1}, 43: {"test_ndcg_at_10": 0.3}, 44: {"test_ndcg_at_10": 0.2}},
                            ("test_ndcg_at_10", "test_recall_at_10"))
    # mean 0.2; sample standard deviation sqrt((0.01 + 0.01 + 0) / 2) = 0.1
    got = out["test_ndcg_at_10"]
    assert {k: got[k] for k in ("mean", "std", "min", "max")} == pytest.approx(
        {"mean": 0.2, "std": 0.1, "min": 0.1, "max": 0.3})
    assert got["by_seed"] == {"42": 0.1, "43": 0.3, "44": 0.2}
    assert "test_recall_at_10" not in out  # only metrics the runs have


@pytest.mark.slow
def test_benchmark_sequence_records_the_shared_history_model_and_reads_it_back(tmp_path):
    pytest.importorskip("torch")
    sequence = _load("benchmark_sequence")
    args = ["--dataset", "catalog", "--quiet", "--cache-dir", str(tmp_path / "sequence"),
            *_catalog_settings(tmp_path / "catalog", n_items=60, n_users=40),
            "--set", "sequence.enabled=true", "--set", "sequence.dim=8", "--set", "sequence.max_epochs=2",
            "--set", "sequence.refit_epochs=1", "--set", "sequence.threads=1"]
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    assert sequence.main([*args, "--out", str(first)]) == 0
    assert sequence.main([*args, "--out", str(again)]) == 0
    trained = json.loads(first.read_text())["shared_history_model"]["42"]
    read = json.loads(again.read_text())["shared_history_model"]["42"]
    assert trained["epochs"] == len(trained["valid_ndcg_per_epoch"]) <= 2
    assert trained["train_seconds"] > 0
    # the second run reads every model back, the shared one with the seconds its training took
    assert read == trained
    assert json.loads(again.read_text())["by_seed"]["42"]["test"] | {"fit_seconds": 0, "rank_seconds": 0} == \
        json.loads(first.read_text())["by_seed"]["42"]["test"] | {"fit_seconds": 0, "rank_seconds": 0, "from_cache": True}


@pytest.mark.slow
def test_scale_benchmark_runs_every_step_from_the_file(tmp_path):
    pytest.importorskip("distributed")
    scale = _load("benchmark_scale")
    written = scale.write_size(tmp_path, n_users=1500, n_items=200)
    run = scale.run_size(tmp_path, ann=10, popular=5, batch_users=500, rounds=5)
    assert list(run["steps"]) == ["read (workers)", "cut-offs (workers)", "stage 1 and features (workers, kept there)",
                                  "ranker (workers)", "score (workers, per-user rows kept there)",
                                  "export (workers read the data)",
                                  "train-evaluate, the whole command (workers read the data)"]
    assert run["train_evaluate"]["n_test_users"] == written["users"]
    assert run["test_targets"] == run["scored_users"] == run["exported_users"] == written["users"]
    served = run["list_rows"] / 20  # 20 items to every user outside the 10% holdout
    assert served == int(served) and 0.8 * written["users"] < served < 0.97 * written["users"]
    assert run["feature_rows"] >= 10 * written["users"]
    for step in run["steps"].values():
        assert set(step["peak_rss_mb"]) == {"driver", "worker 0", "worker 1"} and step["peak_rss_mb"]["driver"] > 0
