"""LightGBM lambdarank re-ranker: fit, score, save and load.

Training uses `lightgbm.train` on a `lightgbm.Dataset` with query groups (one group per user)
rather than the sklearn wrapper, whose `eval_set` is deprecated in lightgbm 4.7. A model is
saved as LightGBM's own text format plus a JSON file with the ordered feature names; nothing is
pickled, so a saved model can be read by any LightGBM build and inspected by eye.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import atomic, progress
from fuserank.config import RankerConfig
from fuserank.schema import ITEM_ID, LABEL, USER_ID

MODEL_FILE = "model.txt"
FEATURES_FILE = "features.json"


@dataclass(frozen=True)
class ScoreBase:
    """The score every row starts from before the trees: `scale` x the `feature` column."""

    feature: str
    scale: float

    def of(self, frame: pl.DataFrame) -> np.ndarray:
        """float64 (n_rows,) starting scores; a missing value starts at 0."""
        return self.scale * np.nan_to_num(frame[self.feature].cast(pl.Float64).fill_null(0.0).to_numpy(), nan=0.0)


def score_base(config: RankerConfig, feature_names: Sequence[str]) -> ScoreBase | None:
    """The configured base, or None when its feature is not among `feature_names` or its scale is 0."""
    if config.base_scale < 0:
        raise ValueError(f"ranker.base_scale must be >= 0, got {config.base_scale}")
    if config.base_scale == 0 or config.base_feature not in feature_names:
        return None
    return ScoreBase(config.base_feature, config.base_scale)


@dataclass(frozen=True)
class Ranker:
    """A fitted lambdarank booster and the ordered feature columns it reads.

    Attributes:
        booster: the `lightgbm.Booster`.
        feature_names: feature columns in the order the booster expects them.
        best_iteration: number of boosting rounds used for scoring (early-stopping best, 1-based).
        base: the starting score the trees were fitted on top of (None: 0).
        train_rows: the rows the trees were fitted on, after negatives were drawn
            (`RankerConfig.train_negatives`); None for a ranker read back from disk.
    """

    booster: Any
    feature_names: tuple[str, ...]
    best_iteration: int
    base: ScoreBase | None = None
    train_rows: int | None = None

    def score(self, frame: pl.DataFrame) -> np.ndarray:
        """Relevance scores of every row of `frame` (higher = better).

        Args:
            frame: holds every column of `feature_names` (numeric or boolean; nulls are missing).

        Returns:
            (n_rows,) float32 scores, comparable within one user's candidates.
        """
        x = _feature_matrix(frame, self.feature_names, "frame")
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        scores = self.booster.predict(x, num_iteration=self.best_iteration)
        if self.base is not None:
            scores = scores + self.base.of(frame)
        return np.asarray(scores, dtype=np.float32)

    def gain_importance(self) -> dict[str, float]:
        """Total split gain of each feature over the first `best_iteration` trees, in feature order."""
        gains = self.booster.feature_importance(importance_type="gain", iteration=self.best_iteration)
        return {name: float(g) for name, g in zip(self.feature_names, gains, strict=True)}


def _feature_matrix(frame: pl.DataFrame, feature_names: Sequence[str], what: str) -> np.ndarray:
    missing = [f for f in feature_names if f not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks feature column(s) {missing}; it has {frame.columns}")
    # Float32 halves memory on millions of candidate rows; LightGBM bins the values anyway.
    # Casting turns nulls into NaN, which LightGBM treats as missing.
    return (
        frame.select(pl.col(f).cast(pl.Float32) for f in feature_names)
        .to_numpy()
        .astype(np.float32, copy=False)
    )


def sample_negatives(frame: pl.DataFrame, negatives: int, seed: int, group: str = USER_ID) -> pl.DataFrame:
    """Every positive row and at most `negatives` negative rows of each query (`group`), the
    negatives those with the smallest seeded hash of (query, item): a uniform draw that depends
    on the rows alone, so a partition of the queries draws what the whole frame draws. Row order
    is kept; `negatives` 0 returns `frame`."""
    if negatives <= 0:
        return frame
    missing = [c for c in (group, ITEM_ID, LABEL) if c not in frame.columns]
    if missing:
        raise ValueError(f"drawing training negatives needs column(s) {missing}; the frame has {frame.columns}")
    draw = pl.when(pl.col(LABEL) <= 0).then(pl.struct(group, ITEM_ID).hash(seed))
    return frame.filter((pl.col(LABEL) > 0) | (draw.rank("ordinal").over(group) <= negatives))


def _query_groups(
    frame: pl.DataFrame, feature_names: Sequence[str], what: str, group: str = USER_ID, base: ScoreBase | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Sort by query (`group` column) and drop queries without a positive.

    Returns:
        X (n_rows, n_features) float32, labels (n_rows,) int32, group sizes (n_queries,) int32,
        and the rows' starting scores (None without a base).
    """
    for col in (group, LABEL):
        if col not in frame.columns:
            raise ValueError(f"{what} lacks column {col!r}; it has {frame.columns}")
    if frame[LABEL].null_count():
        raise ValueError(f"{what}: column {LABEL!r} holds nulls")

    ordered = frame.sort(group, maintain_order=True)
    # A group without a positive has zero lambdarank gradient and an NDCG LightGBM counts as 1.
    kept = ordered.filter((pl.col(LABEL) > 0).any().over(group))
    sizes = kept.group_by(group, maintain_order=True).len()["len"].to_numpy().astype(np.int32)
    labels = kept[LABEL].cast(pl.Int32).to_numpy()
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what}: labels must be non-negative integers")
    init = base.of(kept) if base is not None else None
    return _feature_matrix(kept, feature_names, what), labels, sizes, init


def _params(config: RankerConfig, seed: int) -> dict[str, Any]:
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [config.eval_at],
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_child_samples,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction,
        "bagging_freq": config.bagging_freq,
        "lambda_l2": config.lambda_l2,
        "num_threads": config.n_jobs,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


def fit_ranker(
    train: pl.DataFrame,
    valid: pl.DataFrame | None,
    feature_names: Sequence[str],
    config: RankerConfig,
    seed: int,
    group: str = USER_ID,
) -> Ranker:
    """Fit a LightGBM lambdarank model, one query group per user (or per value of `group`).

    Args:
        train: rows (user_id, candidate) with user_id, label (int, > 0 = relevant) and every column
            of `feature_names` (numeric or boolean; nulls are missing values).
        valid: the same columns for early stopping on NDCG@config.eval_at, or None to train a
            fixed config.n_estimators rounds.
        feature_names: feature columns, in the order the model will read them.
        config: the ranker stage's hyper-parameters.
        seed: LightGBM seed; the same data, config and seed give identical scores.
        group: the train column naming each row's query, when one user forms several queries
            (e.g. one per label cut-off); valid is always grouped by user.

    Returns:
        The fitted `Ranker`, its trees fitted on top of `score_base(config, feature_names)`.
        Users without any positive label are dropped before training (they carry no lambdarank
        gradient).

    Raises:
        ValueError: a feature or the user_id/label column is missing, feature names are empty or
            repeated, train (or valid) has no user with a positive label, or base_scale < 0.
    """
    import lightgbm

    feature_names = tuple(feature_names)
    if not feature_names:
        raise ValueError("feature_names is empty")
    if len(set(feature_names)) != len(feature_names):
        raise ValueError(f"feature_names holds duplicates: {feature_names}")

    params = _params(config, seed)
    base = score_base(config, feature_names)
    train = sample_negatives(train, config.train_negatives, seed, group)
    x, y, groups, init = _query_groups(train, feature_names, "train", group, base)
    if groups.size == 0:
        raise ValueError("train has no user with a positive label; lambdarank has nothing to learn")
    dtrain = lightgbm.Dataset(x, label=y, group=groups, init_score=init, feature_name=list(feature_names),
                              params=params)

    valid_sets: list[Any] = []
    callbacks: list[Any] = []
    if valid is not None:
        xv, yv, gv, init_v = _query_groups(valid, feature_names, "valid", base=base)
        if gv.size == 0:
            raise ValueError("valid has no user with a positive label; early stopping has nothing to measure")
        valid_sets.append(lightgbm.Dataset(xv, label=yv, group=gv, init_score=init_v, reference=dtrain))
        if config.early_stopping_rounds > 0:
            rounds = config.early_stopping_rounds
            callbacks.append(lightgbm.early_stopping(rounds, first_metric_only=True, verbose=False))

    with progress.counter("ranker", total=config.n_estimators, unit="tree") as trees:
        booster = lightgbm.train(
            params,
            dtrain,
            num_boost_round=config.n_estimators,
            valid_sets=valid_sets or None,
            valid_names=["valid"] if valid_sets else None,
            callbacks=[*callbacks, lambda env: trees.update(1)],
        )
    if booster.feature_name() != list(feature_names):
        raise ValueError(
            f"LightGBM renamed the features to {booster.feature_name()}; use names without spaces "
            "or JSON special characters"
        )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    return Ranker(booster=booster, feature_names=feature_names, best_iteration=int(best), base=base,
                  train_rows=int(x.shape[0]))


def save_ranker(ranker: Ranker, folder: Path) -> None:
    """Write `model.txt` (LightGBM text, the first best_iteration trees) and `features.json`.

    Each file is written to a temporary file in `folder` and moved into place, so a reader never
    sees half a model. `folder` is created when missing.
    """
    folder = Path(folder)
    model = ranker.booster.model_to_string(num_iteration=ranker.best_iteration)
    meta = {"feature_names": list(ranker.feature_names), "best_iteration": ranker.best_iteration,
            "base": None if ranker.base is None else {"feature": ranker.base.feature, "scale": ranker.base.scale}}
    atomic.write_text(folder / MODEL_FILE, model)
    atomic.write_text(folder / FEATURES_FILE, json.dumps(meta, indent=2) + "\n")


def load_ranker(folder: Path) -> Ranker:
    """Read a ranker written by `save_ranker`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the feature list in features.json disagrees with the booster's, the stored
            best_iteration exceeds the trees in model.txt, or the base feature is not a feature.
    """
    import lightgbm

    folder = Path(folder)
    meta = json.loads((folder / FEATURES_FILE).read_text(encoding="utf-8"))
    booster = lightgbm.Booster(model_str=(folder / MODEL_FILE).read_text(encoding="utf-8"))
    feature_names = tuple(meta["feature_names"])
    if tuple(booster.feature_name()) != feature_names:
        raise ValueError(
            f"{folder}: {FEATURES_FILE} lists {list(feature_names)} but {MODEL_FILE} was trained on "
            f"{booster.feature_name()}"
        )
    best = int(meta["best_iteration"])
    if not 0 < best <= booster.current_iteration():
        raise ValueError(
            f"{folder}: best_iteration {best} is outside the {booster.current_iteration()} rounds "
            f"in {MODEL_FILE}"
        )
    stored = meta.get("base")  # absent in models saved before bases existed
    if stored is not None and stored["feature"] not in feature_names:
        raise ValueError(f"{folder}: the base feature {stored['feature']!r} is not among the model's features")
    base = None if stored is None else ScoreBase(str(stored["feature"]), float(stored["scale"]))
    return Ranker(booster=booster, feature_names=feature_names, best_iteration=best, base=base)
