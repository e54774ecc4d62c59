import os

import pytest

from fuserank.media import MediaError, file_digest, safe_media_path


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
