"""Job settings: where outputs go, tracking, tuning, export and the Dask cluster.

They change how a job runs, not what a model is; `RunConfig` is the experiment plus these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fuserank.config.experiment import ExperimentConfig
from fuserank.config.fields import one_of, ranged
from fuserank.ranking.feature_groups import GROUPS


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow store: sqlite under mlruns/ by default.

    registered_model: the registered model each train-evaluate adds its ranker to as a new
        version ("" registers nothing); arms and `fuserank promote` name it.
    """

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment: str = "fuserank"
    enabled: bool = True
    registered_model: str = "fuserank"


@dataclass(frozen=True)
class TuneConfig:
    """Optuna study over ranker parameters, fusion weights, candidate depth and feature groups.

    storage: any Optuna database URL; several processes given the same URL and study_name share
        one study (each trial seeded by its position, so no two draw alike), and rerunning
        continues it. A study is bound to its data and base config (jobs/study.py): continuing it
        with other data or settings is an error that names the study; bookkeeping keys (paths,
        tracking, n_trials, evaluate_best, cache_entries) may change.
    n_trials: new trials per `fuserank tune` call. n_startup_trials: random trials before TPE
        (also the completed trials the median pruner waits for).
    prune_rounds: boosting rounds of the short fit whose validation NDCG@10 decides pruning
        (0: no pruning).
    fusion_weights / ann_candidates: the choices for each content modality's fusion weight
        (behaviour stays 1: fusion normalises, so only ratios matter) and for the candidate depth;
        few choices, so trials share cached stage-1 frames.
    feature_groups: groups each trial may switch off. cache_entries: stage-1 frame sets kept in
        memory (0: rebuild every trial). evaluate_best: test the best configuration once at the end
        (a rerun tests again only when the best trial changed; otherwise it reports the recorded
        test metrics).
    """

    study_name: str = "fuserank"
    storage: str = "sqlite:///mlruns/optuna.db"
    n_trials: int = ranged(15, "[0, inf)")
    n_startup_trials: int = ranged(5, "[0, inf)")
    prune_rounds: int = ranged(40, "[0, inf)")
    fusion_weights: tuple[float, ...] = ranged((0.0, 0.25, 0.5, 1.0), "[0, inf)")
    ann_candidates: tuple[int, ...] = ranged((100, 200, 300), "[1, inf)")
    feature_groups: tuple[str, ...] = one_of(("text", "popularity", "user", "coverage"), GROUPS)
    cache_entries: int = ranged(4, "[0, inf)")
    evaluate_best: bool = True


@dataclass(frozen=True)
class ExportConfig:
    """Ranked lists for an A/B test (`fuserank export`).

    top_k: items per user (fewer only when fewer eligible items exist).
    arms: arm name -> what the arm serves: "run" (the exported run), "run:<run id>" or the bare
        run id (another trained run), "models:/<name>@<alias>" or "models:/<name>/<version>" (a
        registered model version), "popular" (most-popular baseline) or "retrieval" (the exported
        run's stage 1 in stage-1 order).
    shares: arm name -> share of users; the shares and `holdout` sum to 1.
    holdout: share of users in arm "holdout", who get no list.
    salt: a user's bucket is sha256(salt + user_id), first 8 bytes big-endian, modulo 10,000.
    exclude_seen: leave out items the user has interacted with.
    batch_users: users scored and written per batch (one Parquet row group each).
    parallel_batches: batches built at once, each in its own thread (the files do not change).
        Worth it only with idle cores: a batch is mostly single-threaded, and each batch in
        flight holds its candidate features (about 0.9 GB at 10,000 users x 240 candidates).
    format: "parquet" or "csv".
    """

    top_k: int = ranged(100, "[1, inf)")
    arms: dict[str, str] = field(default_factory=lambda: {"treatment": "run"})
    shares: dict[str, float] = ranged(interval="[0, 1]", factory=lambda: {"treatment": 1.0})
    holdout: float = ranged(0.0, "[0, 1)")
    salt: str = "fuserank"
    exclude_seen: bool = True
    batch_users: int = ranged(10_000, "[1, inf)")
    parallel_batches: int = ranged(1, "[1, inf)")
    format: str = one_of("parquet", ("parquet", "csv"))


@dataclass(frozen=True)
class DaskConfig:
    """Running on a Dask cluster (jobs/distributed.py, retrieval/sharding.py); off by default.

    enabled: fit the ranker with data-parallel LightGBM on the workers (jobs/distributed_lightgbm.py)
        and build encodings and features over Dask partitions of the catalog and of the users;
        `export` scores each batch of users on a worker (jobs/distributed_export.py) and `tune`
        runs its trials as Dask tasks.
    scheduler: "local" (a LocalCluster of spawned worker processes) or a scheduler address such
        as "tcp://10.0.0.5:8786".
    n_workers / threads_per_worker: the LocalCluster's size (ignored for an address).
    user_partitions / item_partitions: partitions of the users and of the catalog; 0 means one
        per worker.
    ranker_partitions: partitions of the ranker's training rows, one LightGBM machine per worker
        holding any; 0 means one per worker. 1 trains on one worker and gives exactly the local
        model; more machines give the local trees until `min_data_in_leaf` decides a split,
        then trees that part from them (docs/scaling.md).
    ranker_time_out: minutes a LightGBM machine waits on a silent peer before it fails
        (LightGBM's `time_out`, 120 by default there), and the longest wait for the workers to
        come back between starts of the ranker fit.
    ranker_attempts: starts of the whole data-parallel fit when a machine fails (its worker dies
        or its task raises): a new start runs on the workers alive then, with new ports, and
        gives the same model; after the last, the fit stops with an error naming each failure.
    """

    enabled: bool = False
    scheduler: str = "local"
    n_workers: int = ranged(2, "[1, inf)")
    threads_per_worker: int = ranged(1, "[1, inf)")
    user_partitions: int = ranged(0, "[0, inf)")
    item_partitions: int = ranged(0, "[0, inf)")
    ranker_partitions: int = ranged(0, "[0, inf)")
    ranker_time_out: int = ranged(10, "[1, inf)")
    ranker_attempts: int = ranged(3, "[1, inf)")


@dataclass(frozen=True)
class RunConfig(ExperimentConfig):
    """Everything one command needs: the experiment (`ExperimentConfig`) and the job settings."""

    output_dir: str = "outputs"
    run_name: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
