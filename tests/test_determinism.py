"""Determinism across processes: the same config and seed, trained and exported in two separate
processes with different PYTHONHASHSEEDs and cold caches, give identical metrics, a
byte-identical booster and byte-identical exported files.

The only fields allowed to differ are the ones that name the run: the MLflow run id (a column of
the exported lists and a manifest field), the manifest's creation time and the checksums of the
files that hold the run id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from fuserank import schema
from tiny_project import write_project

pytestmark = pytest.mark.slow  # four CLI processes: about 80 s on 2 cores

EXPORT = ["export.arms={control: popular, treatment: run}", "export.shares={control: 0.5, treatment: 0.4}",
          "export.holdout=0.1", "export.top_k=15", "export.batch_users=20", "export.salt=det"]


def fuserank(args: list[str], hash_seed: str, cwd: Path) -> None:
    env = os.environ | {"PYTHONHASHSEED": hash_seed, "OMP_WAIT_POLICY": "PASSIVE"}
    code = f"import sys; from fuserank.cli import main; sys.exit(main({args!r}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """One config file (relative output, cache and MLflow paths), run in two folders."""
    root = tmp_path_factory.mktemp("determinism")
    config_path = write_project(root, "det", n_jobs=2)
    export_args = [a for s in EXPORT for a in ("--set", s)]
    folders = []
    for name, hash_seed in (("first", "1"), ("second", "2")):
        cwd = root / name
        cwd.mkdir()
        fuserank(["train-evaluate", "--config", str(config_path), "--quiet"], hash_seed, cwd)
        run_id = json.loads((cwd / "outputs" / "det" / "metrics.json").read_text())["run_id"]
        fuserank(["export", "--config", str(config_path), "--quiet", "--run-id", run_id, *export_args,
                  "--out", "export"], hash_seed, cwd)
        folders.append((cwd / "outputs" / "det", cwd / "export", run_id))
    return folders


def without_run(value, run_id: str):
    """`value` with the run id replaced everywhere (keys too) and the creation time dropped."""
    if isinstance(value, dict):
        return {without_run(k, run_id): without_run(v, run_id) for k, v in value.items() if k != "created_at"}
    if isinstance(value, list):
        return [without_run(v, run_id) for v in value]
    return "RUN" if value == run_id else value


def test_two_processes_give_identical_metrics_and_booster(two_runs):
    (first, _, run_a), (second, _, run_b) = two_runs
    assert run_a != run_b
    a = json.loads((first / "metrics.json").read_text())
    b = json.loads((second / "metrics.json").read_text())
    timing = {k for k in a if "seconds" in k or k == "run_id"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    for name in ("model/model.txt", "model/features.json", "ranked_lists.parquet", "per_user_metrics.parquet"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_two_processes_give_byte_identical_exports(two_runs):
    (_, export_a, run_a), (_, export_b, run_b) = two_runs
    assert (export_a / "assignments.parquet").read_bytes() == (export_b / "assignments.parquet").read_bytes()
    lists_a = pl.read_parquet(export_a / "ranked_lists.parquet")
    lists_b = pl.read_parquet(export_b / "ranked_lists.parquet")
    assert set(lists_a[schema.RUN_ID].drop_nulls()) == {run_a}
    same_a = lists_a.with_columns(pl.col(schema.RUN_ID).replace(run_a, "RUN"))
    same_b = lists_b.with_columns(pl.col(schema.RUN_ID).replace(run_b, "RUN"))
    assert same_a.equals(same_b) and same_a.height > 0
    manifest_a = without_run(json.loads((export_a / "manifest.json").read_text()), run_a)
    manifest_b = without_run(json.loads((export_b / "manifest.json").read_text()), run_b)
    # The lists file holds the run id, so its checksum is the one field that differs.
    for manifest in (manifest_a, manifest_b):
        manifest["files"]["ranked_lists.parquet"].pop("sha256")
    assert manifest_a == manifest_b
