"""Data-parallel LightGBM on Dask workers, every machine binning with the bins of a local fit.

`lightgbm.dask` has each machine find the bins of its share of the features from its own
partition (`DatasetLoader::ConstructFromSampleData`), so a distributed model differs from the
local one even without any randomness (lightgbm-org/LightGBM#3835, #5798). Forcing the bins
(`forcedbins_filename`) does not fix that in LightGBM 4.7: machine r > 0 applies the forced
bounds of feature i to its feature start_r + i (lightgbm-org/LightGBM#7436, not merged), and
the missing-value type and the bins around zero would still come from the partition.

So every machine here first builds a Dataset from one bounded sample of rows, before the network
starts, which LightGBM bins exactly as a local fit bins its own sample; the machine's partition
then becomes a Dataset with that one as `reference`, which copies its bin mappers
(`Dataset::CreateValid`) instead of finding bins. One machine then gives the local model
exactly. With several, each machine also holds its first and last bagging blocks whole and is
seeded by its first block (`bagging_blocks`), so it draws the local fit's bag; the trees are then
the local ones until `min_data_in_leaf` decides a split, which the data-parallel learner checks
against leaf row counts it estimates from hessians where the serial learner counts them
(docs/scaling.md).

A machine that fails takes the whole fit with it: its peers wait inside LightGBM for it (while
the network forms, with no time limit; later up to `time_out` minutes, or for ever on a socket it
closed). So `train_data_parallel` watches the machines from the driver and starts the whole fit
again when one fails (a worker killed mid-fit: tests/test_distributed.py), ending the process of
any worker whose machine is still stuck (its nanny starts a new one); the same partitions give
the same model.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np

from fuserank.config import DaskConfig
from fuserank.jobs.bagging_blocks import bags, held_rows, machine_seed, query_pieces
from fuserank.jobs.distributed_frames import not_held

logger = logging.getLogger(__name__)


class Partition(NamedTuple):
    """Whole query groups of training rows, in row order.

    Attributes:
        x: (n_rows, n_features) float32; y: (n_rows,) int labels; sizes: (n_queries,) rows per
        query; init: (n_rows,) starting scores, or None.
    """

    x: np.ndarray
    y: np.ndarray
    sizes: np.ndarray
    init: np.ndarray | None


def bin_sample(n_rows: int, params: dict[str, Any]) -> np.ndarray:
    """Rows a local `lightgbm.Dataset` of `n_rows` rows with `params` finds its bins from.

    Every row up to `bin_construct_sample_cnt` (200,000 by default), else LightGBM's own sample
    of that many, drawn by its C++ sampler (`LGBM_SampleIndices`, seeded by `data_random_seed`).
    Binned alone, a sample of k < n_rows rows pre-filters features at `min_data_in_leaf` rows
    where the local fit uses `min_data_in_leaf` x k / n_rows.

    Returns:
        (k,) sorted int32 row indices, k <= bin_construct_sample_cnt.
    """
    from lightgbm.basic import _LIB, _c_str, _param_dict_to_str, _safe_call

    # The C call behind Dataset._create_sample_indices, but handed every parameter: that method
    # passes only the Dataset ones, and `seed` (which sets data_random_seed) is not one of them.
    text = _c_str(_param_dict_to_str(params))
    size = ctypes.c_int(0)
    _safe_call(_LIB.LGBM_GetSampleCount(ctypes.c_int32(n_rows), text, ctypes.byref(size)))
    rows = np.empty(size.value, dtype=np.int32)
    drawn = ctypes.c_int32(0)
    _safe_call(_LIB.LGBM_SampleIndices(ctypes.c_int32(n_rows), text, rows.ctypes.data_as(ctypes.c_void_p),
                                       ctypes.byref(drawn)))
    return np.sort(rows[:drawn.value])


def placement(workers: Sequence[str], n_parts: int) -> list[str]:
    """The worker of each partition: contiguous runs of partitions over the workers sorted by
    address, so a run with the same workers and partitions always places them alike."""
    ordered = sorted(workers)
    return [ordered[k * len(ordered) // n_parts] for k in range(n_parts)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _rows_between(part: Partition, lo: int, hi: int) -> Partition:
    """Rows [lo, hi) of a partition, its first and last query cut there."""
    init = None if part.init is None else part.init[lo:hi]
    return Partition(part.x[lo:hi], part.y[lo:hi], query_pieces(part.sizes, lo, hi), init)


def _train_machine(parts: list[Partition], borrowed: tuple[list[Partition], list[Partition]], sample: np.ndarray,
                   params: dict[str, Any], machine: dict[str, Any], rounds: int, feature_names: list[str]) -> str:
    import lightgbm
    from lightgbm.basic import _LIB, _safe_call

    try:
        # Built before lightgbm.train starts the network: bins from the sample alone, as a local fit's.
        bins = lightgbm.Dataset(sample, feature_name=feature_names, params=params).construct()
        before, after = borrowed
        held = [*before, *parts, *after]
        weight = None
        if before or after:  # the neighbours' rows of this machine's first and last bagging blocks
            counts = [sum(p.y.size for p in side) for side in (before, parts, after)]
            weight = np.repeat(np.array([0.0, 1.0, 0.0], dtype=np.float32), counts)
        init = None if parts[0].init is None else np.concatenate([p.init for p in held])
        data = lightgbm.Dataset(np.concatenate([p.x for p in held]), label=np.concatenate([p.y for p in held]),
                                group=np.concatenate([p.sizes for p in held]), weight=weight, init_score=init,
                                feature_name=feature_names, reference=bins, params=params)
        return lightgbm.train({**params, **machine}, data, num_boost_round=rounds).model_to_string()
    finally:
        # Also when a peer failed and train raised: the network is process-wide, and the next fit
        # in this process must bin its sample alone again and may listen on another port.
        _safe_call(_LIB.LGBM_NetworkFree())


class _Attempt(NamedTuple):
    """One start of every machine: the futures of their tasks, in rank order, and their workers."""

    futures: list[Any]
    machines: list[str]


def _start_machines(client: Any, runs: Sequence[Sequence[Any]], rows: Sequence[int], shared: Any,
                    params: dict[str, Any], rounds: int, feature_names: Sequence[str], time_out: int) -> _Attempt:
    from distributed import wait

    owners = placement(list(client.scheduler_info()["workers"]), len(runs))
    machines = list(dict.fromkeys(owners))  # rank order: sorted worker addresses
    ports = client.run(_free_port, workers=machines)  # fresh ones each start: a failed one may still hold its own
    listen = ",".join(f"{urlparse(w).hostname}:{ports[w]}" for w in machines)
    flat = [p for run in runs for p in run]
    owner = [o for run, o in zip(runs, owners, strict=True) for _ in run]
    starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
    aligned = len(machines) > 1 and bags(params)
    held = []
    for w in machines:
        mine = [k for k, o in enumerate(owner) if o == w]  # contiguous: runs go to workers in order
        start, end = int(starts[mine[0]]), int(starts[mine[-1] + 1])
        first, last = held_rows(start, end, int(starts[-1])) if aligned else (start, end)
        borrowed = (_borrow(client, flat, starts, first, start), _borrow(client, flat, starts, end, last))
        held.append((mine, first, borrowed))
    # Sliced before any machine starts: a machine holds its worker's thread inside LightGBM until
    # its peers join, so a peer's slice queued behind it on that worker would never run. A slice
    # that fails fails its machine (a failed start); one that never comes raises TimeoutError.
    with client.as_current():  # `wait` asks for the default client
        wait([f for _, _, borrowed in held for side in borrowed for f in side], timeout=60 * time_out)
    futures = []
    for w, (mine, first, borrowed) in zip(machines, held, strict=True):
        machine = {"tree_learner": "data", "machines": listen, "local_listen_port": ports[w],
                   "num_machines": len(machines), "time_out": time_out,
                   **(machine_seed(params, first) if aligned else {})}
        futures.append(client.submit(_train_machine, [flat[k] for k in mine], borrowed, shared, params, machine,
                                     rounds, list(feature_names), workers=[w], allow_other_workers=False,
                                     pure=False))
    return _Attempt(futures, machines)


def _borrow(client: Any, flat: Sequence[Any], starts: np.ndarray, lo: int, hi: int) -> list[Any]:
    """Futures of the global rows [lo, hi) of the partitions `flat` (starting at rows `starts`)."""
    pieces = []
    for k, part in enumerate(flat):
        a, b = max(lo, int(starts[k])), min(hi, int(starts[k + 1]))
        if a < b:
            pieces.append(client.submit(_rows_between, part, a - int(starts[k]), b - int(starts[k]), pure=False))
    return pieces


def _failure(client: Any, attempt: _Attempt, poll_s: float = 0.5) -> str | None:
    """Wait until every machine has finished (None) or one has failed: its task raised, or its
    worker left the cluster. Dask would rerun a dead worker's task only on that very worker
    (machines are pinned to theirs), so it would wait for it forever, and its peers with it."""
    from distributed import wait
    from distributed.client import FuturesCancelledError

    while True:
        try:
            with client.as_current():  # `wait` asks for the default client, which may be another
                wait(attempt.futures, timeout=poll_s, return_when="FIRST_COMPLETED")
        except (TimeoutError, FuturesCancelledError):  # a cancelled machine (e.g. its inputs were lost): below
            pass
        for w, f in zip(attempt.machines, attempt.futures, strict=True):
            if f.status == "error":
                return f"the machine on {w} raised {f.exception()!r}"
            if f.status not in ("pending", "finished"):
                return f"the machine on {w} was {f.status}"
        if all(f.status == "finished" for f in attempt.futures):
            return None
        gone = sorted(set(attempt.machines) - set(client.scheduler_info()["workers"]))
        if gone:
            return f"worker {', '.join(gone)} left the cluster while its machine trained"


def _busy_with(keys: list[str], dask_worker: Any = None) -> bool:
    """Whether this worker still runs one of `keys` (cancelled or not): a thread inside LightGBM."""
    tasks = dask_worker.state.tasks
    return any(k in tasks and tasks[k].state in ("executing", "long-running", "cancelled") for k in keys)


def _stop_machines(client: Any, attempt: _Attempt, grace_s: float) -> list[str]:
    """End a failed start: release its tasks, and end the processes of the workers whose machine
    still runs after `grace_s` seconds (their nannies start new workers). A machine whose peer
    died may wait inside LightGBM until `time_out` (for a reply that never comes), for ever (for
    a connection that never comes) or loop on a closed socket, and no Python call can end a
    thread inside C++; meanwhile it holds the worker's thread, its port and the process-wide
    network. Returns the ended workers."""
    alive = set(client.scheduler_info()["workers"])
    running = [(w, f) for w, f in zip(attempt.machines, attempt.futures, strict=True) if w in alive]
    deadline = time.monotonic() + grace_s
    while any(f.status == "pending" for _, f in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    keys = [f.key for f in attempt.futures]
    client.cancel(attempt.futures, force=True)
    # A worker that cannot answer (it is going) is not waited for: on_error="ignore" drops it.
    busy = client.run(_busy_with, keys, workers=[w for w, _ in running], on_error="ignore") if running else {}
    stuck = sorted(w for w, b in busy.items() if b is True)
    if stuck:
        # Not client.restart_workers: a worker asked to close waits for its task thread (seen
        # hanging for minutes). Ended like a crash, its nanny starts a new worker.
        try:
            client.run(_end_process, workers=stuck)
        except Exception:  # noqa: BLE001, S110 - the process ends before it can answer
            pass
        deadline = time.monotonic() + 30
        while set(stuck) & set(client.scheduler_info()["workers"]) and time.monotonic() < deadline:
            time.sleep(0.1)  # gone from the scheduler, so the next start counts and uses only live ones
    return stuck


def _end_process() -> None:
    os._exit(1)


def train_data_parallel(client: Any, runs: Sequence[Sequence[Any]], rows: Sequence[int], sample: np.ndarray,
                        params: dict[str, Any], rounds: int, feature_names: Sequence[str],
                        time_out: int = DaskConfig.ranker_time_out, attempts: int = DaskConfig.ranker_attempts,
                        recover: Callable[[int], Any] | None = None, grace_s: float = 5.0) -> Any:
    """`lightgbm.train` with `tree_learner=data`, one LightGBM machine per worker holding partitions.

    When a machine fails (its task raises, or its worker dies: a killed worker's nanny starts a
    new one under another address), the whole fit starts again, up to `attempts` starts: the
    failed start's tasks are cancelled and any worker whose machine still runs is ended
    (`_stop_machines`); then, once as many workers as the first start used are back (waiting at
    most `time_out` minutes), the machines start afresh on the workers alive then, with new
    ports. A partition that no worker holds any more is handed to `recover` (Dask may be
    computing it again from its graph, or may find that it cannot: its inputs were scattered
    data, released once it was built; waiting to learn which could take a while).
    The same partitions, sample and parameters give the same model at every start.

    Args:
        client: a connected `distributed.Client`.
        runs: the training rows in row order, as runs of futures of `Partition`s (whole query
            groups each); run r goes to the worker `placement` gives it, which moves its
            partitions there from wherever they lie (worker to worker), and all runs of one
            worker make one machine.
        rows: the row count of each partition of `runs`, laid end to end; with bagging, a
            machine also holds its neighbours' rows of its first and last bagging blocks
            (`bagging_blocks`), so that it draws the local fit's bag.
        sample: (k, n_features) float32 rows every machine takes the bins from (see `bin_sample`).
        params: LightGBM parameters without network settings. Their `num_threads` runs on every
            machine whatever its worker's thread count, since LightGBM's sums, hence its trees,
            depend on it.
        rounds: boosting rounds.
        feature_names: column names.
        time_out: minutes a machine waits on a silent peer before it fails (LightGBM's
            `time_out`, whose default is 120), also the longest wait for workers between starts.
        attempts: starts at most (>= 1).
        recover: given the index of a lost partition (its place in `runs` laid end to end), a
            fresh future of it; None: a lost partition ends the fit.
        grace_s: seconds a failed start's other machines get to end by themselves before their
            workers' processes are ended.

    Returns:
        The fitted `lightgbm.Booster` (every machine holds the same model; the first to answer gives it).

    Raises:
        RuntimeError: every start failed, or a partition was lost and could not be recovered;
            the message names what failed at each start.
    """
    import lightgbm

    runs = [list(run) for run in runs]
    shared = client.scatter(sample, broadcast=True, hash=False)
    failures: list[str] = []
    wanted = 0
    for start in range(1, attempts + 1):
        try:
            if start > 1:
                _await_workers(client, wanted, time_out)
                runs, shared = _recovered(client, runs, shared, sample, recover, failures, time_out)
            attempt = _start_machines(client, runs, rows, shared, params, rounds, feature_names, time_out)
        except (OSError, CancelledError) as error:  # e.g. a worker went while the start was prepared
            failures.append(f"start {start}: could not start the machines: {error!r}")
            logger.warning("data-parallel LightGBM: %s", failures[-1])
            continue
        wanted = wanted or len(attempt.machines)
        failure = _failure(client, attempt)
        model = None if failure else _any_model(attempt)
        if model is not None:
            return lightgbm.Booster(model_str=model)
        failure = failure or "every machine finished, but no worker holding a model answered"
        ended = _stop_machines(client, attempt, grace_s)
        stuck = f" (ended {', '.join(ended)}: still in LightGBM)" if ended else ""
        failures.append(f"start {start}: {failure}{stuck}")
        logger.warning("data-parallel LightGBM: %s", failures[-1])
    raise RuntimeError(f"data-parallel LightGBM failed at all {attempts} starts: {'; '.join(failures)}")


def _any_model(attempt: _Attempt, wait_s: float = 60) -> str | None:
    """The model of the first machine that hands it over: all hold the same, and a worker may
    die after its machine finished, whereupon Dask would rerun that task on no worker."""
    for future in attempt.futures:
        try:
            return future.result(timeout=wait_s)
        except Exception as error:  # noqa: BLE001 - lost with its worker: ask the next machine
            logger.warning("data-parallel LightGBM: no model from %s: %r", future.key, error)
    return None


def _await_workers(client: Any, n: int, time_out: int) -> None:
    try:
        client.wait_for_workers(n, timeout=60 * time_out)
    except TimeoutError:
        logger.warning("data-parallel LightGBM: %d of %d workers back after %d min; fewer machines give other trees",
                       len(client.scheduler_info()["workers"]), n, time_out)


def _recovered(client: Any, runs: list[list[Any]], shared: Any, sample: np.ndarray,
               recover: Callable[[int], Any] | None, failures: list[str], time_out: int) -> tuple[list[list[Any]], Any]:
    """New runs and a new sample future, every partition no worker holds (`not_held`) replaced
    by `recover`'s, all in memory on return (waiting at most `time_out` minutes). The sample is
    sent again whatever: it is small, and a future of scattered data lost with its worker may
    still read "finished" for a while.

    The wait matters: a machine started before a rebuilt partition of its peer is computed holds
    its worker's only thread inside LightGBM, waiting for that peer, while the partition's task
    may be queued on that very worker.

    Raises:
        CancelledError: a partition could not be computed (a failed start, for the caller).
    """
    from distributed import wait

    shared = client.scatter(sample, broadcast=True, hash=False)
    flat = [p for run in runs for p in run]
    lost = not_held(flat)
    if lost and recover is None:
        raise RuntimeError(f"data-parallel LightGBM: partitions {lost} were lost and cannot be recomputed "
                           f"({'; '.join(failures)})")
    for i in lost:
        flat[i] = recover(i)
    with client.as_current():  # `wait` asks for the default client
        wait([*flat, shared], timeout=60 * time_out)
    it = iter(flat)
    return [[next(it) for _ in run] for run in runs], shared
