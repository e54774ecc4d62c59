"""Run comparison: deltas against a baseline, paired bootstrap CI over users, MLflow edge."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fuserank.evaluation.compare import (
    DataMismatchError,
    comparison_table,
    compare_runs,
    data_warnings,
    format_comparison,
    varying_params,
)
from fuserank.config import RunConfig, with_overrides

USERS = [f"u{i}" for i in range(50)]


def per_user(values: np.ndarray, system: str = "fuserank") -> pl.DataFrame:
    return pl.DataFrame({"user_id": USERS, "ndcg_at_10": values, "system": [system] * len(USERS)})


def run(run_id: str, ndcg: float, lr: str) -> dict:
    return {"run_id": run_id, "run_name": f"name-{run_id}",
            "metrics": {"test_ndcg_at_10": ndcg, "valid_ndcg_at_10": ndcg / 2, "test_precision_at_10": ndcg / 4},
            "params": {"ranker.learning_rate": lr, "seed": "42", "tracking.experiment": run_id}}


def planted() -> tuple[list[dict], dict[str, pl.DataFrame]]:
    rng = np.random.default_rng(0)
    base = rng.random(len(USERS)) * 0.5
    noise = rng.normal(0, 0.3, len(USERS))
    runs = [run("aaaa0000", base.mean(), "0.05"), run("bbbb1111", base.mean() + 0.1, "0.1"),
            run("cccc2222", (base + noise).mean(), "0.05")]
    # Other systems' rows in the artifact must be ignored.
    frames = {"aaaa0000": pl.concat([per_user(base), per_user(base + 5, "popular")]),
              "bbbb1111": per_user(base + 0.1), "cccc2222": per_user(base + noise)}
    return runs, frames


def test_varying_params_skip_bookkeeping_and_equal_values():
    params = {"a": {"x": "1", "y": "2", "run_name": "a", "tracking.experiment": "e1"},
              "b": {"x": "1", "y": "3", "z": "0", "run_name": "b", "tracking.experiment": "e2"}}
    assert varying_params(params) == ["y", "z"]


def test_deltas_and_paired_ci_against_the_baseline():
    runs, frames = planted()
    table = comparison_table(runs, frames, baseline="aaaa0000", seed=1)
    rows = {r["run_id"]: r for r in table.iter_rows(named=True)}
    assert rows["aaaa0000"]["baseline"] and rows["aaaa0000"]["delta_test_ndcg_at_10"] == 0.0
    # Every user gains exactly 0.1: the interval collapses onto it.
    shifted = rows["bbbb1111"]
    assert shifted["delta_test_ndcg_at_10"] == pytest.approx(0.1)
    assert shifted["delta_ndcg_ci_low"] == pytest.approx(0.1) and shifted["delta_ndcg_ci_high"] == pytest.approx(0.1)
    assert shifted["beyond_ci"] and shifted["paired_users"] == 50
    # Zero-mean-ish noise: the interval is wide and covers the observed difference.
    noisy = rows["cccc2222"]
    assert noisy["delta_ndcg_ci_low"] < noisy["delta_test_ndcg_at_10"] < noisy["delta_ndcg_ci_high"]
    assert noisy["delta_ndcg_ci_high"] - noisy["delta_ndcg_ci_low"] > 0.1
    assert [c for c in table.columns if c.startswith("param:")] == ["param:ranker.learning_rate"]
    # Every metric of METRICS is a column; one a run did not record (F1 here) is null, shown as "-".
    assert shifted["delta_test_precision_at_10"] == pytest.approx(0.1 / 4)
    assert table["test_f1_at_10"].null_count() == table.height
    text = format_comparison(table)
    assert "precision_at_10" in text.splitlines()[0] and "f1_at_10" in text.splitlines()[0]
    assert "(baseline)" in text and "+0.1000" in text and "ranker.learning_rate=0.1" in text


def test_runs_without_per_user_metrics_get_no_interval_and_a_bad_baseline_is_an_error():
    runs, frames = planted()
    frames["cccc2222"] = None
    table = comparison_table(runs, frames, baseline="bbbb1111")
    row = table.filter(pl.col("run_id") == "cccc2222").row(0, named=True)
    assert row["delta_ndcg_ci_low"] is None and row["paired_users"] == 0 and not row["beyond_ci"]
    assert table.filter(pl.col("run_id") == "aaaa0000")["delta_test_ndcg_at_10"][0] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="zzz"):
        comparison_table(runs, frames, baseline="zzz")


def test_compare_runs_reads_mlflow_and_records_the_table(tmp_path):
    from fuserank import atomic, tracking

    store = tmp_path / "mlruns"
    config = with_overrides(RunConfig(), [
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}", f"tracking.artifact_root={store / 'artifacts'}",
        "tracking.experiment=cmp", f"output_dir={tmp_path / 'out'}"])
    runs, frames = planted()
    ids = {}
    for planted_run in runs[:2]:
        with tracking.tracked_run(config.tracking, planted_run["run_name"], {}) as run_id:
            tracking.log_params(planted_run["params"])
            tracking.log_metrics(planted_run["metrics"])
            path = atomic.write_parquet(tmp_path / planted_run["run_id"] / "per_user_metrics.parquet",
                                        frames[planted_run["run_id"]])
            tracking.log_artifacts([("evaluation", path)])
            ids[planted_run["run_id"]] = run_id
    table, text, folder = compare_runs(config, "cmp", [], baseline=None)
    assert table["run_id"].to_list() == [ids["aaaa0000"], ids["bbbb1111"]]  # oldest first, oldest is baseline
    assert table["delta_ndcg_ci_low"][1] == pytest.approx(0.1)
    assert (folder / "comparison.csv").is_file() and "(baseline)" in (folder / "comparison.txt").read_text()
    recorded = [r for r in tracking.search_runs(config.tracking, "cmp") if r["tags"].get("kind") == "compare"]
    assert len(recorded) == 1 and recorded[0]["tags"]["baseline_run"] == ids["aaaa0000"]
    got = tracking.download_artifact(config.tracking, recorded[0]["run_id"], "comparison.txt", tmp_path / "dl")
    assert got.read_text() == (folder / "comparison.txt").read_text()
    # By ids with an explicit baseline; the compare run itself is never picked up as a run to compare.
    table, _, _ = compare_runs(config, None, [ids["bbbb1111"], ids["aaaa0000"]], baseline=ids["bbbb1111"])
    assert table["delta_test_ndcg_at_10"][1] == pytest.approx(-0.1)
    assert len(compare_runs(config, "cmp", [], None)[0]) == 2


def test_data_warnings_name_differing_and_missing_hashes():
    runs = [{"run_id": "aaaa0000", "tags": {"data_hash": "d1", "items_hash": "i1"}},
            {"run_id": "bbbb1111", "tags": {"data_hash": "d1", "items_hash": "i1"}}]
    assert data_warnings(runs) == ([], [])
    runs.append({"run_id": "cccc2222", "tags": {"data_hash": "d2", "items_hash": "i1"}})
    runs.append({"run_id": "dddd3333", "tags": {}})
    mismatches, unknown = data_warnings(runs)
    assert mismatches == ["data_hash differs: d1 in aaaa0000, bbbb1111; d2 in cccc2222"]
    assert unknown == ["no data_hash recorded by dddd3333: same data not checked",
                       "no items_hash recorded by dddd3333: same data not checked"]


def test_compare_refuses_runs_on_different_data_unless_forced(tmp_path, capsys):
    from fuserank import atomic, tracking
    from fuserank.cli import main

    store = tmp_path / "mlruns"
    settings = [f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                f"tracking.artifact_root={store / 'artifacts'}", "tracking.experiment=cmp",
                f"output_dir={tmp_path / 'out'}"]
    config = with_overrides(RunConfig(), settings)
    runs, frames = planted()
    hashes = {"aaaa0000": "ml100k", "bbbb1111": "ml100k", "cccc2222": "ml1m"}
    ids = {}
    for planted_run in runs:
        tags = {"data_hash": hashes[planted_run["run_id"]], "items_hash": "items"}
        with tracking.tracked_run(config.tracking, planted_run["run_name"], tags) as run_id:
            tracking.log_metrics(planted_run["metrics"])
            path = atomic.write_parquet(tmp_path / planted_run["run_id"] / "per_user_metrics.parquet",
                                        frames[planted_run["run_id"]])
            tracking.log_artifacts([("evaluation", path)])
            ids[planted_run["run_id"]] = run_id
    # Same data: no warning.
    _, text, _ = compare_runs(config, None, [ids["aaaa0000"], ids["bbbb1111"]], None)
    assert "WARNING" not in text
    # Different data: refused, by the library and by the CLI, naming the differing hashes.
    with pytest.raises(DataMismatchError, match="data_hash differs: ml100k in .*; ml1m in"):
        compare_runs(config, "cmp", [], None)
    args = ["compare", "--quiet", *(a for s in settings for a in ("--set", s))]
    assert main(args) == 2
    assert "cannot be paired" in capsys.readouterr().err
    # Forced: compared, with the warning as the table's first line and on the compare run.
    assert main([*args, "--force"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("WARNING: data_hash differs: ml100k in")
    recorded = [r for r in tracking.search_runs(config.tracking, "cmp") if r["tags"].get("kind") == "compare"]
    assert [r["tags"]["data_mismatch"] for r in recorded] == ["false", "true"]


def test_data_warnings_compare_dataset_digests_per_context_and_table():
    def datasets(history: str, targets: str) -> list[dict]:
        return [{"context": "training", "table": "items", "digest": "items16"},
                {"context": "training", "table": "interactions", "digest": history},
                {"context": "evaluation", "table": "interactions", "digest": targets}]

    tags = {"data_hash": "d1", "items_hash": "i1"}
    runs = [{"run_id": "aaaa0000", "tags": tags, "datasets": datasets("h1", "t1")},
            {"run_id": "bbbb1111", "tags": tags, "datasets": datasets("h1", "t1")},
            {"run_id": "eeee4444", "tags": tags}]  # an older run without dataset inputs: not a mismatch
    assert data_warnings(runs) == ([], [])
    runs.append({"run_id": "cccc2222", "tags": tags, "datasets": datasets("h1", "t2")})
    assert data_warnings(runs)[0] == [
        "evaluation interactions dataset digest differs: t1 in aaaa0000, bbbb1111; t2 in cccc2222"]


def test_compare_refuses_runs_whose_logged_datasets_differ(tmp_path, capsys):
    # Same data_hash tags, but the evaluation targets (a different split) differ: refused, naming both digests.
    from fuserank import atomic, registry, tracking
    from fuserank.cli import main

    store = tmp_path / "mlruns"
    settings = [f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                f"tracking.artifact_root={store / 'artifacts'}", "tracking.experiment=cmp-data",
                f"output_dir={tmp_path / 'out'}"]
    config = with_overrides(RunConfig(), settings)
    runs, frames = planted()
    interactions = pl.DataFrame({"user_id": USERS, "item_id": ["i"] * len(USERS), "timestamp": list(range(50))})
    targets = {"aaaa0000": interactions.head(40), "bbbb1111": interactions.tail(40)}
    digests = {"aaaa0000": "0123456789abcdef", "bbbb1111": "fedcba9876543210"}
    for planted_run in runs[:2]:
        with tracking.tracked_run(config.tracking, planted_run["run_name"],
                                  {"data_hash": "same", "items_hash": "same"}) as run_id:
            tracking.log_metrics(planted_run["metrics"])
            record = registry.DatasetRecord("tiny interactions (test targets)", digests[planted_run["run_id"]],
                                            "local", "data/interactions.parquet", "interactions", "evaluation",
                                            targets[planted_run["run_id"]])
            registry.log_datasets(run_id, config.tracking, [record])
            path = atomic.write_parquet(tmp_path / planted_run["run_id"] / "per_user_metrics.parquet",
                                        frames[planted_run["run_id"]])
            tracking.log_artifacts([("evaluation", path)])
    found = tracking.search_runs(config.tracking, "cmp-data")
    assert [d["profile"]["num_rows"] for r in found for d in r["datasets"]] == [40, 40]
    with pytest.raises(DataMismatchError, match="0123456789abcdef in .*; fedcba9876543210 in"):
        compare_runs(config, "cmp-data", [], None)
    args = ["compare", "--quiet", *(a for s in settings for a in ("--set", s))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and "fedcba9876543210" in err and "--force" in err
    assert main([*args, "--force"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("WARNING: evaluation interactions dataset digest differs: 0123456789abcdef in")
