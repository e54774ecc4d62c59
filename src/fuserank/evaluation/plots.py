"""Figures recorded with every run: metric@K curves, gain importance by feature group, and a
tuning study's optimisation history and parameter importances.

Figures are built as `matplotlib.figure.Figure` objects without pyplot (no global figure state,
no display needed); `save_figure` writes one as a PNG atomically. Optuna's own plots use pyplot,
so those figures are closed in pyplot before they are returned.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fuserank import atomic
from fuserank.ranking.features import feature_group

# System label -> metric-name prefix, as written by protocol.run_protocol.
SYSTEMS = {"fuserank": "test_", "popular": "test_popular_", "retrieval": "test_retrieval_"}
# Metric (a key of metrics.METRICS) -> panel title.
CURVE_METRICS = {"ndcg": "NDCG", "recall": "Recall", "mrr": "MRR", "map": "MAP", "precision": "Precision", "f1": "F1"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def metric_curves(metrics: Mapping[str, float], prefix: str = "test_") -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metric -> system -> [(K, value), ...] sorted by K, read from flat metric names.

    Args:
        metrics: flat metrics such as {"test_ndcg_at_10": 0.1, "test_popular_ndcg_at_10": 0.03}.
        prefix: "test_" (systems fuserank/popular/retrieval) or e.g. "valid_" (one system).
    """
    systems = SYSTEMS if prefix == "test_" else {"fuserank": prefix}
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for metric in CURVE_METRICS:
        for system, start in systems.items():
            pattern = re.compile(rf"^{re.escape(start)}{metric}_at_(\d+)$")
            points = sorted((int(m.group(1)), float(v)) for k, v in metrics.items() if (m := pattern.match(k)))
            if points:
                out.setdefault(metric, {})[system] = points
    return out


def metric_curves_figure(metrics: Mapping[str, float], prefix: str = "test_") -> Any:
    """One panel per metric (NDCG, Recall, MRR, MAP, Precision, F1) against the cut-off K, one line
    per system."""
    curves = metric_curves(metrics, prefix)
    if not curves:
        raise ValueError(f"no '{prefix}<metric>_at_<K>' metrics to plot")
    fig = _figure(13, 6.5)
    axes = fig.subplots(2, 3).ravel()
    for ax, (metric, title) in zip(axes, CURVE_METRICS.items(), strict=True):
        for system, points in curves.get(metric, {}).items():
            ks, values = zip(*points, strict=True)
            ax.plot(ks, values, marker="o", label=system)
        ax.set_title(f"{title}@K")
        ax.set_xlabel("K")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{prefix.rstrip('_')} metrics by cut-off")
    return fig


def gain_by_group(gains: Mapping[str, float]) -> dict[str, float]:
    """Share of the total LightGBM split gain per feature group (features.feature_group),
    largest first; the shares sum to 1 (all zero when the booster made no split)."""
    groups: dict[str, float] = {}
    for name, gain in gains.items():
        groups[feature_group(name)] = groups.get(feature_group(name), 0.0) + float(gain)
    total = sum(groups.values())
    shares = {g: (v / total if total > 0 else 0.0) for g, v in groups.items()}
    return dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))


def importance_figure(gains: Mapping[str, float]) -> Any:
    """Horizontal bars: share of the ranker's gain per modality / source group."""
    shares = gain_by_group(gains)
    fig = _figure(6, 0.4 * len(shares) + 1.2)
    ax = fig.subplots()
    names = list(shares)[::-1]
    ax.barh(names, [shares[n] for n in names])
    for y, name in enumerate(names):
        ax.text(shares[name], y, f" {shares[name]:.1%}", va="center", fontsize=8)
    ax.set_xlabel("share of total split gain")
    ax.set_title("LightGBM gain importance by feature group")
    ax.set_xlim(0, max(shares.values(), default=1.0) * 1.2 or 1.0)
    return fig


def _optuna_figure(plot: Any, study: Any) -> Any:
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna

    # Optuna switches pyplot to its own style globally; rc_context puts the process's style back.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot(study)
    fig = ax.figure if hasattr(ax, "figure") else ax.ravel()[0].figure
    fig.set_size_inches(8, 5)
    plt.close(fig)
    return fig


def optimisation_history_figure(study: Any) -> Any:
    """Optuna's optimisation history (objective per trial and best so far)."""
    import optuna.visualization.matplotlib as ovm

    return _optuna_figure(ovm.plot_optimization_history, study)


def param_importance_figure(study: Any) -> Any | None:
    """Optuna's hyper-parameter importances (fANOVA); None with fewer than 2 complete trials."""
    import optuna
    import optuna.visualization.matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    return _optuna_figure(ovm.plot_param_importances, study)


def save_figure(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG (100 dpi) at `path`, atomically; returns the path."""
    return atomic.write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_run_figures(metrics: Mapping[str, float], gains: Mapping[str, float], folder: Path,
                      prefixes: Sequence[str] = ("test_",)) -> dict[str, Path]:
    """The per-run figures as PNGs in `folder`: metric curves per prefix and gain by group."""
    paths = {}
    for prefix in prefixes:
        name = f"{prefix}metric_curves"
        paths[name] = save_figure(metric_curves_figure(metrics, prefix), Path(folder) / f"{name}.png")
    paths["importance_by_group"] = save_figure(importance_figure(gains), Path(folder) / "importance_by_group.png")
    return paths
