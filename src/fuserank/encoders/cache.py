"""On-disk embedding cache keyed by content hash, safe to interrupt and resume.

Each `put` writes one shard file: an `.npz` holding a fixed-width unicode key array and the
float32 matrix. A shard is first written to a temporary file in the same folder and then
renamed with `os.replace` (fuserank.atomic), which is atomic on one file system, so a crash
leaves either the whole shard or none of it; temporary files never match `*.npz`. Shards are
never pickled (loaded with allow_pickle=False), so a cache folder from elsewhere cannot run
code. A shard that cannot be read is skipped with a
warning: the cache only ever costs a recomputation, never a failed run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fuserank.atomic import write_atomic

logger = logging.getLogger(__name__)

SHARD_SUFFIX = ".npz"


def content_key(*parts: str | bytes) -> str:
    """A sha256 hex digest of `parts`.

    Each part is length-prefixed, so ("ab", "c") and ("a", "bc") get different keys. A str part
    is hashed as its UTF-8 bytes, so content_key("x") == content_key(b"x").

    Returns:
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class EmbeddingCache:
    """Vectors of a fixed width `dim`, stored under string keys in `folder`.

    Shards are read lazily, once, on the first `get`/`put`, and merged into an in-memory dict;
    shards written later by another process are not seen by this instance.

    Args:
        folder: directory holding the shard files; created when missing.
        dim: the vector width d every shard must have; shards of another width are skipped.
    """

    def __init__(self, folder: Path, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.folder = Path(folder)
        self.dim = int(dim)
        self._vectors: dict[str, np.ndarray] | None = None

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Look up `keys`.

        Returns:
            vectors: float32 array (len(keys), dim), zero rows where a key is missing.
            found: bool array (len(keys),), True where the key was in the cache.
        """
        store = self._load()
        vectors = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        for row, key in enumerate(keys):
            vector = store.get(key)
            if vector is not None:
                vectors[row] = vector
                found[row] = True
        return vectors, found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store `vectors` (shape (len(keys), dim)) under `keys` as one new shard file.

        Call it after every chunk of work, so an interrupted run keeps what it has done.
        """
        keys = [str(k) for k in keys]
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors must have shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if not keys:
            return
        store = self._load()
        # time first so that sorting file names replays shards in the order they were written
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        write_atomic(self.folder / name, lambda temp: _write_shard(temp, keys, vectors))
        for key, vector in zip(keys, vectors.copy()):
            store[key] = vector

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: object) -> bool:
        return key in self._load()

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            shards = sorted(self.folder.glob(f"*{SHARD_SUFFIX}")) if self.folder.is_dir() else []
            for shard in shards:
                loaded = self._read_shard(shard)
                if loaded is not None:
                    self._vectors.update(zip(*loaded))
        return self._vectors

    def _read_shard(self, path: Path) -> tuple[list[str], np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = data["keys"]
                vectors = data["vectors"]
            if keys.dtype.kind != "U" or keys.ndim != 1:
                raise ValueError(f"keys have dtype {keys.dtype} and shape {keys.shape}")
            if vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dim):
                raise ValueError(f"vectors have dtype {vectors.dtype} and shape {vectors.shape}, want (n, {self.dim})")
        except Exception as error:  # any unreadable shard only costs a recomputation
            logger.warning("skipping unreadable embedding cache shard %s: %s", path, error)
            return None
        return keys.tolist(), vectors


def fill_from_cache(
    cache: EmbeddingCache | None, rows_of_key: Mapping[str, Sequence[int]], out: np.ndarray, ok: np.ndarray
) -> list[str]:
    """Copy the cached vectors of `rows_of_key` into their rows of `out`, and mark those rows in `ok`.

    Args:
        cache: where to look; None caches nothing, so every key is a miss.
        rows_of_key: key -> the rows of `out` that vector belongs to (media.group_media_files).
        out: float array (n, cache.dim), written in place.
        ok: bool array (n,), set True in place on the rows filled.

    Returns:
        The keys not in the cache (still to compute), in the order of `rows_of_key`.
    """
    keys = list(rows_of_key)
    if cache is None or not keys:
        return keys
    cached, found = cache.get(keys)
    for key, vector, hit in zip(keys, cached, found):
        if hit:
            out[rows_of_key[key]] = vector
            ok[rows_of_key[key]] = True
    return [key for key, hit in zip(keys, found) if not hit]


class CacheWriter:
    """Collects computed vectors and puts them into a cache as one shard every `chunk_rows` rows.

    Writing as the work goes means an interrupted run keeps all but its last partial chunk;
    `flush` writes that one. With cache None, vectors are dropped.

    Args:
        cache: the cache to fill, or None.
        chunk_rows: rows per shard (a shard is written once at least this many are pending).
    """

    def __init__(self, cache: EmbeddingCache | None, chunk_rows: int) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.cache = cache
        self.chunk_rows = int(chunk_rows)
        self._keys: list[str] = []
        self._vectors: list[np.ndarray] = []

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Queue `vectors` (len(keys), dim), or one vector (dim,) for a single key."""
        if self.cache is None:
            return
        self._keys.extend(keys)
        self._vectors.append(np.asarray(vectors, dtype=np.float32).reshape(len(keys), -1))
        if len(self._keys) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Put what is pending into the cache as one shard (nothing when nothing is)."""
        if self.cache is not None and self._keys:
            self.cache.put(self._keys, np.concatenate(self._vectors))
        self._keys, self._vectors = [], []


def _write_shard(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    # a file handle, because np.savez would append ".npz" to the temporary file's name
    with path.open("wb") as handle:
        np.savez(handle, keys=np.array(keys, dtype=str), vectors=vectors)
