"""Slices of the test evaluation: by the kind of the user's target and by their history length.

A user's target is **cold** when no interaction of the cut-off's history names the target item
(under the cold-item protocol, every cold item's target; without it, the rare item whose first
interaction is a test target), else **warm**. History length is the number of the user's
interactions in the cut-off's history, in the bins 1-5, 6-20, 21-100 and over 100. Every slice
reports NDCG@10 and Recall@10 of every system (the per-user values of evaluation/protocol.py,
means over the slice's users) with a bootstrap 95% CI for the reference system, its paired
NDCG@10 gain over each other system, and stage-1 recall on the slice.

Metric names: `<prefix>slice_<name>_<metric>` for the reference system (e.g.
`test_slice_cold_ndcg_at_10`, `..._ci_low`, `..._ci_high`, `..._gain_vs_random_ci_low`),
`<prefix><system>_slice_<name>_<metric>` for the others, `<prefix>slice_<name>_n_users` and
`<prefix>slice_<name>_stage1_recall`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.data.cutoffs import Cutoff
from fuserank.evaluation.metrics import bootstrap_ci, paired_bootstrap_ci
from fuserank.evaluation.scoring import found_share

KIND = "target_kind"
HISTORY = "history_bin"
LENGTH = "history_length"
WARM, COLD = "warm", "cold"
# (slice name, fewest, most) history interactions; None: no upper bound.
HISTORY_BINS: tuple[tuple[str, int, int | None], ...] = (
    ("history_1_5", 1, 5), ("history_6_20", 6, 20), ("history_21_100", 21, 100), ("history_over_100", 101, None),
)
SLICES = (WARM, COLD, *(name for name, _, _ in HISTORY_BINS))
METRICS = ("ndcg_at_10", "recall_at_10")
GAIN_METRIC = "ndcg_at_10"
REFERENCE = "fuserank"


def user_slices(cutoff: Cutoff) -> pl.DataFrame:
    """One row per target user of `cutoff`: user_id, target_kind ("warm" / "cold": cold when a
    target item has no interaction in the history), history_length (their history rows) and
    history_bin (a name of `HISTORY_BINS`; None for a user without history). Sorted by user_id."""
    counts = cutoff.history.group_by(schema.ITEM_ID).len("_count")
    kinds = (
        cutoff.targets.select(schema.USER_ID, schema.ITEM_ID)
        .join(counts, on=schema.ITEM_ID, how="left")
        .group_by(schema.USER_ID)
        .agg(pl.col("_count").is_null().any().alias("_cold"))
    )
    lengths = cutoff.history.group_by(schema.USER_ID).len(LENGTH)
    frame = kinds.join(lengths, on=schema.USER_ID, how="left").with_columns(pl.col(LENGTH).fill_null(0))
    binned = pl.lit(None, dtype=pl.String)
    for name, low, high in reversed(HISTORY_BINS):
        inside = pl.col(LENGTH) >= low if high is None else pl.col(LENGTH).is_between(low, high)
        binned = pl.when(inside).then(pl.lit(name)).otherwise(binned)
    return frame.select(
        schema.USER_ID,
        pl.when(pl.col("_cold")).then(pl.lit(COLD)).otherwise(pl.lit(WARM)).alias(KIND),
        pl.col(LENGTH).cast(pl.Int64),
        binned.alias(HISTORY),
    ).sort(schema.USER_ID)


def slice_users(slices: pl.DataFrame) -> dict[str, list[str]]:
    """Slice name -> its users (sorted), for every name of `SLICES` (possibly empty)."""
    out = {}
    for name in SLICES:
        column = KIND if name in (WARM, COLD) else HISTORY
        out[name] = slices.filter(pl.col(column) == name)[schema.USER_ID].sort().to_list()
    return out


def slice_metrics(
    per_user: pl.DataFrame,
    slices: pl.DataFrame,
    stage1: pl.DataFrame | None,
    targets: pl.DataFrame,
    prefix: str = "test_",
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, float]:
    """Every slice's metrics (see the module docstring for the names).

    Args:
        per_user: rows (system, user_id, metric columns) as run_protocol's per_user; the
            reference system is "fuserank".
        slices: `user_slices` of the same cut-off.
        stage1: `scoring.stage_one_counts` of the cut-off's candidates (None: no stage-1 recall).
        targets: the cut-off's targets.
        prefix: start of every key.
        seed, n_boot: of the bootstrap (the same seed for every interval).

    Returns:
        name -> value; a slice without users has only its `n_users` (0).
    """
    systems = per_user["system"].unique(maintain_order=True).to_list()
    out: dict[str, float] = {}
    for name, users in slice_users(slices).items():
        out[f"{prefix}slice_{name}_n_users"] = float(len(users))
        if not users:
            continue
        wanted = pl.Series(users, dtype=pl.String)
        rows = per_user.filter(pl.col(schema.USER_ID).is_in(wanted.implode())).sort("system", schema.USER_ID)
        values = {s: rows.filter(pl.col("system") == s) for s in systems}
        for system, frame in values.items():
            head = prefix if system == REFERENCE else f"{prefix}{system}_"
            for metric in METRICS:
                out[f"{head}slice_{name}_{metric}"] = float(frame[metric].mean())
        if REFERENCE in values:
            ours = values[REFERENCE]
            for metric in METRICS:
                low, high = bootstrap_ci(ours[metric].to_numpy(), n_boot=n_boot, seed=seed)
                out[f"{prefix}slice_{name}_{metric}_ci_low"] = low
                out[f"{prefix}slice_{name}_{metric}_ci_high"] = high
            for other, frame in values.items():
                if other == REFERENCE or frame[schema.USER_ID].to_list() != ours[schema.USER_ID].to_list():
                    continue
                low, high = paired_bootstrap_ci(ours[GAIN_METRIC].to_numpy(), frame[GAIN_METRIC].to_numpy(),
                                                n_boot=n_boot, seed=seed)
                out[f"{prefix}slice_{name}_{GAIN_METRIC}_gain_vs_{other}_ci_low"] = low
                out[f"{prefix}slice_{name}_{GAIN_METRIC}_gain_vs_{other}_ci_high"] = high
        if stage1 is not None:
            mine = targets.filter(pl.col(schema.USER_ID).is_in(wanted.implode()))
            out[f"{prefix}slice_{name}_stage1_recall"] = found_share(stage1, mine)
    return out


def format_slices(metrics: Mapping[str, float], prefix: str = "test_", systems: Sequence[str] = ()) -> str:
    """One table of every slice in `metrics`: users, NDCG@10 and Recall@10 with their 95% CIs,
    stage-1 recall, and each of `systems`' NDCG@10 (default: every baseline found)."""
    if not systems:
        found = {k[len(prefix):].split("_slice_")[0] for k in metrics
                 if k.startswith(prefix) and "_slice_" in k and not k.startswith(f"{prefix}slice_")}
        systems = sorted(found)
    head = (f"{'slice':<18} {'users':>6}  {'NDCG@10':>8}  {'95% CI':<17}  {'Recall@10':>9}  {'95% CI':<17}  "
            f"{'stage-1':>7}" + "".join(f"  {s[:11]:>11}" for s in systems))
    lines = [head]

    def cell(key: str, width: int) -> str:
        value = metrics.get(key)
        return f"{value:>{width}.4f}" if value is not None and not math.isnan(value) else " " * (width - 1) + "-"

    for name in SLICES:
        n = metrics.get(f"{prefix}slice_{name}_n_users")
        if n is None:
            continue
        base = f"{prefix}slice_{name}"
        parts = [f"{name:<18} {int(n):>6}"]
        for metric in METRICS:
            width = 8 if metric.startswith("ndcg") else 9
            ci = (f"[{metrics[f'{base}_{metric}_ci_low']:.4f}, {metrics[f'{base}_{metric}_ci_high']:.4f}]"
                  if f"{base}_{metric}_ci_low" in metrics else "")
            parts.append(f"{cell(f'{base}_{metric}', width)}  {ci:<17}")
        parts.append(cell(f"{base}_stage1_recall", 7))
        parts += [cell(f"{prefix}{s}_slice_{name}_ndcg_at_10", 11) for s in systems]
        lines.append("  ".join(parts))
    return "\n".join(lines)


def slice_array(per_user: pl.DataFrame, users: Sequence[str], metric: str) -> np.ndarray:
    """float64 values of `metric` for `users` (sorted), from one system's per-user rows."""
    wanted = pl.DataFrame({schema.USER_ID: pl.Series(sorted(users), dtype=pl.String)})
    return wanted.join(per_user, on=schema.USER_ID, how="left", maintain_order="left")[metric].fill_null(0.0).to_numpy()
