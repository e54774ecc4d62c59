"""Compare recorded runs: a table of metrics and the parameters that differ, with deltas against
a baseline run and a paired bootstrap 95% CI over users of the test NDCG@10 difference.

`comparison_table` and `format_comparison` are pure; `compare_runs` is the edge that reads runs
and per-user metrics from MLflow and records the table as an artifact of a "compare" run.

Users are paired by id, which means something only when the runs read the same data: runs whose
recorded data hashes (`DATA_TAGS`, set by train-evaluate) or MLflow dataset digests (items and
interactions, for training and for evaluation) differ are refused unless forced, and a forced
comparison carries a warning line in its table.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fuserank import atomic, schema, tracking
from fuserank.evaluation.metrics import paired_bootstrap_ci

METRICS = ("test_ndcg_at_10", "test_recall_at_10", "test_mrr_at_10", "test_precision_at_10",
           "test_f1_at_10", "test_stage1_recall", "valid_ndcg_at_10")
PAIRED_METRIC = "ndcg_at_10"
PER_USER_ARTIFACT = "evaluation/per_user_metrics.parquet"
SYSTEM = "fuserank"
# Run tags that identify the data a run read (train_evaluate.prepare records them).
DATA_TAGS = ("data_hash", "items_hash")
# Params that say where a run came from rather than what it did.
_IGNORED_PARAMS = ("run_name", "output_dir", "tracking.", "sources.cache_dir", "tune.", "data.items_path",
                   "data.interactions_path")


def varying_params(params: Mapping[str, Mapping[str, str]], limit: int = 12) -> list[str]:
    """Param names whose value differs between runs (or is missing in some), sorted, at most `limit`.

    Args:
        params: run id -> that run's params (name -> value string).
    """
    names = sorted({k for p in params.values() for k in p if not k.startswith(_IGNORED_PARAMS)})
    varying = [k for k in names if len({p.get(k) for p in params.values()}) > 1]
    return varying[:limit]


class DataMismatchError(ValueError):
    """The compared runs read different data, so pairing their users by id means nothing."""


def data_warnings(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """What the runs' data tags and dataset inputs say about comparing them.

    Args:
        runs: dicts with run_id, tags (name -> str) and optionally datasets (dicts with digest,
            context, table), as tracking.search_runs returns them.

    Returns:
        (mismatches, unknown): a line per tag in `DATA_TAGS`, and per (context, table) of the
        runs' dataset inputs, whose recorded values differ (naming each digest and its runs), and
        a line per tag some runs do not record. Datasets are compared among the runs that record
        them (runs older than dataset inputs have none).
    """
    mismatches, unknown = [], []
    for tag in DATA_TAGS:
        groups: dict[str, list[str]] = {}
        missing = []
        for run in runs:
            value = run.get("tags", {}).get(tag)
            if value:
                groups.setdefault(value, []).append(run["run_id"][:8])
            else:
                missing.append(run["run_id"][:8])
        if len(groups) > 1:
            values = "; ".join(f"{value[:12]} in {', '.join(ids)}" for value, ids in groups.items())
            mismatches.append(f"{tag} differs: {values}")
        if missing:
            unknown.append(f"no {tag} recorded by {', '.join(missing)}: same data not checked")
    digests: dict[tuple[str, str], dict[str, list[str]]] = {}
    for run in runs:
        for dataset in run.get("datasets") or ():
            if dataset.get("table") and dataset.get("context"):
                key = (dataset["context"], dataset["table"])
                digests.setdefault(key, {}).setdefault(dataset["digest"], []).append(run["run_id"][:8])
    for (context, table), groups in sorted(digests.items()):
        if len(groups) > 1:
            values = "; ".join(f"{digest} in {', '.join(ids)}" for digest, ids in groups.items())
            mismatches.append(f"{context} {table} dataset digest differs: {values}")
    return mismatches, unknown


def _per_user(frame: pl.DataFrame | None) -> pl.DataFrame | None:
    if frame is None:
        return None
    if "system" in frame.columns:
        frame = frame.filter(pl.col("system") == SYSTEM)
    return frame.select(schema.USER_ID, PAIRED_METRIC)


def comparison_table(
    runs: Sequence[Mapping[str, Any]],
    per_user: Mapping[str, pl.DataFrame | None],
    baseline: str,
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    n_boot: int = 1000,
) -> pl.DataFrame:
    """One row per run: metrics, their deltas against `baseline`, the paired CI, varying params.

    Args:
        runs: dicts with run_id, run_name, metrics (name -> float) and params (name -> str), as
            tracking.search_runs returns them.
        per_user: run id -> per-user metrics (user_id, ndcg_at_10, optionally `system`; rows of
            system "fuserank" are used), or None when the run has none.
        baseline: run id of the reference run (must be in `runs`).
        metrics: metric names shown (missing ones are null).
        seed, n_boot: of the paired bootstrap over the users both runs evaluated.

    Returns:
        Columns run_id, run_name, baseline (bool), each metric and `delta_<metric>`,
        `paired_users`, `delta_ndcg_ci_low/high` (test NDCG@10 difference, run minus baseline,
        over shared users), `beyond_ci`, then `param:<name>` for each varying param.
    """
    ids = [r["run_id"] for r in runs]
    if baseline not in ids:
        raise ValueError(f"baseline run {baseline!r} is not among the compared runs {ids}")
    base_run = runs[ids.index(baseline)]
    base_users = _per_user(per_user.get(baseline))
    params = varying_params({r["run_id"]: r["params"] for r in runs})
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run_id": run["run_id"], "run_name": run["run_name"], "baseline": run["run_id"] == baseline}
        for metric in metrics:
            value, base = run["metrics"].get(metric), base_run["metrics"].get(metric)
            row[metric] = value
            row[f"delta_{metric}"] = None if value is None or base is None else value - base
        low = high = None
        shared = 0
        users = _per_user(per_user.get(run["run_id"]))
        if users is not None and base_users is not None:
            paired = users.join(base_users, on=schema.USER_ID, how="inner", suffix="_base").sort(schema.USER_ID)
            shared = paired.height
            if shared and run["run_id"] != baseline:
                low, high = paired_bootstrap_ci(paired[PAIRED_METRIC].to_numpy(),
                                                paired[f"{PAIRED_METRIC}_base"].to_numpy(), n_boot=n_boot, seed=seed)
            elif shared:
                low = high = 0.0
        row["paired_users"] = shared
        row["delta_ndcg_ci_low"] = low
        row["delta_ndcg_ci_high"] = high
        row["beyond_ci"] = bool(low is not None and (low > 0 or high < 0))
        for name in params:
            row[f"param:{name}"] = run["params"].get(name)
        rows.append(row)
    schema_overrides = {m: pl.Float64 for m in metrics} | {f"delta_{m}": pl.Float64 for m in metrics}
    schema_overrides |= {"delta_ndcg_ci_low": pl.Float64, "delta_ndcg_ci_high": pl.Float64}
    schema_overrides |= {f"param:{n}": pl.String for n in params}
    return pl.DataFrame(rows, schema_overrides=schema_overrides)


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_comparison(table: pl.DataFrame, metrics: Sequence[str] = METRICS, warnings: Sequence[str] = ()) -> str:
    """The table as aligned text: warning lines first ("WARNING: ..."), then metrics with
    deltas, the NDCG@10 CI, then the varying params."""
    shown = [m for m in metrics if m in table.columns]
    header = ["run", "name", *[m.removeprefix("test_") for m in shown], "d ndcg@10", "d 95% CI", "beyond"]
    lines = []
    for row in table.iter_rows(named=True):
        marker = " (baseline)" if row["baseline"] else ""
        cells = [row["run_id"][:8], f"{row['run_name']}{marker}"]
        for m in shown:
            delta = "" if row["baseline"] or row[f"delta_{m}"] is None else f" ({_number(row[f'delta_{m}'], True)})"
            cells.append(_number(row[m]) + delta)
        cells.append(_number(row["delta_test_ndcg_at_10"], True) if "delta_test_ndcg_at_10" in row else "-")
        ci = "-" if row["delta_ndcg_ci_low"] is None else (
            f"[{_number(row['delta_ndcg_ci_low'], True)}, {_number(row['delta_ndcg_ci_high'], True)}]")
        cells += [ci, "yes" if row["beyond_ci"] else "no"]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    out = [f"WARNING: {line}" for line in warnings]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *lines]]
    params = [c for c in table.columns if c.startswith("param:")]
    if params:
        out.append("")
        out.append("parameters that differ:")
        for row in table.iter_rows(named=True):
            values = ", ".join(f"{c.removeprefix('param:')}={row[c]}" for c in params)
            out.append(f"  {row['run_id'][:8]}  {values}")
    out.append("")
    out.append("d 95% CI: paired bootstrap over the users both runs evaluated (test NDCG@10, run - baseline)")
    return "\n".join(out)


def compare_runs(config: Any, experiment: str | None, run_ids: Sequence[str], baseline: str | None,
                 force: bool = False) -> tuple[pl.DataFrame, str, Path]:
    """The `fuserank compare` job: read runs, build the table, record it in MLflow.

    Runs by id, or every run of `experiment` that has a test NDCG@10 (oldest first). The
    baseline defaults to the first run. Writes comparison.csv/.txt under
    `<output_dir>/<run_name or compare>` and logs both as artifacts of a new "compare" run in
    the configured experiment. Returns (table, text, folder).

    Args:
        config: the RunConfig (tracking, output_dir, seed, run_name are used).
        force: compare runs whose data hashes differ; the table then starts with a warning line.

    Raises:
        DataMismatchError: the runs' recorded data hashes differ and `force` is False.
    """

    folder = atomic.check_writable(Path(config.output_dir) / (config.run_name or "compare"))
    runs = tracking.search_runs(config.tracking, experiment, run_ids)
    if not run_ids:
        runs = [r for r in runs if "test_ndcg_at_10" in r["metrics"]]
    if len(runs) < 1:
        raise ValueError(f"no run with test_ndcg_at_10 found ({experiment or run_ids})")
    baseline = baseline or runs[0]["run_id"]
    mismatches, unknown = data_warnings(runs)
    if mismatches and not force:
        raise DataMismatchError("the runs read different data, so their users cannot be paired: "
                                + " | ".join(mismatches) + " (--force compares them anyway, with a warning)")
    warnings = [f"{line} (compared anyway: --force)" for line in mismatches] + unknown
    with tempfile.TemporaryDirectory(prefix="fuserank-compare-") as tmp:
        per_user: dict[str, pl.DataFrame | None] = {}
        for run in runs:
            local = tracking.download_artifact(config.tracking, run["run_id"], PER_USER_ARTIFACT, Path(tmp) / run["run_id"])
            per_user[run["run_id"]] = pl.read_parquet(local) if local is not None else None
        table = comparison_table(runs, per_user, baseline, seed=config.seed)
    text = format_comparison(table, warnings=warnings)
    paths = [atomic.write_atomic(folder / "comparison.csv", lambda tmp: table.write_csv(tmp)),
             atomic.write_text(folder / "comparison.txt", text + "\n")]
    tags = {"kind": "compare", "baseline_run": baseline, "compared_runs": ",".join(r["run_id"] for r in runs),
            "data_mismatch": str(bool(mismatches)).lower()}
    with tracking.tracked_run(config.tracking, config.run_name or "compare", tags) as run_id:
        if run_id is not None:
            tracking.log_artifacts([("", p) for p in paths])
            deltas = {f"delta_ndcg_{r['run_id'][:8]}": r["delta_test_ndcg_at_10"] for r in table.iter_rows(named=True)
                      if r["delta_test_ndcg_at_10"] is not None and not r["baseline"]}
            tracking.log_metrics(deltas)
    return table, text, folder
