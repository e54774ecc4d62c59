"""`fuserank export` on a Dask cluster: every batch of users is scored on a worker.

The local export (jobs/export.py) builds one batch of users at a time with
`arms.export_batches` and streams it into the lists file. Here each batch is one Dask task:
the worker runs the same `export_batches` on its batch alone (candidates, features, the
booster, top-K, the list guarantees) and sends back only the batch's ranked lists, K rows per
user. The driver writes them in batch order, so the files are byte for byte those of the local
export.

What is sent where: the arm servers and the popularity pool are scattered to every worker once;
an arm whose lists were built on the cluster (export.ArmLists: stage 1 with its FAISS index,
the booster and the history they read, fitted and held on a worker) is named by its future,
which each worker fetches once. Each task then carries its batch's assignments and that batch's
slice of the seen items. At most `ahead` batches are in
flight, so the driver holds a bounded number of finished lists whatever the number of users.

`export_parts` goes further, for interactions that the workers read into user partitions in
user_id order (`distributed_data.read_user_parts(by_user=True)`): each partition assigns its
users to arms, and each batch's lists are built from the partitions that hold its users and
their seen items, so the driver holds no user list, no assignment and no history. A batch that
spans two partitions is built as two pieces, put together on the driver before it is written:
the row groups, and so the files, are those of the local export.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.data.split import sort_interactions
from fuserank.jobs.arms import ArmPlan, ExportError, Server, arm_users, assign_arms, export_batches, pool_of_counts, \
    seen_lookup
from fuserank.jobs.distributed import n_workers
from fuserank.jobs.distributed_data import UserParts
from fuserank.jobs.distributed_frames import kept
from fuserank.retrieval.popularity import item_counts
from fuserank.schema import ARM, COLD_START, ITEM_ID, USER_ID


def _export_batch(batch: pl.DataFrame, batch_seen: pl.DataFrame, shared: tuple,
                  held: Mapping[str, Any]) -> pl.DataFrame:
    """The lists of one batch, as the local loop builds them (runs on a worker); `held`: the
    `lists` callables that were built on the cluster, by arm (Dask passes them in place of
    their futures)."""
    servers, pool, k, exclude_seen = shared
    servers = {arm: replace(server, lists=held[arm]) if arm in held else server for arm, server in servers.items()}
    return next(export_batches(batch, servers, batch_seen, pool, k, exclude_seen, max(batch.height, 1)))


def export_batches_dask(
    client: Any,
    assignments: pl.DataFrame,
    servers: Mapping[str, Server],
    seen: pl.DataFrame,
    pool: pl.DataFrame,
    k: int,
    exclude_seen: bool,
    batch_users: int,
    ahead: int = 0,
) -> Iterator[pl.DataFrame]:
    """`arms.export_batches` with every batch built on the cluster; same frames, same order.

    Args:
        client: a connected `distributed.Client` (jobs.distributed.dask_client).
        assignments, servers, seen, pool, k, exclude_seen, batch_users: as in `arms.export_batches`;
            a server's `lists` may also be a Future of the callable, held on the cluster.
        ahead: batches in flight at once; 0 means two per worker.

    Yields:
        schema.EXPORT_LIST frames, one per batch of `batch_users` users in user_id order.
    """
    from distributed import Future  # dask: an optional dependency

    ahead = ahead or 2 * n_workers(client)
    # Lists built on the cluster (export.ArmLists) stay there: each task names their futures.
    held = {arm: server.lists for arm, server in servers.items() if isinstance(server.lists, Future)}
    servers = {arm: replace(server, lists=None) if arm in held else server for arm, server in servers.items()}
    # Scattered once to every worker: stage 1, boosters and pools are the same for every batch.
    (shared,) = client.scatter([(servers, pool, k, exclude_seen)], broadcast=True)
    seen_of = seen_lookup(seen)
    pending: deque = deque()
    for start in range(0, assignments.height, batch_users):
        batch = assignments.slice(start, batch_users)
        batch_seen = seen_of(batch[USER_ID])
        # pure=False: a batch is never deduplicated with another task; retries rerun it whole.
        pending.append(client.submit(_export_batch, batch, batch_seen, shared, held, pure=False))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def whole_history(client: Any, parts: UserParts) -> Any:
    """A future of every partition's interactions put together on one worker and sorted as the
    local load sorts them (`data.split.sort_interactions`): what stage 1 is fitted on."""
    return client.submit(_whole, parts.futures, pure=False)


def _whole(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return sort_interactions(pl.concat(frames, how="vertical", rechunk=True).select(list(schema.INTERACTIONS)))


def pool_from_parts(client: Any, parts: UserParts, item_ids: Sequence[str]) -> pl.DataFrame:
    """`arms.popularity_pool` of the whole history, from each partition's item counts."""
    items = kept(client, list(item_ids))
    counts = client.gather([client.submit(item_counts, f, items, pure=False) for f in parts.futures])
    return pool_of_counts(np.sum(counts, axis=0), item_ids)


@dataclass
class PartsExport:
    """An export built from user partitions (`export_parts`), for `export.write_export`.

    Attributes:
        lists: schema.EXPORT_LIST frames, one per batch of served users in user_id order.
        assignments: schema.ASSIGNMENTS frames, one per batch of users in user_id order.
        users: (users, cold-start users) per arm.
        batches: how many frames `lists` yields.
    """

    lists: Iterator[pl.DataFrame]
    assignments: Iterator[pl.DataFrame]
    users: dict[str, tuple[int, int]]
    batches: int


def export_parts(client: Any, parts: UserParts, plans: Sequence[ArmPlan], salt: str, servers: Mapping[str, Server],
                 pool: pl.DataFrame, k: int, exclude_seen: bool, batch_users: int, ahead: int = 0) -> PartsExport:
    """The export of every user of `parts`, each batch built on a worker (module docstring).

    Args:
        client: a connected `distributed.Client`.
        parts: the interactions in user partitions, in user_id order (read `by_user`).
        plans, salt: the arms (`arms.plan_arms`) and the experiment's salt.
        servers, pool, k, exclude_seen, batch_users: as in `arms.export_batches`; a server's
            `lists` may be a Future of the callable, held on the cluster (export.ArmLists).
        ahead: batches in flight at once; 0 means two per worker.
    """
    from distributed import Future  # dask: an optional dependency

    ahead = ahead or 2 * n_workers(client)
    held = {arm: server.lists for arm, server in servers.items() if isinstance(server.lists, Future)}
    servers = {arm: replace(server, lists=None) if arm in held else server for arm, server in servers.items()}
    shared = kept(client, (servers, pool, k, exclude_seen))
    arms = sorted(servers)
    assigned = [client.submit(_assign, f, list(plans), salt, pure=False) for f in parts.futures]
    served = [client.submit(_served, a, arms, pure=False) for a in assigned]
    facts = client.gather([client.submit(_facts, a, arms, pure=False) for a in assigned])
    _check_order(facts)
    users: dict[str, tuple[int, int]] = {}
    for fact in facts:
        for arm, (n, cold) in fact.per_arm.items():
            before = users.get(arm, (0, 0))
            users[arm] = (before[0] + n, before[1] + cold)

    def lists_piece(p: int, lo: int, hi: int) -> Any:
        # pure=False: a piece is never deduplicated with another task; retries rerun it whole.
        return client.submit(_export_piece, served[p], parts.futures[p], lo, hi, shared, held, pure=False)

    def assignments_piece(p: int, lo: int, hi: int) -> Any:
        return client.submit(_slice, assigned[p], lo, hi, pure=False)

    list_pieces = batch_pieces([f.served for f in facts], batch_users)
    return PartsExport(streamed(list_pieces, lists_piece, ahead),
                       streamed(batch_pieces([f.users for f in facts], batch_users), assignments_piece, ahead),
                       users, len(list_pieces))


@dataclass(frozen=True)
class _Facts:
    """What the driver learns of one partition's assignments."""

    first: str | None
    last: str | None
    users: int
    served: int
    per_arm: dict[str, tuple[int, int]]


def _assign(frame: pl.DataFrame, plans: list[ArmPlan], salt: str) -> pl.DataFrame:
    """The partition's users' schema.ASSIGNMENTS rows, sorted by user_id (all known: warm)."""
    users = frame[USER_ID].unique().to_list()
    return assign_arms(users, plans, salt).with_columns(pl.lit(False).alias(COLD_START))


def _served(assigned: pl.DataFrame, arms: list[str]) -> pl.DataFrame:
    return assigned.filter(pl.col(ARM).is_in(arms))


def _facts(assigned: pl.DataFrame, arms: list[str]) -> _Facts:
    ids = assigned[USER_ID]
    served = int(assigned[ARM].is_in(arms).sum())
    return _Facts(ids.first(), ids.last(), assigned.height, served, arm_users(assigned))


def _check_order(facts: Sequence[_Facts]) -> None:
    """Partitions must follow each other in user_id order for their batches to follow."""
    filled = [f for f in facts if f.users]
    for before, after in pairwise(filled):
        if not before.last < after.first:
            raise ExportError(f"user partitions overlap in user_id order ({before.last!r} before "
                              f"{after.first!r}): read them with read_user_parts(by_user=True)")


def _slice(frame: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
    return frame.slice(lo, hi - lo)


def _export_piece(served: pl.DataFrame, frame: pl.DataFrame, lo: int, hi: int, shared: tuple,
                  held: Mapping[str, Any]) -> pl.DataFrame:
    """The lists of served users lo..hi-1 of a partition (`_export_batch`), their seen items
    found by bisection in the partition's rows, which are sorted by user."""
    batch = served.slice(lo, hi - lo)
    ids = frame[USER_ID]
    start = ids.search_sorted(batch[USER_ID].first(), side="left")
    end = ids.search_sorted(batch[USER_ID].last(), side="right")
    return _export_batch(batch, frame.slice(start, end - start).select(USER_ID, ITEM_ID), shared, held)


def batch_pieces(sizes: Sequence[int], batch: int) -> list[list[tuple[int, int, int]]]:
    """The batches of `batch` rows over partitions of `sizes` rows laid end to end: for each
    batch, its pieces (partition, first row, end row) in order."""
    batches: list[list[tuple[int, int, int]]] = []
    offset = 0
    for p, n in enumerate(sizes):
        lo = 0
        while lo < n:
            b = (offset + lo) // batch
            hi = min(n, (b + 1) * batch - offset)
            if b == len(batches):
                batches.append([])
            batches[b].append((p, lo, hi))
            lo = hi
        offset += n
    return batches


def streamed(pieces: Sequence[Sequence[tuple[int, int, int]]], submit: Callable[[int, int, int], Any],
             ahead: int) -> Iterator[pl.DataFrame]:
    """Each batch's pieces computed by `submit` (a future each), put together in order; at
    most `ahead` batches in flight. Nothing is submitted before the first frame is asked for."""
    pending: deque = deque()
    for batch in pieces:
        pending.append([submit(*piece) for piece in batch])
        if len(pending) >= ahead:
            yield _joined(pending.popleft())
    while pending:
        yield _joined(pending.popleft())


def _joined(futures: list[Any]) -> pl.DataFrame:
    frames = [f.result() for f in futures]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=True)
