"""Outputs on a bad disk: a folder that cannot be written stops a job before any work, and a
write that fails half-way (a full disk, simulated by a patched writer) leaves no partial file
under its final name, in the output folder or in the MLflow artifact store."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

import fuserank.jobs.train_evaluate as train_evaluate_module
from fuserank import atomic, tracking
from fuserank.cli import main
from fuserank.config import RunConfig, with_overrides
from tiny_project import write_project

COMMANDS = [["train-evaluate"], ["ablate"], ["tune"], ["compare"], ["export", "--run-id", "0" * 32]]


def half_then_full_disk(real, fail_at: int):
    """A writer that behaves like `real` until call `fail_at`, which writes half the bytes to its
    destination and then fails with ENOSPC, as a full disk does."""
    calls = [0]

    def writer(source, destination, *args, **kwargs):
        calls[0] += 1
        if calls[0] != fail_at:
            return real(source, destination, *args, **kwargs)
        data = Path(source).read_bytes()
        Path(destination).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return writer


@pytest.fixture()
def no_work(monkeypatch):
    """Any job that starts reading data or runs fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(train_evaluate_module, "prepare", forbidden)
    monkeypatch.setattr(tracking, "search_runs", forbidden)
    monkeypatch.setattr(tracking, "tracked_run", forbidden)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_output_folder_that_cannot_be_written_stops_the_job_before_any_work(tmp_path, capsys, no_work, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = tmp_path / "mlruns"
    args = [*command, "--quiet", "--set", f"output_dir={blocker / 'outputs'}",
            "--set", f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
            "--set", f"tracking.artifact_root={store / 'artifacts'}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"output folder {blocker / 'outputs'}" in err and "cannot be written: Not a directory" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_named_before_any_work(tmp_path, capsys, no_work):
    folder = tmp_path / "outputs"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        args = ["train-evaluate", "--quiet", "--set", f"output_dir={folder}", "--set", "tracking.enabled=false"]
        assert main(args) == 1
    finally:
        folder.chmod(0o700)
    assert "cannot be written: Permission denied" in capsys.readouterr().err


def test_a_full_disk_at_the_write_check_is_an_output_error(tmp_path, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if fd > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(atomic.OutputError, match="cannot be written: No space left on device"):
        atomic.check_writable(tmp_path / "out")
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the probe is gone


def test_an_artifact_copy_that_fails_half_way_leaves_no_partial_artifact(tmp_path, monkeypatch):
    store = tmp_path / "mlruns"
    config = with_overrides(RunConfig(), [f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                                          f"tracking.artifact_root={store / 'artifacts'}", "tracking.experiment=disk"])
    files = []
    for name in ("first.bin", "second.bin"):
        files.append(tmp_path / name)
        files[-1].write_bytes(os.urandom(4096))
    real = shutil.copyfileobj
    calls = [0]

    def copy_then_full_disk(source, destination, *args, **kwargs):
        calls[0] += 1
        if calls[0] != 2:
            return real(source, destination, *args, **kwargs)
        destination.write(source.read(2048))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        with tracking.tracked_run(config.tracking, "disk", {}) as run_id:
            tracking.log_artifacts([("evaluation", files[0]), ("evaluation", files[1])])
    monkeypatch.undo()
    assert calls[0] == 2
    run = tracking.search_runs(config.tracking, run_ids=[run_id])[0]
    assert run["status"] == "FAILED"
    folder = next(store.joinpath("artifacts").rglob("evaluation"))
    assert sorted(p.name for p in folder.iterdir()) == ["first.bin"]  # no half of second.bin, no temp file
    assert (folder / "first.bin").read_bytes() == files[0].read_bytes()


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def with_full_disk(body: str, limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter in which no file may grow past `limit` bytes: every
    writer, whatever library it is, fails half-way as on a full disk."""
    code = FULL_DISK.format(limit=limit) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("writer", [
    "atomic.write_text(folder / 'out.txt', 'x' * 100_000)",
    "atomic.write_parquet(folder / 'out.parquet', pl.DataFrame({'a': np.random.default_rng(0).random(100_000)}))",
    "sources._write_atomic(folder / 'marker.json', 'x' * 100_000)",
], ids=["text", "parquet", "source-marker"])
def test_a_write_that_runs_out_of_disk_leaves_neither_a_partial_file_nor_a_temp_file(tmp_path, writer):
    (tmp_path / "folder").mkdir()
    done = with_full_disk(f"""
        from pathlib import Path
        import numpy as np, polars as pl
        from fuserank import atomic
        from fuserank.data import sources
        folder = Path("folder")
        try:
            {writer}
        except Exception as err:  # polars reports the OS error as its own exception type
            print(err)
        """, limit=4096, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.strerror(errno.EFBIG) in done.stdout  # the write did fail half-way
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == []


@pytest.mark.slow  # one tiny train-evaluate (~20 s on 2 cores)
def test_a_full_disk_in_the_middle_of_train_evaluate_leaves_no_partial_output(tmp_path, monkeypatch):
    store = tmp_path / "mlruns"
    settings = with_overrides(RunConfig(), [f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                                            f"tracking.artifact_root={store / 'artifacts'}",
                                            "tracking.experiment=disk"])
    config = write_project(tmp_path, "disk", tracking=dict(vars(settings.tracking)))
    monkeypatch.chdir(tmp_path)
    real = pl.DataFrame.write_parquet

    def parquet_then_full_disk(frame, file, *args, **kwargs):
        # The second Parquet output (per-user metrics) is cut off half-way by a full disk.
        calls.append(file)
        if len(calls) == 2:
            real(frame, file, *args, **kwargs)
            Path(file).write_bytes(Path(file).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(frame, file, *args, **kwargs)

    calls: list = []
    monkeypatch.setattr(pl.DataFrame, "write_parquet", parquet_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        main(["train-evaluate", "--config", str(config), "--quiet"])
    monkeypatch.undo()
    outputs = tmp_path / "outputs" / "disk"
    assert not (outputs / "per_user_metrics.parquet").exists()
    assert pl.read_parquet(outputs / "ranked_lists.parquet").height > 0  # written before: whole
    assert [p for p in tmp_path.rglob(".*.tmp")] == []
    run = tracking.search_runs(settings.tracking, "disk")[0]
    assert run["status"] == "FAILED"
