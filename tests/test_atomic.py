from __future__ import annotations

import os

import polars as pl
import pytest

from fuserank import atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = atomic.write_text(tmp_path / "out.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_atomic(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_written_files_get_the_umask_mode_not_the_temp_files_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_identical_frames_give_identical_parquet_bytes(tmp_path):
    frame = pl.DataFrame({"user_id": ["a", "b"], "score": [0.5, 0.25]})
    one = atomic.write_parquet(tmp_path / "1.parquet", frame).read_bytes()
    two = atomic.write_parquet(tmp_path / "2.parquet", frame).read_bytes()
    assert one == two


def test_the_next_write_sweeps_temp_files_of_dead_processes_only(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale_file = tmp_path / f".shard-1.npz.abc123.{dead_pid}.tmp"
    stale_file.write_bytes(b"half a shard")
    stale_folder = tmp_path / f".export.xyz.{dead_pid}.tmp"
    stale_folder.mkdir()
    (stale_folder / "ranked_lists.parquet").write_bytes(b"partial")
    live = tmp_path / f".other.npz.def456.{os.getpid()}.tmp"  # this process: still writing
    live.write_bytes(b"in progress")

    atomic.write_text(tmp_path / "shard-2.json", "{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([live.name, "shard-2.json"])
