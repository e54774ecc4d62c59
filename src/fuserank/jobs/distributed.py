"""Running fuserank's heavy steps on a Dask cluster: ranker training, encoding and features.

The local path stays the default; everything here is used only when `dask.enabled`. The ranker
trains with data-parallel LightGBM, one LightGBM machine per Dask worker, every machine binning
with the local fit's bins (`jobs/distributed_lightgbm.py`). Each partition holds whole query
groups, since a lambdarank query split over two machines would be two different queries.

The ranker trains from frames kept on the workers (`fit_ranker_parts`, `jobs/distributed_frames.py`):
each partition becomes LightGBM's arrays where it lies, and the driver sees row counts, the
bin sample's rows and one validation sum per round. Distributed LightGBM has no early stopping,
so it trains `n_estimators` rounds and then picks the best iteration on the validation frame
with the same rule as `lightgbm.early_stopping` (stop after `early_stopping_rounds` rounds
without a better NDCG@k). The result is the same `Ranker` the local fit returns, saved in the
same text format.

Workers are separate processes, started with the `spawn` method (Dask's default for
`LocalCluster`), so no worker inherits OpenMP state from the parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import polars as pl

from fuserank import progress
from fuserank.config import DaskConfig, RankerConfig
from fuserank.encoders.base import Embeddings
from fuserank.evaluation.metrics import grouped_ndcg
from fuserank.jobs.distributed_frames import Parts, gather_parts, heal
from fuserank.jobs.distributed_lightgbm import Partition, bin_sample, train_data_parallel
from fuserank.ranking.ranker import Ranker, ScoreBase, _params, _query_groups, sample_negatives, score_base
from fuserank.schema import LABEL, USER_ID


@contextmanager
def dask_client(config: DaskConfig) -> Iterator[Any]:
    """A `distributed.Client` for `config.scheduler`; a LocalCluster is closed on exit.

    A default client already connected in this process (to that address, or any for "local")
    is reused and left open, so one cluster serves encoding, features and the ranker.

    Args:
        config: "local" starts `n_workers` spawned worker processes with `threads_per_worker`
            threads each; anything else is a scheduler address to connect to.

    Yields:
        The connected client.
    """
    import dask
    from distributed import Client, LocalCluster, default_client

    try:
        existing = default_client()
    except ValueError:
        existing = None
    if existing is not None and config.scheduler in ("local", existing.scheduler.address):
        yield existing  # the caller's client (a notebook's, a test's) stays open
    elif config.scheduler == "local":
        # Spawned workers never inherit a parent's OpenMP threads (forked children hang here).
        with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
            cluster = LocalCluster(
                n_workers=config.n_workers,
                threads_per_worker=config.threads_per_worker,
                processes=True,
                dashboard_address=None,
            )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
    else:
        with Client(config.scheduler) as client:
            yield client


def n_workers(client: Any) -> int:
    """Number of workers the client's scheduler knows now."""
    return max(1, len(client.scheduler_info()["workers"]))


def split_groups(sizes: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """Split consecutive query groups into at most `n_parts` parts of about equal row count.

    Args:
        sizes: (n_queries,) int rows of each query, in row order.
        n_parts: wanted number of parts (>= 1).

    Returns:
        Non-empty (k,) int arrays of group sizes, k <= n_parts; concatenated they equal `sizes`,
        so every query lies in exactly one part.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0:
        return []
    ends = np.cumsum(sizes)
    # Cut after the group whose end lies nearest to each equal share of the rows.
    targets = ends[-1] * np.arange(1, n_parts) / n_parts
    after = np.minimum(np.searchsorted(ends, targets, side="left"), ends.size - 1)
    before = np.maximum(after - 1, 0)
    nearest = np.where(np.abs(ends[before] - targets) <= np.abs(ends[after] - targets), before, after)
    cuts = np.unique(nearest + 1)
    cuts = cuts[(cuts > 0) & (cuts < sizes.size)]
    return [part for part in np.split(sizes, cuts) if part.size]


def ndcg_sums_by_iteration(
    booster: Any, x: np.ndarray, y: np.ndarray, sizes: np.ndarray, k: int, init: np.ndarray | None = None
) -> np.ndarray:
    """Sum over queries of NDCG@k (metrics.grouped_ndcg) after each boosting round.

    Args:
        booster: a fitted lambdarank `lightgbm.Booster` with T rounds.
        x: (n_rows, n_features) float32 rows ordered by query; y: (n_rows,) 0/1 labels;
        sizes: (n_queries,) rows per query, every query with a positive label.
        k: cut-off.
        init: (n_rows,) starting scores the trees were fitted on top of (None: 0).

    Returns:
        (T,) float64, entry t the summed NDCG@k of the first t + 1 trees.
    """
    n_rounds = booster.current_iteration()
    query = np.repeat(np.arange(sizes.size), sizes)
    # LightGBM's gain 2^label - 1 is the binary gain of metrics.ndcg_at_k for 0/1 labels.
    relevant = y > 0
    # Lambdarank raw scores add up over trees, so one tree at a time gives every round's scores.
    scores = np.zeros(y.size) if init is None else init.astype(np.float64, copy=True)
    out = np.empty(n_rounds)
    for t in range(n_rounds):
        scores += booster.predict(x, start_iteration=t, num_iteration=1, raw_score=True)
        out[t] = float(np.sum(grouped_ndcg(query, scores, relevant, k, sizes.size)))
    return out


def ndcg_by_iteration(
    booster: Any, x: np.ndarray, y: np.ndarray, sizes: np.ndarray, k: int, init: np.ndarray | None = None
) -> np.ndarray:
    """Mean over queries of NDCG@k after each boosting round (`ndcg_sums_by_iteration` / queries)."""
    return ndcg_sums_by_iteration(booster, x, y, sizes, k, init) / sizes.size


def best_iteration(curve: np.ndarray, patience: int) -> int:
    """1-based best round as `lightgbm.early_stopping` finds it: the first maximum seen before
    `patience` rounds pass without a strictly better value (patience 0: the last round)."""
    if patience <= 0:
        return int(curve.size)
    best, best_at = -np.inf, 0
    for t, value in enumerate(curve):
        if value > best:
            best, best_at = value, t
        elif t - best_at >= patience:
            break
    return best_at + 1


def _training_partition(frames: list[pl.DataFrame], feature_names: tuple[str, ...], group: str,
                        base: ScoreBase | None, negatives: int, seed: int) -> Partition:
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    frame = sample_negatives(frame, negatives, seed, group)
    return Partition(*_query_groups(frame, feature_names, "train", group, base))


def _partition_shape(part: Partition) -> tuple[int, int]:
    return int(part.y.size), int(part.sizes.size)


def _rows_of(part: Partition, rows: np.ndarray) -> np.ndarray:
    return part.x[rows]


def _valid_ndcg_sums(frame: pl.DataFrame, model: str, feature_names: tuple[str, ...], base: ScoreBase | None,
                     k: int) -> tuple[np.ndarray, int]:
    import lightgbm

    x, y, sizes, init = _query_groups(frame, feature_names, "valid", base=base)
    booster = lightgbm.Booster(model_str=model)
    if sizes.size == 0:
        return np.zeros(booster.current_iteration()), 0
    return ndcg_sums_by_iteration(booster, x, y, sizes, k, init), int(sizes.size)


def machine_runs(rows: Sequence[int], n_machines: int) -> list[list[int]]:
    """Consecutive partitions grouped into at most `n_machines` runs of about equal rows, one
    LightGBM machine's data each (every partition its own run when there are no more than
    `n_machines`)."""
    if len(rows) <= n_machines:
        return [[p] for p in range(len(rows))]
    runs, start = [], 0
    for sizes in split_groups(np.asarray(rows), n_machines):
        runs.append(list(range(start, start + sizes.size)))
        start += sizes.size
    return runs


def fit_ranker_parts(
    client: Any,
    train: Sequence[Parts],
    valid: Parts | None,
    feature_names: Sequence[str],
    config: RankerConfig,
    seed: int,
    group: str = USER_ID,
    n_partitions: int = 0,
    time_out: int = DaskConfig.ranker_time_out,
    attempts: int = DaskConfig.ranker_attempts,
) -> tuple[Ranker, int]:
    """Fit the lambdarank ranker with data-parallel LightGBM on frames kept on the workers.

    Partition p of every frame of `train` covers the same users (`distributed_frames`), so the
    queries of partition p, sorted, are a contiguous block of the whole training set as a local
    fit sorts it. Each partition becomes a LightGBM `Partition` where it lies; the driver fetches
    only the rows of the bin sample and the row counts, and the validation curve comes back as
    one sum per round.

    Args:
        client: a connected `distributed.Client`.
        train: the training frames (e.g. one per ranker-label cut-off), each with `group` and
            schema.LABEL columns, all cut at the same user bounds.
        valid: the validation frame (labels, schema.USER_ID queries), or None.
        feature_names, config, seed, group: as in `ranking.fit_ranker`.
        n_partitions: LightGBM machines' worth of partitions, placed in contiguous runs on the
            workers sorted by address (0: one per worker); partitions are grouped into that many
            runs of whole partitions. 1 gives `ranking.fit_ranker`'s model exactly.
        time_out, attempts: a machine's wait on a silent peer (minutes) and the starts of the
            whole fit when a machine fails (`train_data_parallel`); a partition lost with a dead
            worker is built again from its frames, those lost rebuilt (`Parts.rebuild`).

    Returns:
        (the `Ranker`, whose best_iteration is chosen on `valid` or is the last round; the number
        of training queries with a positive label).
    """
    feature_names = tuple(feature_names)
    if not feature_names or len(set(feature_names)) != len(feature_names):
        raise ValueError(f"feature_names must be non-empty and distinct: {feature_names}")
    if len({len(t.futures) for t in train}) > 1:
        raise ValueError("the training frames are not cut at the same user bounds")
    base = score_base(config, feature_names)
    held = [p for p in range(len(train[0].futures)) if any(t.futures[p] is not None for t in train)]

    def build(p: int) -> Any:
        """Partition p's training arrays, from its frames (those lost with a worker rebuilt)."""
        for t in train:
            heal(t)
        frames = [t.futures[p] for t in train if t.futures[p] is not None]
        return client.submit(_training_partition, frames, feature_names, group, base, config.train_negatives, seed,
                             pure=False)

    parts = [build(p) for p in held]
    shapes = client.gather([client.submit(_partition_shape, f, pure=False) for f in parts])
    held = [p for p, (rows, _) in zip(held, shapes, strict=True) if rows > 0]
    parts = [f for f, (rows, _) in zip(parts, shapes, strict=True) if rows > 0]
    rows = [r for r, _ in shapes if r > 0]
    n_queries = sum(q for _, q in shapes)
    if not parts:
        raise ValueError("train has no user with a positive label; lambdarank has nothing to learn")

    params = _params(config, seed)
    params.pop("metric")
    params.pop("eval_at")
    with progress.step("ranker (dask)") as s:
        sample = _fetch_rows(client, parts, rows, bin_sample(sum(rows), params))
        runs = machine_runs(rows, n_partitions or n_workers(client))
        order = [p for run in runs for p in run]
        booster = train_data_parallel(client, [[parts[p] for p in run] for run in runs], [rows[p] for p in order],
                                      sample, params, config.n_estimators, feature_names, time_out, attempts,
                                      recover=lambda i: build(held[order[i]]))
        s.done(f"{booster.current_iteration()} trees, {len(runs)} partitions")
    del parts
    if booster.feature_name() != list(feature_names):
        raise ValueError(f"LightGBM renamed the features to {booster.feature_name()}")
    best = booster.current_iteration()
    if valid is not None and config.early_stopping_rounds > 0:
        sums = gather_parts(client, _valid_ndcg_sums, valid, booster.model_to_string(), feature_names, base,
                            config.eval_at)
        total = sum(n for _, n in sums)
        if total == 0:
            raise ValueError("valid has no user with a positive label; early stopping has nothing to measure")
        curve = np.sum([c for c, n in sums if n], axis=0) / total
        best = best_iteration(curve, config.early_stopping_rounds)
    ranker = Ranker(booster=booster, feature_names=feature_names, best_iteration=int(best), base=base,
                    train_rows=int(sum(rows)))
    return ranker, n_queries


def _fetch_rows(client: Any, parts: Sequence[Any], rows: Sequence[int], wanted: np.ndarray) -> np.ndarray:
    """Rows `wanted` (sorted global indices) of the partitions laid end to end, fetched from
    where they lie: (len(wanted), n_features) float32."""
    starts = np.concatenate([[0], np.cumsum(rows)])
    pieces = []
    for p, future in enumerate(parts):
        mine = wanted[(wanted >= starts[p]) & (wanted < starts[p + 1])] - starts[p]
        if mine.size:
            pieces.append(client.submit(_rows_of, future, mine, pure=False))
    return np.concatenate(client.gather(pieces))


def _frame_parts(client: Any, frame: pl.DataFrame, group: str, n_parts: int) -> Parts:
    """A driver frame as Parts: sorted by `group`, cut into at most `n_parts` runs of whole
    queries of about equal rows, the queries without a positive left out (they train nothing)."""
    ordered = frame.sort(group, maintain_order=True).filter((pl.col(LABEL) > 0).any().over(group))
    sizes = ordered.group_by(group, maintain_order=True).len()["len"].to_numpy()
    chunks, start = [], 0
    for part in split_groups(sizes, n_parts):
        chunks.append(ordered.slice(start, int(part.sum())))
        start += int(part.sum())
    if not chunks:
        chunks = [ordered]

    def rebuild(lost: list[int]) -> list[Any]:  # scattered data lost with a worker is gone for good
        return client.scatter([chunks[p] for p in lost], hash=False)

    return Parts(client.scatter(chunks, hash=False), [c.height for c in chunks], rebuild)


def fit_ranker_dask(
    client: Any,
    train: pl.DataFrame,
    valid: pl.DataFrame | None,
    feature_names: Sequence[str],
    config: RankerConfig,
    seed: int,
    group: str = USER_ID,
    n_partitions: int = 0,
    time_out: int = DaskConfig.ranker_time_out,
    attempts: int = DaskConfig.ranker_attempts,
) -> Ranker:
    """`fit_ranker_parts` for frames held by the driver: they are cut into partitions of whole
    query groups (`split_groups`) and scattered, then trained on as if built on the workers.

    Every machine bins with the bins a local fit finds (`distributed_lightgbm`). One partition
    gives `ranking.fit_ranker`'s model exactly; with more, the machines draw the local bag, and
    LightGBM's data-parallel learner grows the local trees until `min_data_in_leaf`, which it
    checks against estimated leaf counts, decides a split (docs/scaling.md).

    Args:
        client: a connected `distributed.Client` (see `dask_client`).
        train, valid, feature_names, config, seed, group: as in `ranking.fit_ranker`.
        n_partitions: partitions of the training rows, placed in contiguous runs on the workers
            sorted by address; 0 means one per worker.
        time_out, attempts: as in `fit_ranker_parts`.

    Returns:
        A `Ranker` whose booster holds all `n_estimators` rounds and whose best_iteration is
        chosen on `valid` (or is the last round when valid is None).
    """
    n_parts = n_partitions or n_workers(client)
    parts = _frame_parts(client, train, group, n_parts)
    held = None if valid is None else _frame_parts(client, valid, USER_ID, n_workers(client))
    ranker, _ = fit_ranker_parts(client, [parts], held, feature_names, config, seed, group, n_parts, time_out,
                                 attempts)
    return ranker


def map_partitions(client: Any, func: Callable[..., Any], chunks: Sequence[Any], *args: Any) -> list[Any]:
    """`func(chunk, *args)` for every chunk on the cluster, results in chunk order.

    The shared `args` are scattered once to every worker, so each task ships only its chunk.
    `func` must be importable on the workers (a module-level function of an installed package).
    """
    shared = [client.scatter(a, broadcast=True) for a in args]
    futures = [client.submit(func, chunk, *shared, pure=False) for chunk in chunks]
    return client.gather(futures)


def chunk_evenly(values: Sequence[Any], n_parts: int) -> list[list[Any]]:
    """Consecutive, non-empty chunks of `values`, at most `n_parts`, sizes differing by <= 1."""
    values = list(values)
    n_parts = max(1, min(n_parts, len(values)))
    bounds = np.linspace(0, len(values), n_parts + 1).round().astype(int)
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _encode_chunk(items: pl.DataFrame, encoder_cls: Any, kwargs: dict[str, Any]) -> Any:
    return encoder_cls(**kwargs).encode(items)


def _concatenate(parts: Sequence[Any]) -> Any:
    """Per-partition Embeddings, in partition order, as one."""

    return Embeddings(
        tuple(i for p in parts for i in p.item_ids),
        np.concatenate([p.vectors for p in parts]).astype(np.float32, copy=False),
        np.concatenate([p.mask for p in parts]),
    )


def _encode_with(items: pl.DataFrame, encoder: Any) -> Any:
    return encoder.encode(items)


def encode_fitted_dask(client: Any, encoder: Any, items: pl.DataFrame, n_partitions: int = 0) -> Any:
    """`encoder.encode(items)` over Dask partitions of the catalog's rows, for an encoder whose
    state is fitted here (audio statistics) or cheap to ship (image descriptor, video): the
    encoder object is sent to every worker once.

    Returns:
        `Embeddings` of every item, in the items' row order.
    """
    bounds = chunk_evenly(range(items.height), n_partitions or n_workers(client))
    chunks = [items.slice(b[0], len(b)) for b in bounds] or [items]
    parts = map_partitions(client, _encode_with, chunks, encoder)
    return _concatenate(parts)


def encode_dask(client: Any, encoder_cls: Any, kwargs: dict[str, Any], items: pl.DataFrame,
                n_partitions: int = 0) -> Any:
    """`encoder_cls(**kwargs).encode(items)` over Dask partitions of the catalog's rows.

    Each task builds its own encoder on its worker (models are loaded there, never pickled) and
    encodes a contiguous slice of `items`; the slices are concatenated in row order.

    Args:
        client: a connected `distributed.Client`.
        encoder_cls: an importable encoder class (e.g. `encoders.text.TextEncoder`).
        kwargs: its constructor arguments (picklable: paths, numbers).
        items: the items table.
        n_partitions: catalog partitions; 0 means one per worker.

    Returns:
        `Embeddings` of every item, in the items' row order.
    """
    bounds = chunk_evenly(range(items.height), n_partitions or n_workers(client))
    chunks = [items.slice(b[0], len(b)) for b in bounds] or [items]
    parts = map_partitions(client, _encode_chunk, chunks, encoder_cls, kwargs)
    return _concatenate(parts)
