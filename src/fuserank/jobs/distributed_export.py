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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import polars as pl

from fuserank.jobs.arms import Server, export_batches, seen_lookup
from fuserank.jobs.distributed import n_workers
from fuserank.schema import USER_ID


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
