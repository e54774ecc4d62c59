import os

import pytest

from fuserank.data.media import MediaError, file_digest, safe_media_path


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "catalog" / "img").mkdir(parents=True)
    (tmp_path / "catalog" / "img" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("outside")
    return tmp_path / "catalog"


def test_a_relative_path_inside_the_root_resolves(root):
    assert safe_media_path(root, "img/a.png") == (root / "img" / "a.png").resolve()
    assert safe_media_path(root, "img/../img/a.png") == (root / "img" / "a.png").resolve()


@pytest.mark.parametrize("path", ["../secret.txt", "img/../../secret.txt", "", "  "])
def test_escapes_and_empty_paths_are_rejected(root, path):
    with pytest.raises(MediaError):
        safe_media_path(root, path)


def test_absolute_path_is_rejected(root, tmp_path):
    with pytest.raises(MediaError, match="absolute"):
        safe_media_path(root, str(tmp_path / "secret.txt"))


def test_symlink_out_of_the_root_is_rejected(root, tmp_path):
    os.symlink(tmp_path / "secret.txt", root / "img" / "link.png")
    with pytest.raises(MediaError, match="outside"):
        safe_media_path(root, "img/link.png")


def test_missing_file_is_a_media_error(root):
    with pytest.raises(MediaError, match="no such file"):
        safe_media_path(root, "img/b.png")


def test_file_digest_is_the_sha256_of_the_bytes(root):
    import hashlib

    assert file_digest(root / "img" / "a.png") == hashlib.sha256(b"png").hexdigest()


@pytest.fixture()
def touched(monkeypatch):
    """Every path the code stats, lstats or reads a link of, as absolute strings."""
    seen: list[str] = []
    for name in ("stat", "lstat", "readlink"):
        original = getattr(os, name)

        def recording(path, *args, _original=original, **kwargs):
            seen.append(os.path.abspath(os.fsdecode(path)))
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(os, name, recording)
    return seen


def _outside(seen: list[str], root) -> list[str]:
    """Paths that are neither inside the root nor on the root's own path (its ancestors)."""
    root = os.path.realpath(root)
    inside = [p for p in seen if p == root or p.startswith(root + os.sep)]
    ancestors = [p for p in seen if root.startswith(p.rstrip(os.sep) + os.sep)]
    return [p for p in seen if p not in inside and p not in ancestors]


@pytest.mark.parametrize("path", ["../secret.txt", "img/../../secret.txt", "img/../../catalog/../secret.txt",
                                  "img/out.png", "img/abs.png", "img/chain.png"])
def test_an_escaping_path_is_refused_before_anything_outside_the_root_is_touched(root, tmp_path, touched, path):
    # The secret exists: a probe of it (stat, is_file, resolve) would tell the run it is there.
    os.symlink("../../secret.txt", root / "img" / "out.png")
    os.symlink(tmp_path / "secret.txt", root / "img" / "abs.png")
    os.symlink("out.png", root / "img" / "chain.png")
    touched.clear()
    with pytest.raises(MediaError, match="outside the catalog root"):
        safe_media_path(root, path)
    assert touched, "the recorder saw nothing: the test would prove nothing"
    assert _outside(touched, root) == []


def test_symlinks_that_stay_inside_the_root_are_followed(root, touched):
    (root / "other").mkdir()
    os.symlink("../img/a.png", root / "other" / "rel.png")
    os.symlink(root / "img" / "a.png", root / "other" / "abs.png")
    os.symlink(root / "img", root / "dir")
    for path in ("other/rel.png", "other/abs.png", "dir/a.png", "dir/../img/a.png"):
        assert safe_media_path(root, path) == (root / "img" / "a.png").resolve()
    assert _outside(touched, root) == []
