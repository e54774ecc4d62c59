"""Where a run's code came from and how it was started, independent of the working folder.

`code_version` asks the installed package, not the folder a command runs in: an editable install
points into its source checkout, whose commit is read with git; a wheel installed from a git URL
records the commit in its `direct_url.json`; anything else is named by its package version. So a
run started from any folder records the code it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import fuserank

PACKAGE = "fuserank"


def _git(folder: Path, *args: str) -> str | None:
    """stdout of `git -C folder args` (stripped), None when git fails or is missing."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def checkout_commit(package_dir: Path) -> str | None:
    """The commit of the git checkout that holds `package_dir` as tracked source, "+dirty" when a
    tracked file differs from it; None when the package is not tracked by a checkout (e.g. a
    copy installed into a virtual environment that happens to sit inside one)."""
    init = Path(package_dir) / "__init__.py"
    if _git(package_dir, "ls-files", "--error-unmatch", init.name) is None:
        return None
    sha = _git(package_dir, "rev-parse", "HEAD")
    if not sha:
        return None
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return sha + ("+dirty" if dirty else "")


def installed_commit(distribution: str = PACKAGE) -> str | None:
    """The commit pip recorded for a wheel installed from a git URL (PEP 610), else None."""
    try:
        text = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        vcs = json.loads(text).get("vcs_info") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    commit = vcs.get("commit_id")
    return str(commit) if commit else None


def package_version(distribution: str = PACKAGE) -> str:
    """`fuserank==<version>` of the installed distribution ("fuserank (not installed)" without one)."""
    try:
        return f"{distribution}=={metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} (not installed)"


def code_version() -> str:
    """The git commit of the running fuserank's source checkout, else the commit pip recorded,
    else the package version. Never depends on the current working folder."""
    return (checkout_commit(Path(fuserank.__file__).resolve().parent) or installed_commit()
            or package_version())


def portable_path(text: str, cwd: Path | None = None, home: Path | None = None) -> str:
    """`text` with an absolute path made relative to `cwd` when it lies inside it, or written
    `~/...` when it lies inside the home folder; anything else unchanged.

    A `KEY=/abs/path` argument (as in `--set data.items_path=/abs/path`) has its value rewritten.
    """
    key, sep, value = text.partition("=")
    if sep and not os.path.isabs(text):
        return f"{key}={portable_path(value, cwd, home)}"
    if not os.path.isabs(text):
        return text
    path = Path(os.path.normpath(text))
    cwd = Path(cwd or Path.cwd()).resolve()
    home = Path(home or Path.home())
    for base, prefix in ((cwd, ""), (home, "~")):
        try:
            relative = path.relative_to(base)
        except ValueError:
            continue
        if prefix:
            return f"{prefix}/{relative.as_posix()}" if str(relative) != "." else prefix
        return relative.as_posix()
    return text


def command_line(argv: Sequence[str], cwd: Path | None = None, home: Path | None = None) -> str:
    """The command as a user would retype it: the program by its name (not the path of the
    virtual environment's script) and path arguments relative where a relative one serves."""
    if not argv:
        return ""
    # A console script is known by its name, a module run with -m by its package, a script file
    # (pipelines/...) by its portable path.
    first = Path(argv[0])
    if first.name == "__main__.py":
        program = f"python -m {first.parent.name}"
    elif first.suffix == ".py":
        program = portable_path(argv[0], cwd, home)
    else:
        program = first.name
    return " ".join([program, *(portable_path(arg, cwd, home) for arg in argv[1:])])
