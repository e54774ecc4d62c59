"""Interactions read by the Dask workers and kept there in user partitions, so that the driver
never holds them: it reads the file's metadata and a sample of the user ids, nothing more.

A Parquet file is read in runs of row groups, one task each (a CSV or TSV file by one task).
Each task checks its rows as `data.validate.validate_interactions` does and names the file's
row in an error. The rows then move worker to worker into partitions that each hold a
contiguous run of users in `query_key` order (`distributed_frames.user_bounds`' contract;
in user_id order with `by_user`, as export writes them),
where repeated events are looked for (a user's rows all lie in one partition) and the rows are
sorted as `data.split.sort_interactions` sorts them. Within a user the rows keep the file's
order before that stable sort, so a partition is exactly the sorted interactions of its users
that the local load gives.

The partitions' bounds come from a sample of each read task's user ids (at most `sample`
each); when every task has no more users than that, they are the exact `user_bounds` of all
users, and otherwise only the partitions' sizes depend on the sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.data.catalog import read_table
from fuserank.data.split import sort_interactions
from fuserank.data.validate import DataError, check_duplicate_events, check_known_items, conform_interactions
from fuserank.jobs.distributed_frames import bounds_of_keys, kept

_FILE_ROW = "_file_row"
_PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class UserParts:
    """Interactions kept on the workers, one partition per run of users.

    Attributes:
        bounds: `query_key` of each partition's first user (`distributed_frames.split_users`
            cuts any list of users at them); the user_id itself when read `by_user`.
        futures: one `distributed.Future` per partition, of its users' schema.INTERACTIONS rows
            sorted as `data.split.sort_interactions` sorts them.
        rows: rows of each partition; users: users of each partition.
        digest: when read with `digest`, the sha256 of the interactions' CSV form in the file's
            order (`train_evaluate.frame_digest` of the local load), else None.
    """

    bounds: list[str]
    futures: list[Any]
    rows: list[int]
    users: list[int]
    digest: str | None = None


def read_user_parts(client: Any, path: Path, item_ids: Sequence[str], n_parts: int,
                    chunk_rows: int = 1_000_000, sample: int = 1024, by_user: bool = False,
                    digest: bool = False) -> UserParts:
    """The interactions of `path` read, checked and cut into `n_parts` user partitions on the
    workers of `client` (see the module docstring).

    Args:
        client: a connected `distributed.Client`.
        path: a Parquet, CSV or TSV interactions table (schema.INTERACTIONS), as
            `data.catalog.load_catalog` reads it.
        item_ids: the catalog's item ids (every interaction must name one).
        n_parts: wanted partitions (fewer when there are fewer users).
        chunk_rows: rows a read task takes at most (whole row groups; at least one).
        sample: user ids a read task reports for the bounds.
        by_user: partitions in user_id order rather than `query_key` order (the two differ
            only for ids that extend another id with a character below "#").
        digest: also hash the rows as the local load's data hash does: each read task's rows
            in CSV form reach the driver one task at a time, in the file's order.

    Raises:
        DataError: a problem a read task finds (its first), or the first repeated event of a
            partition; each names the file, the row in the file and the column. With several
            bad rows in different tasks, which one is named is not fixed.
    """
    path = Path(path)
    items_f = kept(client, pl.Series(schema.ITEM_ID, list(item_ids), dtype=pl.String))
    chunks = [client.submit(_read_chunk, str(path), groups, first_row, items_f, pure=False)
              for groups, first_row in _plan_chunks(path, chunk_rows)]
    suffix = "" if by_user else "#"
    hashed = _digest(client, chunks) if digest else None
    samples = client.gather([client.submit(_user_sample, c, sample, suffix, pure=False) for c in chunks])
    bounds = bounds_of_keys(sorted(set().union(*samples)), n_parts)
    split = [client.submit(_split_chunk, c, bounds, suffix, pure=False) for c in chunks]
    del chunks
    futures = [client.submit(_assemble, [client.submit(_piece, s, p, pure=False) for s in split], str(path),
                             pure=False) for p in range(len(bounds))]
    del split
    shapes = client.gather([client.submit(_shape, f, pure=False) for f in futures])
    return UserParts(bounds, futures, [r for r, _ in shapes], [u for _, u in shapes], hashed)


def _digest(client: Any, chunks: list[Any]) -> str:
    """sha256 of the chunks' rows as one CSV (a header, then each chunk's rows in order)."""
    digest = hashlib.sha256()
    for i, chunk in enumerate(chunks):
        digest.update(client.submit(_csv, chunk, i == 0, pure=False).result())
    return digest.hexdigest()


def _csv(frame: pl.DataFrame, header: bool) -> bytes:
    return frame.select(list(schema.INTERACTIONS)).write_csv(include_header=header).encode("utf-8")


def _plan_chunks(path: Path, chunk_rows: int) -> list[tuple[list[int] | None, int]]:
    """(row groups, 1-based file row of the first) of each read task: runs of whole row groups
    of at most `chunk_rows` rows (one group at least) for Parquet, the whole file otherwise."""
    if path.suffix.lower() not in _PARQUET_SUFFIXES:
        return [(None, 1)]
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(str(path), None, None, f"unreadable Parquet file: {err}") from err
    plan: list[tuple[list[int] | None, int]] = []
    groups: list[int] = []
    first_row, rows = 1, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if groups and rows + n > chunk_rows:
            plan.append((groups, first_row))
            groups, first_row, rows = [], first_row + rows, 0
        groups.append(g)
        rows += n
    if groups and rows:
        plan.append((groups, first_row))
    # An empty file is read whole, so that the usual check names it.
    return plan or [(None, 1)]


def _read_chunk(path: str, groups: list[int] | None, first_row: int, item_ids: pl.Series) -> pl.DataFrame:
    """Rows of `groups` (None: the whole file) conformed and checked, with each row's file row."""
    if groups is None:
        raw = read_table(Path(path))
    else:
        import pyarrow.parquet as pq

        raw = pl.from_arrow(pq.ParquetFile(path).read_row_groups(groups))
    try:
        frame = conform_interactions(raw, path)
        check_known_items(frame, item_ids, path)
    except DataError as err:
        if err.row is None:
            raise
        raise DataError(err.file, err.row + first_row - 1, err.column, err.reason) from None
    return frame.with_columns(pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias(_FILE_ROW))


def _keys(users: pl.Series, suffix: str) -> pl.Series:
    return users + suffix  # "#": distributed_frames.query_key, for a whole column


def _user_sample(frame: pl.DataFrame, size: int, suffix: str) -> list[str]:
    """At most `size` of the chunk's user keys, evenly spread in sorted order (all when fewer)."""
    keys = _keys(frame[schema.USER_ID].unique(), suffix).sort()
    if keys.len() <= size:
        return keys.to_list()
    return keys.gather(np.linspace(0, keys.len() - 1, size).round().astype(np.int64)).to_list()


def _split_chunk(frame: pl.DataFrame, bounds: list[str], suffix: str) -> list[pl.DataFrame]:
    """The chunk's rows by partition (bisect of the user's key in `bounds`), in file order."""
    # search_sorted counts in UInt32: widen before subtracting, or a key below the first bound wraps.
    where = pl.Series(bounds, dtype=pl.String).search_sorted(_keys(frame[schema.USER_ID], suffix), side="right").cast(
        pl.Int64) - 1
    # One pass over the rows (partition_by keeps their order), not one filter per partition.
    parts = frame.with_columns(where.clip(lower_bound=0).alias("_part")).partition_by("_part", as_dict=True)
    empty = frame.clear()
    return [parts[(p,)].drop("_part") if (p,) in parts else empty for p in range(len(bounds))]


def _piece(pieces: list[pl.DataFrame], p: int) -> pl.DataFrame:
    return pieces[p]


def _assemble(pieces: list[pl.DataFrame], path: str) -> pl.DataFrame:
    frame = pl.concat(pieces, how="vertical", rechunk=True)
    check_duplicate_events(frame, path, frame[_FILE_ROW])
    return sort_interactions(frame.drop(_FILE_ROW))


def _shape(frame: pl.DataFrame) -> tuple[int, int]:
    return frame.height, frame[schema.USER_ID].n_unique()
