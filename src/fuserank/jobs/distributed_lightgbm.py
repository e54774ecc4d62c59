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
exactly; several start from the same first tree and then part, for reasons inside LightGBM's
data-parallel learner: bags drawn by a row's index within its machine, leaf row counts
estimated from hessians, no skipping of features unsplittable in the parent, another
summation order (docs/scaling.md).
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np


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


def _train_machine(parts: list[Partition], sample: np.ndarray, params: dict[str, Any], network: dict[str, Any],
                   rounds: int, feature_names: list[str]) -> str:
    import lightgbm

    # Built before lightgbm.train starts the network: bins from the sample alone, as a local fit's.
    bins = lightgbm.Dataset(sample, feature_name=feature_names, params=params).construct()
    init = None if parts[0].init is None else np.concatenate([p.init for p in parts])
    data = lightgbm.Dataset(np.concatenate([p.x for p in parts]), label=np.concatenate([p.y for p in parts]),
                            group=np.concatenate([p.sizes for p in parts]), init_score=init,
                            feature_name=feature_names, reference=bins, params=params)
    booster = lightgbm.train({**params, **network}, data, num_boost_round=rounds)
    try:
        return booster.model_to_string()
    finally:
        booster.free_network()  # the next fit in this process bins its sample alone again


def train_data_parallel(client: Any, runs: Sequence[Sequence[Any]], sample: np.ndarray, params: dict[str, Any],
                        rounds: int, feature_names: Sequence[str]) -> Any:
    """`lightgbm.train` with `tree_learner=data`, one LightGBM machine per worker holding partitions.

    Args:
        client: a connected `distributed.Client`.
        runs: the training rows in row order, as runs of futures of `Partition`s (whole query
            groups each); run r goes to the worker `placement` gives it, which moves its
            partitions there from wherever they lie (worker to worker), and all runs of one
            worker make one machine.
        sample: (k, n_features) float32 rows every machine takes the bins from (see `bin_sample`).
        params: LightGBM parameters without network settings. Their `num_threads` runs on every
            machine whatever its worker's thread count, since LightGBM's sums, hence its trees,
            depend on it.
        rounds: boosting rounds.
        feature_names: column names.

    Returns:
        The fitted `lightgbm.Booster` (every machine holds the same model; rank 0's is returned).
    """
    import lightgbm

    owners = placement(list(client.scheduler_info()["workers"]), len(runs))
    machines = list(dict.fromkeys(owners))  # rank order: sorted worker addresses
    ports = client.run(_free_port, workers=machines)
    listen = ",".join(f"{urlparse(w).hostname}:{ports[w]}" for w in machines)
    shared = client.scatter(sample, broadcast=True)
    futures = []
    for w in machines:
        own = [p for run, o in zip(runs, owners, strict=True) if o == w for p in run]
        network = {"tree_learner": "data", "machines": listen, "local_listen_port": ports[w],
                   "num_machines": len(machines)}
        futures.append(client.submit(_train_machine, own, shared, params, network, rounds, list(feature_names),
                                     workers=[w], allow_other_workers=False, pure=False))
    models = client.gather(futures)
    return lightgbm.Booster(model_str=models[0])
