"""Provenance that does not depend on the working folder: the code's commit and a portable command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fuserank
from fuserank import provenance


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_comes_from_the_package_checkout_whatever_the_working_folder(tmp_path, monkeypatch):
    package = Path(fuserank.__file__).resolve().parent
    if provenance.checkout_commit(package) is None:
        pytest.skip("fuserank is not running from a git checkout here")
    expected = git(package, "rev-parse", "HEAD")
    monkeypatch.chdir(tmp_path)  # a folder outside any repository
    version = provenance.code_version()
    assert version.removesuffix("+dirty") == expected
    # The same from a fresh process started in that folder, as `fuserank train-evaluate` would be.
    code = "from fuserank import provenance; print(provenance.code_version())"
    printed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert printed.removesuffix("+dirty") == expected


def test_a_checkout_marks_dirty_and_an_untracked_copy_is_not_its_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "add", "pkg/__init__.py")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "one")
    sha = git(repo, "rev-parse", "HEAD")
    assert provenance.checkout_commit(repo / "pkg") == sha
    (repo / "pkg" / "__init__.py").write_text("x = 2\n")
    assert provenance.checkout_commit(repo / "pkg") == sha + "+dirty"
    # A package copied into an untracked folder of the checkout (a venv's site-packages) is not it.
    (repo / ".venv" / "pkg").mkdir(parents=True)
    (repo / ".venv" / "pkg" / "__init__.py").write_text("x = 1\n")
    assert provenance.checkout_commit(repo / ".venv" / "pkg") is None
    assert provenance.checkout_commit(tmp_path) is None  # no repository at all


def test_without_a_checkout_the_recorded_vcs_commit_or_the_version(monkeypatch):
    class Dist:
        def __init__(self, text):
            self.text = text

        def read_text(self, name):
            return self.text if name == "direct_url.json" else None

    record = {"url": "https://example.org/fuserank.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}
    monkeypatch.setattr(provenance.metadata, "distribution", lambda name: Dist(json.dumps(record)))
    assert provenance.installed_commit() == "abc123"
    monkeypatch.setattr(provenance.metadata, "distribution", lambda name: Dist(None))
    assert provenance.installed_commit() is None
    monkeypatch.setattr(provenance, "checkout_commit", lambda folder: None)
    monkeypatch.setattr(provenance.metadata, "version", lambda name: "9.9.9")
    assert provenance.code_version() == "fuserank==9.9.9"


def test_the_command_line_has_no_absolute_path_where_a_relative_one_serves(tmp_path):
    cwd, home = tmp_path / "home" / "me" / "project", tmp_path / "home" / "me"
    argv = [str(tmp_path / "venv" / "bin" / "fuserank"), "train-evaluate", "--config", str(cwd / "configs" / "a.yaml"),
            "--set", f"data.items_path={cwd / 'data' / 'items.parquet'}", "--set", "seed=3",
            "--out", str(home / "exports" / "x"), "--users", "/srv/shared/users.txt"]
    assert provenance.command_line(argv, cwd, home) == (
        "fuserank train-evaluate --config configs/a.yaml --set data.items_path=data/items.parquet --set seed=3 "
        "--out ~/exports/x --users /srv/shared/users.txt")
    assert provenance.command_line([str(cwd / "pipelines" / "tune.py"), "--quiet"], cwd, home) == (
        "pipelines/tune.py --quiet")
    main = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pytest" / "__main__.py"
    assert provenance.command_line([str(main), "-q"], cwd, home) == "python -m pytest -q"
