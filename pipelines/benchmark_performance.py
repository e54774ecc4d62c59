"""What fuserank costs to run, as ratios measured in one run on this machine.

    python pipelines/benchmark_performance.py [--sizes 100000 1000000] [--datasets movielens-100k movielens-1m]

- ANN: FAISS HNSW (M=32, efConstruction=128, as retrieval.build_index) and IVF (nlist = 4 sqrt(n),
  Flat lists) against exact inner-product search on synthetic clustered 384-d unit vectors:
  recall@100 (against the exact top 100) and queries/s, and the speed-up over exact search.
- features.build_features rows/s and LightGBM lambdarank training seconds per million candidate
  rows (fixed 100 trees), on the ML-100K (or --features-dataset) candidates of fuserank's protocol.
- train-evaluate wall time and peak memory (max RSS of the child process) per dataset, cold (a
  fresh, empty FUSERANK_CACHE: downloads and text encoding included) and warm (the same cache again).
Writes benchmarks/performance.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from fuserank import atomic  # noqa: E402
from fuserank.progress import set_quiet, step  # noqa: E402


def clustered_vectors(n: int, d: int, seed: int, n_clusters: int = 1000) -> np.ndarray:
    """float32 (n, d) unit vectors around `n_clusters` random centres (embeddings are clustered;
    uniform random vectors would be the ANN worst case, unlike real catalogs)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    chunk = 100_000
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = centres[rng.integers(0, n_clusters, stop - start)] + 0.6 * rng.standard_normal((stop - start, d), dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def _timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    _, found = index.search(queries, k)
    return found, queries.shape[0] / (time.perf_counter() - start)


def ann_benchmark(n: int, d: int, n_queries: int, seed: int, k: int = 100) -> dict:
    """Exact, HNSW and IVF on n clustered vectors: build seconds, recall@k and queries/s."""
    import faiss

    vectors = clustered_vectors(n + n_queries, d, seed)
    base, queries = vectors[:n], vectors[n:]
    out: dict = {"n": n, "d": d, "queries": n_queries, "k": k}
    with step(f"ann {n:,}: exact") as s:
        exact = faiss.IndexFlatIP(d)
        exact.add(base)
        truth, qps = _timed_search(exact, queries, k)
        out["exact"] = {"qps": qps}
        del exact
        s.done(f"{qps:,.0f} q/s")
    with step(f"ann {n:,}: hnsw") as s:
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 128
        hnsw.add(base)
        out["hnsw"] = {"M": 32, "build_seconds": time.perf_counter() - start, "points": []}
        for ef in (64, 128, 256):
            hnsw.hnsw.efSearch = ef
            found, qps = _timed_search(hnsw, queries, k)
            out["hnsw"]["points"].append({"ef_search": ef, "recall_at_100": _recall(found, truth), "qps": qps,
                                          "speedup_vs_exact": qps / out["exact"]["qps"]})
        del hnsw
        s.done(f"built in {out['hnsw']['build_seconds']:.0f} s")
    with step(f"ann {n:,}: ivf") as s:
        nlist = int(4 * np.sqrt(n))
        start = time.perf_counter()
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(base[np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)])
        ivf.add(base)
        out["ivf"] = {"nlist": nlist, "build_seconds": time.perf_counter() - start, "points": []}
        for nprobe in (8, 32, 128):
            ivf.nprobe = nprobe
            found, qps = _timed_search(ivf, queries, k)
            out["ivf"]["points"].append({"nprobe": nprobe, "recall_at_100": _recall(found, truth), "qps": qps,
                                         "speedup_vs_exact": qps / out["exact"]["qps"]})
        del ivf, quantizer
        s.done(f"built in {out['ivf']['build_seconds']:.0f} s")
    return out


def stage_costs(dataset: str, seed: int, trees: int = 100) -> dict:
    """features.build_features rows/s and LightGBM seconds per million rows on a dataset's
    ranker-training candidates (fuserank's protocol, default config)."""
    import dataclasses

    import polars as pl

    from fuserank import schema
    from fuserank.config import load_config
    from fuserank.encoders.content import encode_content
    from fuserank.ranking.features import build_features
    from fuserank.evaluation.protocol import QUERY, make_cutoffs, ranker_training_frame
    from fuserank.ranking.ranker import fit_ranker
    from fuserank.jobs.train_evaluate import load_data
    from fuserank.pipeline import candidate_sources, fit_stage_one, generate_candidates

    config = load_config(None, [f"data.dataset={dataset}", f"seed={seed}"])
    items, interactions = load_data(config)
    cutoffs = make_cutoffs(interactions, config)
    content, _ = encode_content(items, cutoffs.valid.history[schema.ITEM_ID].unique(), config)
    item_ids = items[schema.ITEM_ID].to_list()
    first = cutoffs.labels[0]
    history, users = first.history, first.users
    stage = fit_stage_one(history, item_ids, content, config.behaviour, config.fusion, config.retrieval, config.seed)
    candidates = generate_candidates(stage, history, users, config.retrieval, first.ref_times)
    with step("build_features") as s:
        start = time.perf_counter()
        frame, names = build_features(candidates, history, stage.embeddings, stage.fused, config.features,
                                      profile_items=config.retrieval.query_items,
                                      half_life=config.retrieval.recency_half_life,
                                      sources=candidate_sources(stage, config.retrieval),
                                      ref_times=first.ref_times)
        feature_seconds = time.perf_counter() - start
        s.done(f"{frame.height:,} rows x {len(names)} features")
    fit_frame, names = ranker_training_frame(cutoffs.labels, item_ids, content, config)
    valid = fit_frame.filter(pl.col(QUERY).str.ends_with("#1"))
    ranker_config = dataclasses.replace(config.ranker, n_estimators=trees, early_stopping_rounds=trees + 1)
    with step("fit ranker") as s:
        start = time.perf_counter()
        fit_ranker(fit_frame, valid, names, ranker_config, seed=seed, group=QUERY)
        fit_seconds = time.perf_counter() - start
        s.done(f"{trees} trees, {fit_frame.height:,} rows")
    return {
        "dataset": dataset,
        "feature_rows": frame.height,
        "features": len(names),
        "feature_rows_per_second": frame.height / feature_seconds,
        "ranker_rows": fit_frame.height,
        "ranker_trees": trees,
        "ranker_seconds": fit_seconds,
        "ranker_seconds_per_million_rows": fit_seconds / (fit_frame.height / 1e6),
    }


def train_evaluate_cost(dataset: str, cache: Path, output: Path) -> dict:
    """One `fuserank train-evaluate` in a child process: wall seconds and peak RSS (MB)."""
    env = dict(os.environ, FUSERANK_CACHE=str(cache))
    command = [sys.executable, "-m", "fuserank.cli", "train-evaluate", "--quiet", "--set", f"data.dataset={dataset}",
               "--set", "tracking.enabled=false", "--set", f"output_dir={output}"]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    log = child.stdout.read().decode("utf-8", "replace") if child.stdout else ""
    if status != 0:
        raise RuntimeError(f"train-evaluate on {dataset} failed ({status}):\n{log[-2000:]}")
    ndcg = next((line.split()[1] for line in log.splitlines() if line.startswith("test_ndcg_at_10 ")), None)
    return {"wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "test_ndcg_at_10": ndcg}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="ANN catalog sizes")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--features-dataset", default="movielens-100k",
                        help="dataset for feature and ranker costs ('' to skip)")
    parser.add_argument("--datasets", nargs="*", default=["movielens-100k", "movielens-1m"],
                        help="datasets for train-evaluate cold/warm (none to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/performance.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    report: dict = {
        "command": "python pipelines/benchmark_performance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "train_evaluate": [],
    }
    # First, while this process is small: a child's peak RSS includes this process's RSS at the
    # moment it is spawned (Linux carries the high-water mark across exec).
    report["parent_rss_mb_at_spawn"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory(prefix="fuserank-bench-") as tmp:
            cache = Path(tmp) / "cache"
            for temperature in ("cold", "warm"):
                with step(f"train-evaluate {dataset} {temperature}") as s:
                    cost = train_evaluate_cost(dataset, cache, Path(tmp) / "outputs")
                    s.done(f"{cost['wall_seconds']:.0f} s, {cost['peak_rss_mb']:.0f} MB")
                report["train_evaluate"].append({"dataset": dataset, "cache": temperature, **cost})
    report["ann"] = [ann_benchmark(n, args.dim, args.queries, args.seed) for n in args.sizes]
    if args.features_dataset:
        report["stage_costs"] = stage_costs(args.features_dataset, args.seed)
    atomic.write_json(Path(args.out), report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
