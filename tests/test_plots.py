"""Run figures: metric@K curves, gain importance by group, Optuna study plots."""

from __future__ import annotations

import pytest

from fuserank.evaluation.plots import (
    gain_by_group,
    importance_figure,
    metric_curves,
    metric_curves_figure,
    optimisation_history_figure,
    param_importance_figure,
    save_figure,
    write_run_figures,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def planted_metrics() -> dict[str, float]:
    metrics = {"test_ndcg_at_10_ci_low": 0.01, "valid_ndcg_at_5": 0.3, "n_items": 100.0}
    for k in (5, 10, 20):
        metrics[f"test_ndcg_at_{k}"] = k / 100
        metrics[f"test_popular_ndcg_at_{k}"] = k / 200
        metrics[f"test_recall_at_{k}"] = k / 50
    return metrics


def test_metric_curves_are_read_per_system_and_sorted_by_k():
    curves = metric_curves(planted_metrics())
    assert curves["ndcg"]["fuserank"] == [(5, 0.05), (10, 0.1), (20, 0.2)]
    assert curves["ndcg"]["popular"] == [(5, 0.025), (10, 0.05), (20, 0.1)]
    assert "retrieval" not in curves["ndcg"] and "popular" not in curves["recall"]
    assert "mrr" not in curves  # no test_mrr_* metric planted
    assert metric_curves(planted_metrics(), prefix="valid_") == {"ndcg": {"fuserank": [(5, 0.3)]}}


def test_gain_by_group_sums_shares_per_modality_group():
    gains = {"cos_text_last": 3.0, "cos_text_profile": 1.0, "cos_behaviour_last": 4.0, "item_log_count": 2.0,
             "retrieval_rank": 0.0}
    shares = gain_by_group(gains)
    assert shares == pytest.approx({"behaviour": 0.4, "text": 0.4, "popularity": 0.2, "retrieval": 0.0})
    assert list(shares)[:2] == ["behaviour", "text"]  # largest first, ties by name
    assert set(gain_by_group({"cos_text_last": 0.0}).values()) == {0.0}


def test_figures_are_written_as_png(tmp_path):
    paths = write_run_figures(planted_metrics(), {"cos_text_last": 2.0, "user_log_history": 1.0}, tmp_path / "plots")
    assert set(paths) == {"test_metric_curves", "importance_by_group"}
    for path in paths.values():
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000
    assert not list((tmp_path / "plots").glob("*.tmp"))
    bars = importance_figure({"cos_text_last": 2.0, "user_log_history": 1.0}).axes[0].patches
    assert sorted(round(b.get_width(), 3) for b in bars) == [0.333, 0.667]
    with pytest.raises(ValueError, match="test_"):
        metric_curves_figure({"n_items": 3.0})


def test_metric_curves_have_a_panel_per_metric():
    metrics = planted_metrics() | {"test_precision_at_10": 0.02, "test_f1_at_10": 0.03}
    curves = metric_curves(metrics)
    assert curves["precision"] == {"fuserank": [(10, 0.02)]} and curves["f1"] == {"fuserank": [(10, 0.03)]}
    titles = [ax.get_title() for ax in metric_curves_figure(metrics).axes]
    assert titles == ["NDCG@K", "Recall@K", "MRR@K", "MAP@K", "Precision@K", "F1@K"]


def test_optuna_figures_come_from_a_study(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    assert param_importance_figure(study) is None
    study.optimize(lambda t: -(t.suggest_float("x", -1, 1) ** 2) + 0 * t.suggest_float("y", 0, 1), n_trials=8)
    history = optimisation_history_figure(study)
    assert len(history.axes[0].collections[0].get_offsets()) == 8  # one point per trial
    importance = param_importance_figure(study)
    labels = [t.get_text() for t in importance.axes[0].get_yticklabels()]
    assert set(labels) == {"x", "y"}
    assert save_figure(importance, tmp_path / "imp.png").read_bytes()[:8] == PNG_MAGIC
