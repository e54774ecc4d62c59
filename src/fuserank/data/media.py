"""Media files of a catalog: safe path resolution, content digests and cache keys.

Media paths in the items table are relative to the catalog root. A path that is absolute,
climbs out with `..`, or resolves (through a symlink) outside the root is rejected: a catalog
from someone else must not make fuserank read arbitrary files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fuserank.encoders.cache import content_key
from fuserank.data.sources import file_sha256


class MediaError(ValueError):
    """One media file could not be used (missing, outside the root, corrupt, too large).

    Encoders catch it per item: the item's modality degrades to a zero vector, the run goes on.
    """


_MAX_LINKS = 40  # symlinks followed in one path before it counts as a loop (as the kernel's limit)


def safe_media_path(root: Path, relative: str) -> Path:
    """The file `relative` names inside `root`.

    Containment is checked before the filesystem is touched outside the root: the path is
    walked one name at a time from the resolved root, a `..` may not climb above it, and a
    symlink's target is checked (and then walked the same way) before anything it points at
    is looked at. Only names inside the root are ever stat-ed, so a catalog cannot use the
    run to learn whether a file exists elsewhere.

    Raises:
        MediaError: the path is empty, absolute, escapes `root` (also through a symlink), the
            file does not exist, or the path cannot be resolved (NUL byte, name too long, symlink loop).
    """
    if not relative or not relative.strip():
        raise MediaError("empty media path")
    candidate = Path(relative)
    if candidate.is_absolute() or candidate.drive:
        raise MediaError(f"{relative}: absolute media paths are not allowed (paths are relative to the catalog root)")
    shown = relative if len(relative) <= 200 else f"{relative[:200]}..."
    if "\x00" in relative:
        raise MediaError(f"{shown!r}: not a usable path (a NUL byte)")
    root = Path(root).resolve()
    try:
        resolved = _walk_inside(root, list(candidate.parts), Path(root).absolute())
        is_file = resolved.is_file()
    except _Escape:
        raise MediaError(f"{shown}: path leads outside the catalog root") from None
    except (OSError, ValueError, RuntimeError) as err:  # a name too long, a symlink loop
        raise MediaError(f"{shown!r}: not a usable path ({type(err).__name__}: {err})") from None
    if not is_file:
        raise MediaError(f"{shown}: no such file under the catalog root")
    return resolved


class _Escape(Exception):
    """A media path left the catalog root (raised before anything outside it is touched)."""


def _walk_inside(root: Path, parts: list[str], given_root: Path) -> Path:
    """Follow `parts` from the resolved `root`, symlinks included, without leaving it.

    Args:
        root: the resolved catalog root.
        parts: path components relative to it.
        given_root: the root as configured (absolute, unresolved): an absolute symlink target
            may name the root either way.

    Raises:
        _Escape: a `..` above the root, or a symlink whose target lies outside it.
        RuntimeError: more than _MAX_LINKS symlinks (a loop).
        OSError: a component could not be examined (e.g. a name too long).
    """
    current, pending, links = root, list(parts), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current == root:
                raise _Escape
            current = current.parent
            continue
        step = current / part  # inside the root: safe to examine
        if not step.is_symlink():
            current = step
            continue
        links += 1
        if links > _MAX_LINKS:
            raise RuntimeError(f"more than {_MAX_LINKS} symlinks (a loop?)")
        target = Path(os.readlink(step))
        if target.is_absolute():
            current, target = root, _inside_part(target, (root, given_root))
        pending = list(target.parts) + pending
    return current


def _inside_part(target: Path, roots: tuple[Path, ...]) -> Path:
    """An absolute symlink target as a path relative to the root it names, or _Escape."""
    for root in roots:
        if target.parts[: len(root.parts)] == root.parts:
            return Path(*target.parts[len(root.parts):]) if len(target.parts) > len(root.parts) else Path(".")
    raise _Escape


# The embedding caches key a media file by the sha256 of its bytes, as sources verify downloads.
file_digest = file_sha256


def group_media_files(
    item_ids: Sequence[str], paths: Sequence[str | None], root: Path, key_parts: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, Path], dict[str, str]]:
    """Resolve and content-key each item's media file, grouping the rows whose files have equal bytes.

    What an encoder does before any decoding: byte-identical files share one key, so each is
    decoded and cached once however many items point at it. A null path is skipped without a
    failure (the item has no such media); nothing is logged here.

    Args:
        item_ids: one id per row.
        paths: one media path per row, relative to `root`, or None.
        root: the catalog root (see safe_media_path).
        key_parts: what else the vector depends on (encoder, version, settings); a file's key is
            content_key(*key_parts, file_digest(path)).

    Returns:
        rows_of_key: key -> the rows (positions in `item_ids`) whose file has those bytes, keys in
            the order of their first row.
        file_of_key: key -> the resolved path of the first such file.
        failures: item_id -> reason, for the items whose path was rejected or whose file could
            not be read (MediaError, OSError).
    """
    rows_of_key: dict[str, list[int]] = {}
    file_of_key: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for row, (item_id, relative) in enumerate(zip(item_ids, paths, strict=True)):
        if relative is None:
            continue
        try:
            path = safe_media_path(root, relative)
            key = content_key(*key_parts, file_digest(path))
        except (MediaError, OSError) as error:
            failures[item_id] = str(error)
            continue
        rows_of_key.setdefault(key, []).append(row)
        file_of_key.setdefault(key, path)
    return rows_of_key, file_of_key, failures
