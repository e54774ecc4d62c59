"""Optuna tuning: ranker parameters, per-modality fusion weights, candidate depth and feature
groups, against validation NDCG@10 (full ranking, as in the protocol). Test is never touched
by a trial; the best configuration is tested once, as its own run, at the end.

Speed: stage 1 (behaviour embedding, index, candidates and features for three label cut-offs
and validation) is most of a trial's time and depends only on the stage-1 settings, so the
frames are cached in memory keyed by those settings (`FrameCache`). Feature groups are switched
off by dropping feature names, so they never invalidate the cache.

Pruning: a trial first fits `tune.prune_rounds` boosting rounds and reports that model's
validation NDCG@10; the median pruner stops trials below the median of earlier trials at the
same point. LightGBM is deterministic here, so the full fit repeats those rounds exactly; a
pruned trial saves the remaining rounds (typically hundreds), a kept one costs `prune_rounds`
extra.

Resuming: each trial's sampler is seeded by the seed plus the number of finished trials, and a
trial orphaned by a killed process is marked FAIL on the next start, so a study resumed after a
crash draws the same trials as one that ran without interruption.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from fuserank import atomic, schema, tracking
from fuserank.atomic import file_lock, process_alive
from fuserank.config import RunConfig, TuneConfig, flatten, to_dict, with_overrides
from fuserank.evaluation import plots
from fuserank.evaluation.protocol import QUERY, ValidationFrames, validation_frames, validation_metrics
from fuserank.jobs.distributed import chunk_evenly, dask_client, n_workers
from fuserank.jobs.study import bind_study, record_tested, study_binding, tested_metrics, trial_sampler
from fuserank.jobs.train_evaluate import prepare, train_evaluate
from fuserank.progress import step
from fuserank.ranking.feature_groups import GROUPS
from fuserank.ranking.features import select_features
from fuserank.ranking.ranker import fit_ranker

OBJECTIVE = "valid_ndcg_at_10"
WORKER = "worker"  # trial user attribute: host:pid of the process running it
USE_PREFIX = "features.use_"
# Metrics of the best configuration's test run that the summary repeats (the run has them all).
BEST_REPORTED = ("valid_ndcg_at_10", "test_ndcg_at_10", "test_ndcg_at_10_ci_low", "test_ndcg_at_10_ci_high",
                 "test_recall_at_10", "test_stage1_recall", "test_retrieval_ndcg_at_10", "test_popular_ndcg_at_10")


def sample_params(trial: Any, tune: TuneConfig, modalities: Sequence[str], behaviour: bool) -> dict[str, Any]:
    """Draw one trial's parameters; keys are dotted config keys (plus `features.use_<group>`).

    Args:
        trial: an `optuna.Trial`.
        tune: the search-space choices.
        modalities: content modalities of the catalog (each gets a fusion weight).
        behaviour: whether the behaviour embedding is on; it is the fusion reference (weight 1),
            otherwise the first content modality is.
    """
    params: dict[str, Any] = {
        "ranker.learning_rate": trial.suggest_float("ranker.learning_rate", 0.01, 0.2, log=True),
        "ranker.num_leaves": trial.suggest_int("ranker.num_leaves", 7, 127, log=True),
        "ranker.min_child_samples": trial.suggest_int("ranker.min_child_samples", 5, 200, log=True),
        "ranker.feature_fraction": trial.suggest_float("ranker.feature_fraction", 0.4, 1.0),
        "ranker.bagging_fraction": trial.suggest_float("ranker.bagging_fraction", 0.5, 1.0),
        "ranker.lambda_l2": trial.suggest_float("ranker.lambda_l2", 1e-3, 30.0, log=True),
        "retrieval.ann_candidates": trial.suggest_categorical("retrieval.ann_candidates", list(tune.ann_candidates)),
    }
    if behaviour:  # the default base, ease_score_z, exists only with behaviour on
        params["ranker.base_scale"] = trial.suggest_categorical("ranker.base_scale", [0.0, 0.1, 0.3, 1.0])
    searched = list(modalities) if behaviour else list(modalities)[1:]
    for modality in searched:
        key = f"fusion.weights.{modality}"
        params[key] = trial.suggest_categorical(key, list(tune.fusion_weights))
    for group in tune.feature_groups:
        key = f"{USE_PREFIX}{group}"
        params[key] = trial.suggest_categorical(key, [True, False])
    return params


def trial_config(base: RunConfig, params: Mapping[str, Any]) -> RunConfig:
    """`base` with a trial's parameters applied (`features.use_<g>` False -> g disabled)."""
    disabled = [k.removeprefix(USE_PREFIX) for k, v in params.items() if k.startswith(USE_PREFIX) and not v]
    overrides = [f"{k}={json.dumps(v)}" for k, v in params.items() if not k.startswith(USE_PREFIX)]
    if any(k.startswith(USE_PREFIX) for k in params):
        kept = [g for g in base.features.disabled_groups if f"{USE_PREFIX}{g}" not in params]
        overrides.append(f"features.disabled_groups={json.dumps(kept + disabled)}")
    return with_overrides(base, overrides)


def stage_one_key(config: RunConfig) -> str:
    """Everything the validation frames depend on, as a string (feature groups excluded)."""
    values = to_dict(config)
    values["features"].pop("disabled_groups")
    parts = {k: values[k] for k in ("seed", "split", "behaviour", "fusion", "retrieval", "features")}
    return json.dumps(parts, sort_keys=True)


class FrameCache:
    """Validation frames kept in memory by stage-1 key; least recently used dropped first.

    Args:
        build: makes the frames of a config (called with feature groups all enabled).
        max_entries: frame sets kept (0: nothing is kept).
    """

    def __init__(self, build: Callable[[RunConfig], ValidationFrames], max_entries: int) -> None:
        self._build = build
        self._max = max_entries
        self._frames: OrderedDict[str, ValidationFrames] = OrderedDict()

    def get(self, config: RunConfig) -> tuple[ValidationFrames, bool]:
        """The frames for `config`'s stage-1 settings and whether they came from the cache."""
        key = stage_one_key(config)
        if key in self._frames:
            self._frames.move_to_end(key)
            return self._frames[key], True
        all_groups = dataclasses.replace(config, features=dataclasses.replace(config.features, disabled_groups=()))
        frames = self._build(all_groups)
        if self._max > 0:
            self._frames[key] = frames
            while len(self._frames) > self._max:
                self._frames.popitem(last=False)
        return frames, False


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial measured.

    Attributes:
        value: validation NDCG@10 of the full fit, or of the short fit when pruned.
        metrics: valid_* metrics plus trial_seconds, stage1_cached (1.0/0.0), ranker_best_iteration.
        pruned: True when the median pruner stopped the trial after the short fit.
    """

    value: float
    metrics: dict[str, float]
    pruned: bool


def run_trial(trial: Any, config: RunConfig, cache: FrameCache, valid_targets: pl.DataFrame, n_items: int,
              prune_rounds: int) -> TrialOutcome:
    """Fit and validate one configuration; reports the short fit to `trial` for pruning.

    Args:
        trial: the `optuna.Trial` (only report/should_prune are used).
        config: the trial's configuration (see trial_config).
        cache: stage-1 frames.
        valid_targets: the validation interactions (user_id, item_id).
        n_items: catalog size, for coverage.
        prune_rounds: rounds of the short fit (0 or >= n_estimators: no short fit).
    """
    start = time.perf_counter()
    frames, cached = cache.get(config)
    names = select_features(frames.names, config.features.disabled_groups)

    def fit_and_score(ranker_config: Any) -> tuple[dict[str, float], int]:
        ranker = fit_ranker(frames.fit, frames.valid, names, ranker_config, seed=config.seed, group=QUERY)
        metrics = validation_metrics(frames, valid_targets, ranker, config.eval.ks, n_items,
                                     config.retrieval.ann_candidates, config.slots.new_items)
        return metrics, ranker.best_iteration

    def outcome(metrics: dict[str, float], best: int, pruned: bool) -> TrialOutcome:
        extra = {"trial_seconds": time.perf_counter() - start, "stage1_cached": float(cached),
                 "ranker_best_iteration": float(best), "n_features": float(len(names))}
        return TrialOutcome(metrics[OBJECTIVE], {**metrics, **extra}, pruned)

    if 0 < prune_rounds < config.ranker.n_estimators:
        short, best = fit_and_score(dataclasses.replace(config.ranker, n_estimators=prune_rounds))
        trial.report(short[OBJECTIVE], prune_rounds)
        if trial.should_prune():
            return outcome(short, best, pruned=True)
    metrics, best = fit_and_score(config.ranker)
    return outcome(metrics, best, pruned=False)


def check_search_space(tune: TuneConfig) -> None:
    """Reject unknown feature groups and empty choice lists before any trial runs."""
    unknown = sorted(set(tune.feature_groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"tune.feature_groups: unknown group(s) {unknown}; known: {list(GROUPS)}")
    if "retrieval" in tune.feature_groups:
        raise ValueError("tune.feature_groups: 'retrieval' must stay on (the ranker would have no candidate order)")
    if not tune.fusion_weights or not tune.ann_candidates:
        raise ValueError("tune.fusion_weights and tune.ann_candidates need at least one choice each")


def create_study(tune: TuneConfig, seed: int, binding: Mapping[str, Any] | None = None) -> Any:
    """Create or load (load_if_exists) the study, with the sampler for its next trial.

    With `binding` (study.study_binding), a new study records it and a continued one must match
    it (else study.StudyMismatchError, before any trial of the study is touched). Processes
    sharing a new sqlite file create its tables one at a time.
    """

    import optuna

    lock = contextlib.nullcontext()
    if tune.storage.startswith("sqlite:///"):
        lock = file_lock(Path(f"{tune.storage.removeprefix('sqlite:///')}.lock"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with lock:
        study = optuna.create_study(study_name=tune.study_name, storage=tune.storage, direction="maximize",
                                    load_if_exists=True)
        if binding is not None:
            bind_study(study, binding, tune)
    fail_orphaned_trials(study)
    return next_trial_study(study, tune, seed)


def worker_id() -> str:
    """host:pid of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_orphaned_trials(study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone (killed mid-trial);
    returns their numbers. Trials of live workers and of other hosts sharing the study are left
    alone. TPE would otherwise condition on an orphan's parameters as if it were still running."""
    import optuna

    host = socket.gethostname()
    orphaned = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            orphaned.append(trial.number)
    return orphaned


def next_trial_study(study: Any, tune: TuneConfig, seed: int) -> Any:
    """The study with a sampler seeded by its number of finished (complete or pruned) trials.

    Each trial's parameters are then a function of the seed and the finished trials alone: a study
    resumed after a crash draws the trials an uninterrupted one would have (a trial left RUNNING
    by a killed process counts for nothing, and TPE ignores it). `tune` then re-seeds each trial
    by its position (study.trial_sampler), which equals that count when one process runs the
    study and differs between processes sharing it.
    """
    import optuna

    state = optuna.trial.TrialState
    finished = sum(t.state in (state.COMPLETE, state.PRUNED) for t in study.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(seed=seed + finished, n_startup_trials=tune.n_startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune.n_startup_trials, n_warmup_steps=0)
              if tune.prune_rounds > 0 else optuna.pruners.NopPruner())
    return optuna.load_study(study_name=tune.study_name, storage=tune.storage, sampler=sampler, pruner=pruner)


def study_summary(study: Any) -> dict[str, float]:
    """Counts of trial states, the best value, and mean trial seconds with and without cached frames."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    out = {
        "n_trials": float(len(trials)),
        "n_complete": float(sum(t.state == state.COMPLETE for t in trials)),
        "n_pruned": float(sum(t.state == state.PRUNED for t in trials)),
    }
    if out["n_complete"]:
        out["best_valid_ndcg_at_10"] = float(study.best_value)
    for cached, name in ((1.0, "cached"), (0.0, "built")):
        seconds = [t.user_attrs["trial_seconds"] for t in trials
                   if t.user_attrs.get("stage1_cached") == cached and t.state in (state.COMPLETE, state.PRUNED)]
        if seconds:
            out[f"mean_trial_seconds_stage1_{name}"] = sum(seconds) / len(seconds)
            out[f"n_trials_stage1_{name}"] = float(len(seconds))
    return out


def test_best_once(study: Any, best_config: RunConfig, tags: dict[str, str]) -> dict[str, float]:
    """best_* test metrics of the study's best configuration; evaluated on test (a train-evaluate
    run with `tags`) only when the best trial changed since the study's last evaluation, so a
    continued study looks at test once per best configuration. best_tested_now says which."""

    known = tested_metrics(study)
    if known is not None:
        return {**known, "best_tested_now": 0.0}
    test_metrics, _ = train_evaluate(best_config, tags=tags)
    reported = {f"best_{k}": test_metrics[k] for k in BEST_REPORTED if k in test_metrics}
    record_tested(study, reported)
    return {**reported, "best_tested_now": 1.0}


def make_objective(config: RunConfig, data: Any, cache: FrameCache, item_ids: Sequence[str],
                   parent_id: str | None) -> Callable[[Any], float]:
    """The Optuna objective of `tune`: sample a trial's parameters, run it (`run_trial`), and
    record it as a nested MLflow run of `parent_id` (None: no MLflow run per trial)."""
    import optuna

    def objective(trial: Any) -> float:
        # Seeded by the trial's position, so two processes sharing the study never draw alike.
        trial.study.sampler = trial_sampler(trial.study, trial.number, config.tune, config.seed)
        trial.set_user_attr(WORKER, worker_id())
        params = sample_params(trial, config.tune, list(data.content), config.behaviour.enabled)
        trial_cfg = trial_config(config, params)
        with step(f"trial {trial.number}") as s:
            if parent_id is None:
                result = run_trial(trial, trial_cfg, cache, data.cutoffs.valid.targets, len(item_ids),
                                   config.tune.prune_rounds)
            else:
                trial_tags = {"kind": "tune-trial", "trial_number": str(trial.number),
                              "study_name": config.tune.study_name}
                with tracking.nested_run(f"trial-{trial.number}", trial_tags) as child:
                    tracking.log_params(params)
                    result = run_trial(trial, trial_cfg, cache, data.cutoffs.valid.targets, len(item_ids),
                                       config.tune.prune_rounds)
                    tracking.log_metrics(result.metrics)
                    tracking.set_tags({"trial_state": "PRUNED" if result.pruned else "COMPLETE"})
                    child.status = "KILLED" if result.pruned else "FINISHED"
            s.done(f"{OBJECTIVE} {result.value:.4f}{' (pruned)' if result.pruned else ''}, "
                   f"stage 1 {'cached' if result.metrics['stage1_cached'] else 'built'}")
        for key in ("trial_seconds", "stage1_cached"):
            trial.set_user_attr(key, result.metrics[key])
        if result.pruned:
            raise optuna.TrialPruned()
        return result.value

    return objective


def run_trials(config: RunConfig, n_trials: int) -> int:
    """`n_trials` trials of the config's study in this process, against its Optuna storage,
    without an MLflow run per trial: one Dask worker's share (`tune_on_cluster`). The process
    prepares its own data and stage-1 frames. Returns the number of trials run."""
    data = prepare(config)
    item_ids = data.items[schema.ITEM_ID].to_list()
    cache = FrameCache(
        lambda c: validation_frames(data.cutoffs, item_ids, data.content, c, data.llm), config.tune.cache_entries
    )
    study = create_study(config.tune, config.seed)  # the driver has bound the study already
    objective = make_objective(config, data, cache, item_ids, None)
    for _ in range(n_trials):
        study = next_trial_study(study, config.tune, config.seed)
        study.optimize(objective, n_trials=1, gc_after_trial=False)
    return n_trials


def tune_on_cluster(config: RunConfig) -> int:
    """Split `tune.n_trials` over the workers of `config.dask`'s cluster, one `run_trials` task
    per worker, all against `tune.storage` (a database every worker reaches: a sqlite file on a
    shared disk, or PostgreSQL). Returns the number of trials run."""
    serial = dataclasses.replace(config, dask=dataclasses.replace(config.dask, enabled=False))
    with dask_client(config.dask) as client:
        shares = [len(c) for c in chunk_evenly(range(config.tune.n_trials), n_workers(client))]
        return sum(client.gather([client.submit(run_trials, serial, n, pure=False) for n in shares]))


def tune(config: RunConfig) -> tuple[dict[str, float], Path]:
    """The `fuserank tune` job: one parent MLflow run with a nested run per trial, the study's
    plots, the best configuration as YAML, then one test evaluation of it as its own run.

    Returns (summary metrics, output folder).
    """
    check_search_space(config.tune)
    run_name = config.run_name or f"tune-{config.tune.study_name}"
    folder = tracking.check_outputs(config.tracking, Path(config.output_dir) / run_name)  # before any work
    data = prepare(config)
    item_ids = data.items[schema.ITEM_ID].to_list()
    cache = FrameCache(
        lambda c: validation_frames(data.cutoffs, item_ids, data.content, c, data.llm), config.tune.cache_entries
    )
    study = create_study(config.tune, config.seed, study_binding(config, data.tags))
    tags = data.tags | {"kind": "tune", "study_name": config.tune.study_name, "optuna_storage": config.tune.storage}

    with tracking.tracked_run(config.tracking, run_name, tags) as parent_id:
        if parent_id is not None:
            tracking.log_params({f"base.{k}": v for k, v in flatten(config).items()})

        if config.dask.enabled:  # trials as Dask tasks against the one Optuna storage
            tune_on_cluster(config)
            study = next_trial_study(study, config.tune, config.seed)
        else:
            objective = make_objective(config, data, cache, item_ids, parent_id)
            for _ in range(config.tune.n_trials):
                study = next_trial_study(study, config.tune, config.seed)
                study.optimize(objective, n_trials=1, gc_after_trial=False)
        summary = study_summary(study)
        best_config = None
        paths = [atomic.write_text(folder / "trials.csv", study.trials_dataframe().to_csv(index=False))]
        if summary["n_complete"]:
            best_config = dataclasses.replace(trial_config(config, study.best_trial.params), run_name=f"{run_name}-best")
            paths.append(atomic.write_text(folder / "best_config.yaml", yaml.safe_dump(to_dict(best_config), sort_keys=True)))
            paths.append(plots.save_figure(plots.optimisation_history_figure(study), folder / "optimisation_history.png"))
            importance = plots.param_importance_figure(study)
            if importance is not None:
                paths.append(plots.save_figure(importance, folder / "param_importances.png"))
        if parent_id is not None:
            tracking.log_metrics(summary)
            tracking.log_artifacts([("", p) for p in paths])
            if best_config is not None:
                tracking.log_params({f"best.{k}": v for k, v in study.best_trial.params.items()})

    if best_config is not None and config.tune.evaluate_best:
        summary.update(test_best_once(study, best_config, {"tuned_by": str(parent_id),
                                                           "study_name": config.tune.study_name}))
    atomic.write_json(folder / "summary.json", summary)
    return summary, folder
