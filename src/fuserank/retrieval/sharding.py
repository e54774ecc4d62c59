"""FAISS at scale: an IVF-PQ index trained on a sample, split into shards searched separately.

One IVF-PQ index is trained once (coarse k-means and product quantiser) on a random sample of
the item vectors; every shard is a copy of that trained, empty index holding a contiguous slice
of the items. All shards share the codebooks, so a query probes the same lists in each shard and
merging the shards' top-k by score gives exactly the unsharded index's answer. Shards are
searched in threads (`faiss.IndexShards`) or, one per task, on Dask workers.

Vectors are float32 `(n, d)`, rows L2-normalised, searched by inner product (cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ShardedIndex:
    """IVF-PQ shards over one catalog; shard s holds rows `offsets[s]:offsets[s + 1]`.

    Attributes:
        shards: one trained `faiss.IndexIVFPQ` per shard; ids returned are global row numbers.
        offsets: (n_shards + 1,) int64 row offsets.
        nprobe: lists probed per query.
    """

    shards: list[Any]
    offsets: np.ndarray
    nprobe: int

    def __getstate__(self) -> dict[str, Any]:
        import faiss

        return {"shards": [faiss.serialize_index(s) for s in self.shards], "offsets": self.offsets,
                "nprobe": self.nprobe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import faiss

        self.shards = [faiss.deserialize_index(b) for b in state["shards"]]
        self.offsets, self.nprobe = state["offsets"], state["nprobe"]


def train_ivfpq(vectors: np.ndarray, n_lists: int, pq_m: int, pq_bits: int, train_sample: int, seed: int) -> Any:
    """A trained, empty inner-product IVF-PQ index.

    Args:
        vectors: float32 (n, d); d must be divisible by `pq_m`.
        n_lists: coarse lists; lowered to n // 39 when the sample is small (FAISS wants ~39
            training points per centroid).
        pq_m, pq_bits: sub-quantisers and bits per code (code size pq_m * pq_bits / 8 bytes).
        train_sample: rows drawn without replacement for training; 0 or >= n uses all rows.
        seed: seed of the sample and of FAISS's k-means.

    Raises:
        ValueError: d is not divisible by pq_m, or there are fewer than 39 vectors.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if d % pq_m:
        raise ValueError(f"vector dimension {d} is not divisible by pq_m={pq_m}")
    rng = np.random.default_rng(seed)
    if 0 < train_sample < n:
        sample = vectors[np.sort(rng.choice(n, size=train_sample, replace=False))]
    else:
        sample = vectors
    if sample.shape[0] < 39:
        raise ValueError(f"{sample.shape[0]} training vectors; IVF-PQ needs at least 39")
    n_lists = max(1, min(n_lists, sample.shape[0] // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, n_lists, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.train(sample)
    return index


def build_sharded(
    vectors: np.ndarray,
    n_shards: int,
    n_lists: int = 1024,
    pq_m: int = 48,
    pq_bits: int = 8,
    nprobe: int = 32,
    train_sample: int = 50_000,
    seed: int = 0,
) -> ShardedIndex:
    """Train IVF-PQ on a sample of `vectors`, then fill `n_shards` copies with contiguous slices.

    Returns:
        The ShardedIndex (ids are row numbers of `vectors`).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    trained = train_ivfpq(vectors, n_lists, pq_m, pq_bits, train_sample, seed)
    offsets = np.linspace(0, vectors.shape[0], max(1, n_shards) + 1).round().astype(np.int64)
    shards = []
    for start, stop in zip(offsets[:-1], offsets[1:], strict=True):
        shard = faiss.clone_index(trained)
        shard.add_with_ids(vectors[start:stop], np.arange(start, stop, dtype=np.int64))
        shard.nprobe = nprobe
        shards.append(shard)
    return ShardedIndex(shards, offsets, nprobe)


def search_shard(shard: Any, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one shard: (scores (q, k) float32, global ids (q, k) int64; -1 pads)."""
    shard.nprobe = nprobe
    return shard.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def merge_by_score(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, ids) into the overall top-k by score (ties: lower shard first).

    Returns:
        (scores (q, k) float32, ids (q, k) int64); -1 ids (and -inf scores) where fewer exist.
    """
    scores = np.concatenate([np.where(i >= 0, s, -np.inf) for s, i in results], axis=1)
    ids = np.concatenate([i for _, i in results], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(ids, order, 1)


def as_faiss_index(index: ShardedIndex) -> Any:
    """One FAISS index over all shards: the shard itself when there is one, else a
    `faiss.IndexShards` that searches them in threads and merges by score."""
    import faiss

    for shard in index.shards:
        shard.nprobe = index.nprobe
    if len(index.shards) == 1:
        return index.shards[0]
    combined = faiss.IndexShards(index.shards[0].d, True, False)
    for shard in index.shards:
        combined.add_shard(shard)
    return combined


def search_sharded(index: ShardedIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard in this process (threads, via faiss.IndexShards) and merge by score."""
    return as_faiss_index(index).search(np.ascontiguousarray(queries, dtype=np.float32), k)


def search_sharded_dask(client: Any, index: ShardedIndex, queries: np.ndarray, k: int,
                        shard_futures: list[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search each shard as one task on the Dask cluster, then merge by score here.

    Args:
        client: a connected `distributed.Client`.
        index: the shards; sent to the workers unless `shard_futures` (from `scatter_shards`)
            already hold them there.
        queries: float32 (q, d); k: neighbours wanted.
    """
    futures = shard_futures if shard_futures is not None else scatter_shards(client, index)
    tasks = [client.submit(search_shard, f, queries, k, index.nprobe, pure=False) for f in futures]
    return merge_by_score(client.gather(tasks), k)


def scatter_shards(client: Any, index: ShardedIndex) -> list[Any]:
    """Place the shards on the workers round-robin, once; returns one future per shard."""
    workers = sorted(client.scheduler_info()["workers"])
    return [client.scatter(shard, workers=[workers[s % len(workers)]])
            for s, shard in enumerate(_shard_objects(index))]


class _Shard:
    """One shard that pickles as FAISS bytes (a bare FAISS index does not pickle)."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def __getstate__(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    def __setstate__(self, state: bytes) -> None:
        import faiss

        self.index = faiss.deserialize_index(np.frombuffer(state, dtype=np.uint8))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    @property
    def nprobe(self) -> int:
        return self.index.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.nprobe = value


def _shard_objects(index: ShardedIndex) -> list[_Shard]:
    return [_Shard(s) for s in index.shards]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k ids (q, k) that `found` (q, k') contains."""
    hits = [len(np.intersect1d(f[f >= 0], e[e >= 0])) / max(1, (e >= 0).sum()) for f, e in zip(found, exact,
                                                                                             strict=True)]
    return float(np.mean(hits))
