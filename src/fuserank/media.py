"""Media files of a catalog: safe path resolution and content digests for caching.

Media paths in the items table are relative to the catalog root. A path that is absolute,
climbs out with `..`, or resolves (through a symlink) outside the root is rejected: a catalog
from someone else must not make fuserank read arbitrary files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


class MediaError(ValueError):
    """One media file could not be used (missing, outside the root, corrupt, too large).

    Encoders catch it per item: the item's modality degrades to a zero vector, the run goes on.
    """


def safe_media_path(root: Path, relative: str) -> Path:
    """The file `relative` names inside `root`.

    Raises:
        MediaError: the path is empty, absolute, escapes `root` (also through a symlink), or the
            file does not exist.
    """
    if not relative or not relative.strip():
        raise MediaError("empty media path")
    candidate = Path(relative)
    if candidate.is_absolute() or candidate.drive:
        raise MediaError(f"{relative}: absolute media paths are not allowed (paths are relative to the catalog root)")
    root = Path(root).resolve()
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise MediaError(f"{relative}: path leads outside the catalog root")
    if not resolved.is_file():
        raise MediaError(f"{relative}: no such file under the catalog root")
    return resolved


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (1 MiB blocks): the cache key of its embedding."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
