"""MLflow helpers: with registry.py (models and datasets) the only modules that import mlflow.

The store is sqlite under mlruns/ with artifacts beside it, because MLflow 3 keeps the plain
file store in maintenance mode.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fuserank.atomic import check_writable, file_lock, process_alive
from fuserank.config import TrackingConfig

# MLflow caps a param value at 6,000 characters.
_MAX_PARAM = 6000
# host:pid of the process that opened a run, so a later run can tell a killed one from a live one.
WORKER_TAG = "fuserank.worker"
# Tags of a dataset input (registry.log_datasets): MLflow's context and the fuserank table it holds.
CONTEXT_TAG = "mlflow.data.context"
TABLE_TAG = "fuserank.table"


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def prepare_store(config: TrackingConfig) -> None:
    """Point MLflow at the store; a new sqlite store gets its tables under the store lock."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if config.tracking_uri.startswith("sqlite:///"):
        Path(config.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # MLflow otherwise starts a background thread to upload system metrics and logs warnings
    # about git; neither belongs in a batch job.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # Its per-download progress bars would interleave with fuserank's own (and ignore --quiet).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(config.tracking_uri)
    with store_lock(config):
        # The first query creates and migrates the tables; two processes doing that at once fail.
        MlflowClient(tracking_uri=config.tracking_uri).search_experiments(max_results=1)


@contextmanager
def store_lock(config: TrackingConfig) -> Iterator[None]:
    """Exclusive across processes for a sqlite store (a lock file beside the database), so that
    jobs started together create its tables and an experiment once; no-op for other stores,
    whose servers serialise this themselves."""
    if not config.tracking_uri.startswith("sqlite:///"):
        yield
        return

    with file_lock(Path(f"{config.tracking_uri.removeprefix('sqlite:///')}.lock")):
        yield


def check_outputs(config: TrackingConfig, folder: Path) -> Path:
    """Fail fast, before any work: the job's output `folder` and, when tracking to a sqlite
    store, the store's folder and the artifact root must be writable. Returns `folder`.

    Raises:
        atomic.OutputError: naming the folder that cannot be written and why.
    """

    check_writable(folder)
    if config.enabled and config.tracking_uri.startswith("sqlite:///"):
        check_writable(Path(config.tracking_uri.removeprefix("sqlite:///")).parent, "MLflow store folder")
        check_writable(Path(config.artifact_root), "MLflow artifact folder")
    return folder


def experiment_id(config: TrackingConfig) -> str:
    """The id of the configured experiment, created with artifacts under `artifact_root`."""
    import mlflow

    prepare_store(config)
    with store_lock(config):  # two jobs must not both find it missing and both create it
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
    Runs of this experiment that a killed process on this host left RUNNING are first marked
    KILLED (`end_orphaned_runs`).
    """
    if not config.enabled:
        yield None
        return
    import mlflow

    exp = experiment_id(config)
    end_orphaned_runs(exp)
    with mlflow.start_run(experiment_id=exp, run_name=run_name, tags={**tags, WORKER_TAG: _worker()}) as run:
        yield run.info.run_id


def end_orphaned_runs(experiment: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `experiment` whose process on this host is gone; returns
    their ids. Runs of live processes and of other hosts are left alone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        worker_host, _, pid = run.data.tags.get(WORKER_TAG, "").rpartition(":")
        if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


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
    """Log files as (artifact sub-folder, local file) pairs; "" is the run's artifact root.

    MLflow (3.17) stages each file under a hidden name in a local artifact store and renames it,
    so a copy that fails half-way leaves no partial artifact (tests/test_outputs.py checks it).
    """
    import mlflow

    for folder, path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder or None)


# --- nested runs, tags, search and artifacts (tuning, comparison, UI) ---


class NestedRun:
    """A child run's id and the status it ends with ("FINISHED" unless changed, e.g. "KILLED")."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.status = "FINISHED"


@contextmanager
def nested_run(run_name: str, tags: Mapping[str, str]) -> Iterator[NestedRun]:
    """A child of the active run, in the parent's experiment; ends FAILED on an exception."""
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("nested_run needs an active parent run")
    run = mlflow.start_run(
        experiment_id=parent.info.experiment_id, run_name=run_name, nested=True, tags={**tags, WORKER_TAG: _worker()}
    )
    handle = NestedRun(run.info.run_id)
    try:
        yield handle
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status=handle.status)


def set_tags(tags: Mapping[str, str]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def search_runs(
    config: TrackingConfig, experiment: str | None = None, run_ids: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Runs by id (in the order given) or every run of an experiment (oldest first).

    Returns:
        One dict per run: run_id, run_name, experiment_id, status, start_time (ms), metrics,
        params and tags (dicts of str -> float / str), and datasets (`run_datasets`).

    Raises:
        ValueError: the experiment does not exist, or neither an experiment nor ids are given.
    """
    from mlflow.tracking import MlflowClient

    prepare_store(config)
    client = MlflowClient(tracking_uri=config.tracking_uri)
    if run_ids:
        runs = [client.get_run(run_id) for run_id in run_ids]
    elif experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ValueError(f"MLflow experiment {experiment!r} does not exist in {config.tracking_uri}")
        runs, token = [], None
        while True:
            page = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"],
                                      max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    else:
        raise ValueError("search_runs needs an experiment name or run ids")
    return [
        {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or "",
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "metrics": dict(run.data.metrics),
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "datasets": run_datasets(run),
        }
        for run in runs
    ]


def run_datasets(run: Any) -> list[dict[str, Any]]:
    """An MLflow run's dataset inputs: dicts of name, digest, source, context ("training" /
    "evaluation"), table ("items" / "interactions"; None when not logged by fuserank) and
    profile (row counts)."""
    found = []
    for given in getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []:
        tags = {tag.key: tag.value for tag in given.tags}
        try:
            profile = json.loads(given.dataset.profile or "{}")
        except json.JSONDecodeError:
            profile = {}
        found.append({"name": given.dataset.name, "digest": given.dataset.digest, "source": given.dataset.source,
                      "context": tags.get(CONTEXT_TAG), "table": tags.get(TABLE_TAG), "profile": profile})
    return found


def download_artifact(config: TrackingConfig, run_id: str, artifact_path: str, dst: Path) -> Path | None:
    """Copy one artifact of a run into `dst` (a folder); None when the run has no such artifact."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    prepare_store(config)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=config.tracking_uri
        )
    except (MlflowException, OSError):
        return None
    return Path(local)


def ui_command(config: TrackingConfig, port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow ui` command line and environment for this store, bound to 127.0.0.1.

    One worker, and no job-execution process: the UI then runs as 2 processes in ~0.5 GB.
    """

    if config.tracking_uri.startswith("sqlite:///"):
        Path(config.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow_bin, "ui", "--backend-store-uri", config.tracking_uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", GIT_PYTHON_REFRESH="quiet")
    return command, env
