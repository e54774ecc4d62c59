"""Feature frames that stay on the Dask workers, one polars frame per partition of the users.

A cut-off's candidates, features and labels are built on the workers by the local chain
(`pipeline.stage_frame` on each partition's users, `cutoff_parts`) and kept there as futures;
the driver holds only their row counts. Stage 1 can be fitted there too (`FitOnWorker`), on one
worker from the history sent to the cluster, and copied to the others. Whatever reads the
frames (the ranker's training partitions, validation and test scoring) runs as tasks beside
them, and only small results come back (`gather_parts`, `scores_on_workers`); what is per user
and large (metric rows, top-k lists) stays there as a `HeldFrame`, read a column or a
partition at a time.

Every partition holds a contiguous run of the users in the order of `query_key`, the same runs
at every cut-off of a run (`user_bounds`): a lambdarank query `user#j` then lies in one
partition, and the partitions' rows sorted by query, concatenated in partition order, are the
rows of the whole frame sorted by query, as a local fit orders them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.data.cutoffs import Cutoff
from fuserank.evaluation.scoring import CutoffScores, Scored, cutoff_scores
from fuserank.pipeline import cutoff_catalog, fit_stage, stage_frame


def query_key(user: str) -> str:
    """The user's place in the order of its queries `user#j` (protocol.QUERY): a user id sorts
    before another exactly when each of its queries sorts before each of the other's."""
    return user + "#"


def user_bounds(users: Sequence[str], n_parts: int) -> list[str]:
    """Keys (`query_key`) of the first user of each of at most `n_parts` runs of about equal size.

    Args:
        users: every user any cut-off of the run may query (any order, repeats allowed).
        n_parts: wanted runs (>= 1).

    Returns:
        Sorted keys, the first the smallest; `split_users` cuts any cut-off's users at them.
    """
    return bounds_of_keys(sorted({query_key(u) for u in users}), n_parts)


def bounds_of_keys(keys: Sequence[str], n_parts: int) -> list[str]:
    """`user_bounds` of users given by their sorted, distinct `query_key`s."""
    if not keys:
        return []
    starts = np.linspace(0, len(keys), max(1, min(n_parts, len(keys))) + 1).round().astype(int)[:-1]
    return [keys[s] for s in np.unique(starts)]


def split_users(users: Sequence[str], bounds: Sequence[str]) -> list[list[str]]:
    """`users` cut at `bounds` (`user_bounds`): one list per bound, each sorted by `query_key`,
    possibly empty, so that partition p of every cut-off covers the same run of users."""
    parts: list[list[str]] = [[] for _ in bounds]
    for user in sorted(users, key=query_key):
        parts[max(0, bisect_right(bounds, query_key(user)) - 1)].append(user)
    return parts


@dataclass(frozen=True)
class Parts:
    """A frame kept on the workers.

    Attributes:
        futures: one `distributed.Future` per partition, each of a polars frame holding whole
            users, in partition order; None for a partition without users. `heal` replaces
            those lost with a worker, in place.
        rows: (n_partitions,) rows of each partition.
        rebuild: given partition indices, new futures of those partitions, sent or computed
            again from what the driver holds; None where the frame cannot be rebuilt.
    """

    futures: list[Any]
    rows: list[int]
    rebuild: Callable[[list[int]], list[Any]] | None = field(default=None, compare=False, repr=False)

    @property
    def held(self) -> list[Any]:
        """The futures of the partitions that hold users, in partition order."""
        return [f for f in self.futures if f is not None]

    @property
    def height(self) -> int:
        return int(sum(self.rows))


def not_held(futures: Sequence[Any]) -> list[int]:
    """Indices of the futures whose data no worker holds now, as the scheduler knows it.

    A future lost with its worker may still read "finished" here for a while, then "pending"
    while Dask tries to compute it again, and "cancelled" only once Dask finds that it cannot
    (its scattered inputs were released once it was built), so the scheduler is asked instead.
    """
    if not futures:
        return []
    held = futures[0].client.run_on_scheduler(_held_keys, [f.key for f in futures])
    return [i for i, f in enumerate(futures) if not held[f.key]]


def _held_keys(keys: list[Any], dask_scheduler: Any = None) -> dict[Any, bool]:
    # On the scheduler, by key: Client.who_has refuses a cancelled future instead of answering.
    tasks = dask_scheduler.tasks
    return {k: bool(k in tasks and tasks[k].who_has) for k in keys}


def heal(parts: Parts) -> list[int]:
    """Put new futures (`parts.rebuild`) in place of the partitions no worker holds (`not_held`):
    rebuilding one that Dask would have computed again costs time, not correctness, since
    rebuilding is deterministic. Meant for frames already computed (`cutoff_parts` returns those).

    Returns:
        The rebuilt partitions' indices (empty when none was lost).

    Raises:
        RuntimeError: a partition is lost and `parts` has no `rebuild`.
    """
    held = [p for p, f in enumerate(parts.futures) if f is not None]
    lost = [held[i] for i in not_held([parts.futures[p] for p in held])]
    if lost and parts.rebuild is None:
        raise RuntimeError(f"partitions {lost} of a frame on the workers were lost with a worker and cannot be "
                           "rebuilt")
    if lost:
        for p, future in zip(lost, parts.rebuild(lost), strict=True):
            parts.futures[p] = future
    return lost


def _height(frame: pl.DataFrame) -> int:
    return frame.height


def _cutoff_part(config: Any, stage: Any, name: str, history: pl.DataFrame, targets: pl.DataFrame,
                 ref_times: pl.DataFrame, llm: Any, query: str | None) -> tuple[pl.DataFrame, list[str]]:
    frame, names, _ = stage_frame(config, stage, Cutoff(name, history, targets, ref_times), llm)
    if query is not None:  # one lambdarank query per (user, cut-off)
        frame = frame.with_columns(pl.concat_str(pl.col(schema.USER_ID), pl.lit(query)).alias(schema.QUERY))
    return frame, names


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _of_users(frame: pl.DataFrame, users: list[str]) -> pl.DataFrame:
    return frame.filter(pl.col(schema.USER_ID).is_in(pl.Series(users, dtype=pl.String).implode()))


@dataclass(frozen=True)
class FitOnWorker:
    """Stage 1 for `cutoff_parts` to fit on a worker from the cut-off's history sent there
    (`pipeline.fit_stage` over `pipeline.cutoff_catalog`), so that the driver never holds the
    fit or its result.

    Attributes:
        item_ids: every catalog item, in the row order of `content`.
        content: content embeddings of the catalog (items-sized, sent with the task).
    """

    item_ids: Sequence[str]
    content: Mapping[str, Any]


@dataclass(frozen=True)
class ClusterCutoff:
    """A cut-off as the feature tasks on the cluster read it (`frames_on_workers`).

    Attributes:
        name, absent: as in `data.cutoffs.Cutoff`.
        history: a `distributed.Future` of the cut-off's whole history.
        shared_history: its shared history, a frame still on the driver (sent only when stage
            1 is fitted on a worker), a Future, or None.
        targets, ref_times: by partition of the users, the partition's rows, each a frame or a
            Future; None for a partition without users.
    """

    name: str
    history: Any
    shared_history: Any
    absent: frozenset[str]
    targets: list[Any]
    ref_times: list[Any]


def send_cutoff(client: Any, cutoff: Cutoff, user_parts: Sequence[list[str]]) -> ClusterCutoff:
    """A driver's `cutoff` for `frames_on_workers`: its history sent once (`send_in_slices`),
    each partition's targets and reference times to go with its task."""
    return ClusterCutoff(cutoff.name, send_in_slices(client, cutoff.history), cutoff.shared_history, cutoff.absent,
                         [_of_users(cutoff.targets, users) if users else None for users in user_parts],
                         [_of_users(cutoff.ref_times, users) if users else None for users in user_parts])


def cutoff_parts(client: Any, config: Any, stage: Any, cutoff: Cutoff, user_parts: Sequence[list[str]],
                 llm: Any = None, query: str | None = None) -> tuple[Parts, list[str]]:
    """`frames_on_workers` of a cut-off held on the driver, cut at `user_parts`; a partition lost
    with a worker is rebuilt from the driver's copy (`Parts.rebuild`).

    Args:
        client: a connected `distributed.Client`.
        config, llm: as in `pipeline.stage_frame` (an `ExperimentConfig`).
        stage: stage 1 fitted on `cutoff.history` (sent from the driver), or a `FitOnWorker`.
        cutoff: the cut-off (its history, shared history, absent items, targets and reference
            times are read).
        user_parts: the cut-off's users by partition (`split_users`).
        query: when given, a schema.QUERY column `user_id + query` (e.g. "#1").

    Returns:
        (the parts, the feature names).
    """
    if not any(user_parts):
        raise ValueError(f"{cutoff.name}: no users to build features for")
    user_parts = [list(users) for users in user_parts]
    rebuild = rebuilder(client, config, stage, lambda lost: send_cutoff(client, cutoff, [user_parts[p] for p in lost]),
                        llm, query)
    return frames_on_workers(client, config, stage, send_cutoff(client, cutoff, user_parts), llm, query, rebuild)


def rebuilder(client: Any, config: Any, stage: Any, cutoff_of: Callable[[list[int]], ClusterCutoff], llm: Any = None,
              query: str | None = None) -> Callable[[list[int]], list[Any]]:
    """A `Parts.rebuild` for `frames_on_workers`: the lost partitions' frames built again
    (stage 1 fitted again when it is a `FitOnWorker`) from `cutoff_of(lost)`, the cut-off on
    the cluster for those partitions alone, in that order."""
    def rebuild(lost: list[int]) -> list[Any]:
        again = _submit_parts(client, config, stage, cutoff_of(lost), llm, query)
        return [client.submit(_first, pair, pure=False) for pair in again]

    return rebuild


def frames_on_workers(client: Any, config: Any, stage: Any, cutoff: ClusterCutoff, llm: Any = None,
                      query: str | None = None,
                      rebuild: Callable[[list[int]], list[Any]] | None = None) -> tuple[Parts, list[str]]:
    """`pipeline.stage_frame` (candidates, features as of the reference times, labels) per
    partition of the cut-off's users, on the workers; the frames stay there.

    Stage 1 (its FAISS index included) and the config go to every worker once, and each task
    reads the history where it lies. The inputs are released once the frames are built, so
    Dask cannot compute a partition lost with its worker again; `rebuild` (kept as
    `Parts.rebuild`) gives new futures of the lost ones.

    Args:
        client, config, llm, query: as in `cutoff_parts`.
        stage: stage 1 already fitted (scattered from here), or a `FitOnWorker` (fitted on a
            worker, then copied to every worker).
        cutoff: the cut-off on the cluster (`send_cutoff`, `distributed_cutoffs.cluster_cutoff`).
        rebuild: given partition indices, new futures of their frames; None: cannot be rebuilt.

    Returns:
        (the parts, the feature names).
    """
    if all(t is None for t in cutoff.targets):
        raise ValueError(f"{cutoff.name}: no users to build features for")
    pairs = _submit_parts(client, config, stage, cutoff, llm, query)
    futures = [None if p is None else client.submit(_first, p, pure=False) for p in pairs]
    names = client.submit(_second, next(p for p in pairs if p is not None), pure=False).result()
    del pairs  # the frames live on in `futures`
    return _counted(client, Parts(futures, [0] * len(futures), rebuild)), list(names)


def _submit_parts(client: Any, config: Any, stage: Any, cutoff: ClusterCutoff, llm: Any,
                  query: str | None) -> list[Any]:
    """One `_cutoff_part` task per partition with users (None for one without)."""
    config_f, llm_f = (client.scatter(a, broadcast=True, hash=False) for a in (config, llm))
    if isinstance(stage, FitOnWorker):
        stage_f = _fit_on_worker(client, config_f, stage, cutoff)
    else:
        stage_f = client.scatter(stage, broadcast=True, hash=False)
    return [None if targets is None else
            client.submit(_cutoff_part, config_f, stage_f, cutoff.name, cutoff.history, targets, ref_times, llm_f,
                          query, pure=False)
            for targets, ref_times in zip(cutoff.targets, cutoff.ref_times, strict=True)]


def _fit_on_worker(client: Any, config_f: Any, fit: FitOnWorker, cutoff: ClusterCutoff) -> Any:
    """Stage 1 of `cutoff` fitted on a worker from its history and copied to every worker."""
    shared_f = cutoff.shared_history
    if isinstance(shared_f, pl.DataFrame):
        shared_f = send_in_slices(client, shared_f)
    catalog_f, content_f = kept(client, list(cutoff_catalog(cutoff.absent, fit.item_ids))), kept(client, dict(fit.content))
    stage_f = client.submit(fit_stage, config_f, cutoff.history, catalog_f, content_f, shared_f, pure=False)
    client.replicate([stage_f])  # waits for the fit; the feature tasks then find it on every worker
    return stage_f


def send_in_slices(client: Any, frame: pl.DataFrame, rows: int = 500_000) -> Any:
    """`frame` as one future on the cluster, sent `rows` rows at a time and put together on a
    worker, so the driver never holds a serialised copy of more than one slice (a broadcast
    would serialise the whole); tasks elsewhere fetch it from there, worker to worker."""
    starts = range(0, max(frame.height, 1), rows)
    pieces = [client.scatter(frame.slice(start, rows), hash=False) for start in starts]
    return client.submit(_concat, pieces, pure=False)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames, how="vertical", rechunk=True)


def _counted(client: Any, parts: Parts) -> Parts:
    rows = iter(client.gather([client.submit(_height, f, pure=False) for f in parts.held]))
    return Parts(parts.futures, [0 if f is None else int(next(rows)) for f in parts.futures], parts.rebuild)


def gather_parts(client: Any, func: Callable[..., Any], parts: Parts, *shared: Any,
                 per_part: Sequence[Sequence[Any]] | None = None) -> list[Any]:
    """`func(frame, *per_part[p], *shared)` on every partition p that holds users; the (small)
    results, in partition order, come back to the driver. Partitions lost with a worker before
    the call are rebuilt first (`heal`)."""
    return client.gather(submit_parts(client, func, parts, *shared, per_part=per_part))


def submit_parts(client: Any, func: Callable[..., Any], parts: Parts, *shared: Any,
                 per_part: Sequence[Sequence[Any]] | None = None) -> list[Any]:
    """`gather_parts` with the results left on the workers: a future each, in partition order."""
    heal(parts)
    args = [client.scatter(a, broadcast=True, hash=False) for a in shared]
    own = per_part or [()] * len(parts.futures)
    return [client.submit(func, f, *mine, *args, pure=False)
            for f, mine in zip(parts.futures, own, strict=True) if f is not None]


@dataclass(frozen=True)
class HeldFrame:
    """A frame left on the workers in partitions of the users, in order (the test's top-k lists
    and every system's per-user metric rows, `scores_on_workers`): read a partition at a time
    (`frames`) or a few columns at a time (`select`; `columns` and `frame[column]` as a polars
    frame has them, so `metrics.summarise` reads it column by column), never whole."""

    futures: list[Any]
    columns: list[str]

    def frames(self) -> Iterator[pl.DataFrame]:
        for future in self.futures:
            yield future.result()

    def select(self, columns: Sequence[str]) -> pl.DataFrame:
        """These columns of every partition, in order, as one frame (one chunk)."""
        if not self.futures:
            raise ValueError("a frame held on no partition")
        client = self.futures[0].client
        parts = client.gather([client.submit(_select, f, list(columns), pure=False) for f in self.futures])
        return pl.concat(parts, how="vertical", rechunk=True)

    def __getitem__(self, column: str) -> pl.Series:
        return self.select([column])[column]


def held(client: Any, futures: list[Any]) -> HeldFrame:
    """The frames of `futures` (one per partition, in order) as a `HeldFrame`."""
    return HeldFrame(futures, client.submit(_names, futures[0], pure=False).result())


def held_scored(client: Any, futures: list[Any]) -> Scored:
    """Per-partition `scoring.Scored` futures as one `Scored` whose per-user rows stay on the
    workers (a `HeldFrame`) and whose covered items (items-sized) come here."""
    covered = client.gather([client.submit(_covered, f, pure=False) for f in futures])
    merged = {k: sorted({item for c in covered for item in c[k]}) for k in covered[0]}
    return Scored(held(client, [client.submit(_per_user, f, pure=False) for f in futures]), merged)


def _select(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    return frame.select(columns)


def _names(frame: pl.DataFrame) -> list[str]:
    return frame.columns


def _covered(scored: Scored) -> dict[int, list[str]]:
    return scored.covered


def _per_user(scored: Scored) -> pl.DataFrame:
    return scored.per_user


def cutoff_scores_dask(client: Any, parts: Parts, user_parts: Sequence[list[str]], targets: pl.DataFrame,
                       ranker: Any, ks: Sequence[int], n: int, keep: int,
                       new_item_slots: Sequence[int] = ()) -> CutoffScores:
    """`scores_on_workers` of a cut-off whose targets the driver holds, cut at `user_parts`."""
    return scores_on_workers(client, parts, [_of_users(targets, users) for users in user_parts], ranker, ks, n, keep,
                             new_item_slots)


def scores_on_workers(client: Any, parts: Parts, targets: Sequence[Any], ranker: Any, ks: Sequence[int], n: int,
                      keep: int, new_item_slots: Sequence[int] = ()) -> CutoffScores:
    """`scoring.cutoff_scores` on every partition where it lies (the ranker sent once, each task
    its partition's targets); the per-user stage-1 counts and the covered items come back, and
    the per-user metric rows and the `keep` kept lists stay on the workers (`HeldFrame`s, in
    user order).

    Args:
        parts: a labelled cut-off frame (`frames_on_workers`).
        targets: by partition, the cut-off's targets of its users (a frame or a Future).
        ranker, ks, n, keep, new_item_slots: as in `scoring.cutoff_scores`.
    """
    scores = submit_parts(client, partial(cutoff_scores, new_item_slots=tuple(new_item_slots)), parts, ranker,
                          tuple(ks), n, keep, per_part=[(t,) for t in targets])
    stage1 = client.gather([client.submit(_field, f, "stage1", pure=False) for f in scores])
    lists = held(client, [client.submit(_lists, f, pure=False) for f in scores]) if keep else None
    ranker_scored, retrieval = (held_scored(client, [client.submit(_field, f, name, pure=False) for f in scores])
                                for name in ("ranker", "retrieval"))
    return CutoffScores(lists, ranker_scored, retrieval,
                        pl.concat(stage1).sort(schema.USER_ID, maintain_order=True).rechunk())


def _field(value: Any, name: str) -> Any:
    return getattr(value, name)


def _lists(scores: CutoffScores) -> pl.DataFrame:
    return scores.ranked.sort(schema.USER_ID, schema.RANK, maintain_order=True)


def collect(client: Any, parts: Parts) -> pl.DataFrame:
    """The whole frame on the driver, partitions in order: for tests and small data only, since
    it is what the distributed path exists to avoid."""
    heal(parts)
    return pl.concat(client.gather(parts.held), how="vertical")


def kept(client: Any, value: Any) -> Any:
    """`value` as a future on the cluster that a lost worker cannot take with it.

    A scattered value lives only in workers' memory (and Dask's memory manager may drop a
    broadcast copy again), so a worker that dies can take the last copy, and with it everything
    that would have to be computed again from it. A task's input is kept by the scheduler:
    each worker that needs the value computes it again from there.
    """
    return client.submit(_value, value, pure=False)


def _value(value: Any) -> Any:
    return value
