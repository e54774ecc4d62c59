"""MLflow helpers: the only module that imports mlflow.

The store is sqlite under mlruns/ with artifacts beside it, because MLflow 3 keeps the plain
file store in maintenance mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fuserank.config import TrackingConfig

# MLflow caps a param value at 6,000 characters.
_MAX_PARAM = 6000


def _prepare_store(config: TrackingConfig) -> None:
    import mlflow

    if config.tracking_uri.startswith("sqlite:///"):
        Path(config.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # MLflow otherwise starts a background thread to upload system metrics and logs warnings
    # about git; neither belongs in a batch job.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    mlflow.set_tracking_uri(config.tracking_uri)


def experiment_id(config: TrackingConfig) -> str:
    """The id of the configured experiment, created with artifacts under `artifact_root`."""
    import mlflow

    _prepare_store(config)
    found = mlflow.get_experiment_by_name(config.experiment)
    if found is not None:
        return found.experiment_id
    location = Path(config.artifact_root).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(config.experiment, artifact_location=location.as_uri())


@contextmanager
def tracked_run(config: TrackingConfig, run_name: str | None, tags: Mapping[str, str]) -> Iterator[str | None]:
    """Open an MLflow run and yield its id (None when tracking is disabled).

    A run left by an exception ends with status FAILED, so a crashed run never looks successful.
    """
    if not config.enabled:
        yield None
        return
    import mlflow

    exp = experiment_id(config)
    with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=dict(tags)) as run:
        yield run.info.run_id


def log_params(params: Mapping[str, Any]) -> None:
    """Log flat params (values stringified and truncated to MLflow's limit)."""
    import mlflow

    clean = {k: str(v)[:_MAX_PARAM] for k, v in params.items()}
    items = list(clean.items())
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: Mapping[str, float]) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def log_artifacts(paths: Sequence[tuple[str, Path]]) -> None:
    """Log files as (artifact sub-folder, local file) pairs; "" is the run's artifact root."""
    import mlflow

    for folder, path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder or None)


def log_lightgbm(booster: Any, name: str = "ranker") -> None:
    """Log the booster as an MLflow LightGBM model (saved in LightGBM's own text format).

    pip_requirements are given so MLflow does not spend ~16 s inferring them by import tracing.
    """
    import lightgbm
    import mlflow.lightgbm

    mlflow.lightgbm.log_model(booster, name=name, pip_requirements=[f"lightgbm=={lightgbm.__version__}"])
