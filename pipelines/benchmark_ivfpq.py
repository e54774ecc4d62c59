"""IVF-PQ (trained on a sample) and sharded search against exact search on synthetic vectors.

Writes benchmarks/ivfpq.json: recall@100 against exact inner-product search and queries/s for
the exact index, one IVF-PQ index, the same split into shards searched in threads, and shards
searched on a 2-worker Dask LocalCluster.

    .venv/bin/python pipelines/benchmark_ivfpq.py --n 100000 --dim 384 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from fuserank import atomic
from fuserank.retrieval.sharding import build_sharded, recall_at_k, scatter_shards, search_sharded, search_sharded_dask


def synthetic(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    """L2-normalised float32 (n, d) vectors around `n_clusters` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
    x = centres[rng.integers(n_clusters, size=n)] + 0.7 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--lists", type=int, default=1024)
    parser.add_argument("--pq-m", type=int, default=48)
    parser.add_argument("--train-sample", type=int, default=50_000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/ivfpq.json")
    args = parser.parse_args()

    faiss.omp_set_num_threads(2)
    items = synthetic(args.n, args.dim, 1000, seed=0)
    queries = synthetic(args.n + args.queries, args.dim, 1000, seed=0)[args.n:]  # same centres, new points
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(items)
    (_, exact), exact_s = timed(lambda: flat.search(queries, args.k), args.repeats)
    results = {"exact": {"qps": args.queries / exact_s, "recall_at_k": 1.0}}

    start = time.perf_counter()
    one = build_sharded(items, 1, args.lists, args.pq_m, 8, args.nprobe[0], args.train_sample, seed=0)
    build_s = time.perf_counter() - start
    sharded = build_sharded(items, args.shards, args.lists, args.pq_m, 8, args.nprobe[0], args.train_sample, seed=0)
    rows = []
    for nprobe in args.nprobe:
        one.nprobe = sharded.nprobe = nprobe
        (_, ids1), s1 = timed(lambda: search_sharded(one, queries, args.k), args.repeats)
        (_, ids2), s2 = timed(lambda: search_sharded(sharded, queries, args.k), args.repeats)
        rows.append({"nprobe": nprobe, "recall_at_k": recall_at_k(ids1, exact), "qps": args.queries / s1,
                     "sharded_recall_at_k": recall_at_k(ids2, exact), "sharded_qps": args.queries / s2})
        print(rows[-1], flush=True)

    from fuserank.config import DaskConfig
    from fuserank.jobs.distributed import dask_client

    dask_rows = []
    with dask_client(DaskConfig(enabled=True, n_workers=args.shards, threads_per_worker=1)) as client:
        futures = scatter_shards(client, sharded)
        for nprobe in args.nprobe:
            sharded.nprobe = nprobe
            (_, ids), s = timed(lambda: search_sharded_dask(client, sharded, queries, args.k, futures), args.repeats)
            dask_rows.append({"nprobe": nprobe, "recall_at_k": recall_at_k(ids, exact), "qps": args.queries / s})
            print(dask_rows[-1], flush=True)

    report = {
        "command": "pipelines/benchmark_ivfpq.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared)",
        "items": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
        "index": f"IVF{args.lists},PQ{args.pq_m}x8 (inner product), trained on {args.train_sample} sampled rows",
        "train_and_add_seconds": build_s,
        "exact": results["exact"],
        "ivfpq": rows,
        "shards": args.shards,
        "dask_shards": dask_rows,
        "timing": f"best of {args.repeats}; faiss on 2 OpenMP threads; Dask: 1 thread per worker, shards "
                  "pre-scattered, queries sent per call",
    }
    atomic.write_json(Path(args.out), report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
