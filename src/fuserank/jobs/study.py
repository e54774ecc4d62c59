"""What an Optuna study remembers besides its trials, so that reruns and parallel workers agree.

- **Binding.** A study is bound to the data and the base configuration it tunes: the first
  `fuserank tune` records the interactions' and items' hashes and the base config (minus
  bookkeeping keys such as paths and `tune.n_trials`) as study user attributes. A later run
  whose data or base config differs stops with `StudyMismatchError`, naming the study and what
  differs, instead of continuing a study of another data set and reporting its best trial.
- **Seeding.** Each trial's sampler is seeded by the seed plus the trial's position: the number
  of earlier trials (by trial number, which the storage hands out atomically) that did not fail.
  Run alone, that is the number of finished trials, so a study resumed after a crash draws what
  an uninterrupted one would have; two workers sharing the study get different positions and so
  never draw the same trial.
- **Testing once.** The best configuration is evaluated on test only when the best trial has
  changed since the last evaluation; its test metrics are kept in the study and reused.

Pure functions of a study object (an `optuna.Study`); optuna itself is imported where needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fuserank.config import RunConfig, TuneConfig, flatten

# Study user attributes.
DATA_KEYS = ("data_hash", "items_hash")  # run tags that identify the data (train_evaluate.prepare)
BASE_CONFIG = "base_config"
TESTED_TRIAL = "tested_trial"  # number of the best trial whose configuration was tested
TESTED_METRICS = "tested_metrics"  # best_* metrics of that test run
# Config keys that say where a run writes or how long it tunes, not what a trial measures: they
# may change between runs that continue one study. Data paths are covered by the data hashes.
UNBOUND = ("run_name", "output_dir", "tracking.", "sources.cache_dir", "data.items_path",
           "data.interactions_path", "data.catalog_root", "export.", "dask.", "tune.n_trials",
           "tune.evaluate_best", "tune.cache_entries", "tune.storage", "tune.study_name")
_SHOWN = 8  # differing config keys named in an error


class StudyMismatchError(ValueError):
    """A continued study was made for other data or another base configuration."""


def study_binding(config: RunConfig, tags: Mapping[str, str]) -> dict[str, Any]:
    """What a study of `config` on the data behind `tags` is bound to.

    Args:
        config: the base configuration of the tune (before any trial's parameters).
        tags: the run tags of the prepared data, holding DATA_KEYS ("" where one is missing).

    Returns:
        {"data_hash": ..., "items_hash": ..., "base_config": {dotted key: value}} (JSON-ready).
    """
    base = {key: value for key, value in flatten(config).items() if not key.startswith(UNBOUND)}
    return {**{key: tags.get(key, "") for key in DATA_KEYS}, BASE_CONFIG: base}


def binding_differences(recorded: Mapping[str, Any], binding: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a study's recorded binding and this run's."""
    differences = [f"{key} {str(recorded.get(key))[:12]} (this run: {binding[key][:12]})"
                   for key in DATA_KEYS if recorded.get(key) != binding[key]]
    old, new = recorded.get(BASE_CONFIG) or {}, binding[BASE_CONFIG]
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    shown = [f"{key}={old.get(key)!r} (this run: {new.get(key)!r})" for key in changed[:_SHOWN]]
    if len(changed) > _SHOWN:
        shown.append(f"and {len(changed) - _SHOWN} more")
    if changed:
        differences.append("base config " + ", ".join(shown))
    return differences


def bind_study(study: Any, binding: Mapping[str, Any], tune: TuneConfig) -> None:
    """Record `binding` in a study that has none yet, or check it against the recorded one.

    Raises:
        StudyMismatchError: naming the study and storage, what differs, and how to start a new
            study; also for a study that has trials but no binding (made before binding existed).
    """
    name = f"Optuna study {tune.study_name!r} in {tune.storage}"
    fresh = f"{tune.study_name}-{binding['data_hash'][:8] or 'new'}"
    hint = (f"continue it only with the same data and settings, or start a new study, e.g. "
            f"--set tune.study_name={fresh} (or another tune.storage)")
    attrs = study.user_attrs
    if not any(key in attrs for key in (*DATA_KEYS, BASE_CONFIG)):
        if study.get_trials(deepcopy=False):
            raise StudyMismatchError(f"{name} has trials but records no data hash or base config (it predates "
                                     f"binding), so it may be a study of other data; {hint}")
        for key, value in binding.items():
            study.set_user_attr(key, value)
        return
    differences = binding_differences(attrs, binding)
    if differences:
        raise StudyMismatchError(f"{name} was made for other data or settings: {'; '.join(differences)}. "
                                 f"Its trials do not apply to this run; {hint}")


def trial_position(study: Any, number: int) -> int:
    """How many trials numbered below `number` did not fail (complete, pruned or running)."""
    import optuna

    failed = optuna.trial.TrialState.FAIL
    return sum(t.number < number and t.state != failed for t in study.get_trials(deepcopy=False))


def trial_sampler(study: Any, number: int, tune: TuneConfig, seed: int) -> Any:
    """The TPE sampler for trial `number`, seeded by `seed` plus the trial's position."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed + trial_position(study, number), n_startup_trials=tune.n_startup_trials)


def tested_metrics(study: Any) -> dict[str, float] | None:
    """The recorded best_* test metrics when the study's current best trial was already tested."""
    attrs = study.user_attrs
    if attrs.get(TESTED_TRIAL) == study.best_trial.number and TESTED_METRICS in attrs:
        return dict(attrs[TESTED_METRICS])
    return None


def record_tested(study: Any, metrics: Mapping[str, float]) -> None:
    """Remember that the study's current best trial was tested, with its best_* test metrics."""
    study.set_user_attr(TESTED_METRICS, {key: float(value) for key, value in metrics.items()})
    study.set_user_attr(TESTED_TRIAL, study.best_trial.number)
