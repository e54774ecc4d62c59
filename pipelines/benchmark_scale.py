"""Scaling benchmark: wall time and peak RSS of the driver and of each worker, per step, on a
2-worker LocalCluster, for synthetic catalogs of growing user counts; writes benchmarks/scale.json.

Each size's catalog is generated and written to Parquet by a separate process first (data
preparation, not measured); then a fresh driver process with a fresh cluster runs the steps. A
thread samples the RSS of the driver and of every worker process (psutil, every 0.2 s); a
step's peak is the largest sample taken while it ran, and `driver_start_mb` the driver's RSS
when it began. Steps, on the leave-last-out test cut-off (one ranker-label cut-off besides):

- read (workers): the interactions file read, checked and cut into 2 user partitions by the
  workers (jobs/distributed_data.py's `read_user_parts`); the driver reads the items and the
  file's metadata;
- cut-offs (workers): every cut-off built on each partition (jobs/distributed_cutoffs.py's
  `cutoff_shares`); the driver gets target counts;
- stage 1 and features (workers, kept there): the test cut-off's history put together on a
  worker, stage 1 (behaviour SVD, FAISS index) fitted there and copied to the other, then
  candidates, features and labels of each partition's users where they lie
  (`cluster_cutoff`, jobs/distributed_frames.py's `frames_on_workers` with `FitOnWorker`); the
  driver gets row counts;
- ranker (workers): data-parallel LightGBM from those partitions (`fit_ranker_parts`); the
  driver fetches the bin sample's rows (at most 200,000);
- score (workers): the same users' candidates scored where they lie (`scores_on_workers`): the
  per-user stage-1 counts and the covered items come back, and the per-user metric rows of the
  ranker's and stage 1's lists stay on the workers, no list kept (in-sample: a measure of where
  memory goes, not of quality);
- export (workers read the data): the interactions read again by the workers, into user
  partitions in user_id order; the whole history put together on a worker, where stage 1 is
  fitted (export.ArmLists); the popularity pool from each partition's item counts; then every
  user assigned to an arm (45% retrieval-only, 45% most-popular, 10% holdout) and each batch's
  lists built on the workers from the partitions that hold its users
  (jobs/distributed_export.py's `export_parts`), and the driver writes the lists and
  assignments files, batch by batch, and the manifest;
- train-evaluate, the whole command (`data.dataset=catalog`, `dask.enabled`, the same
  candidates and ranker): the workers read the file again, build every cut-off, the frames,
  the ranker, the scores and the baselines (jobs/distributed_protocol.py), and the driver
  encodes the items, computes the metrics from the per-user rows that come back and writes
  the outputs (the test's top-k lists a partition at a time).

Candidates per user are fewer than the defaults and the same at every size (--ann, --popular).

    python pipelines/benchmark_scale.py --users 100000 300000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class RssSampler:
    """Peak RSS (MB) of a set of processes, sampled in a thread, per named step."""

    def __init__(self, pids: dict[str, int], every: float = 0.2) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.every, self.current = every, None
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            step = self.current
            if step is not None:
                peaks = self.peaks.setdefault(step, {})
                for name, proc in self.procs.items():
                    try:
                        mb = proc.memory_info().rss / 2**20
                    except Exception:  # noqa: BLE001 - a worker restarting has no RSS for a moment
                        continue
                    peaks[name] = max(peaks.get(name, 0.0), mb)
            time.sleep(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_size(folder: Path, ann: int, popular: int, batch_users: int, rounds: int) -> dict:
    """Every step for the catalog written in `folder`, in this process (the driver)."""
    import polars as pl

    from fuserank import schema
    from fuserank.config import BehaviourConfig, DaskConfig, RankerConfig, RetrievalConfig, load_config
    from fuserank.jobs.arms import Server, plan_arms, popular_server
    from fuserank.jobs.distributed import dask_client, fit_ranker_parts
    from fuserank.jobs.distributed_cutoffs import cluster_cutoff, cutoff_shares
    from fuserank.jobs.distributed_data import read_user_parts
    from fuserank.jobs.distributed_export import export_parts, pool_from_parts, whole_history
    from fuserank.jobs.distributed_frames import FitOnWorker, frames_on_workers, scores_on_workers
    from fuserank.jobs.export import ArmLists, write_export
    from fuserank.jobs.train_evaluate import train_evaluate

    retrieval = RetrievalConfig(ann_candidates=ann, popular_candidates=popular, ease_candidates=0)
    config = dataclasses.replace(load_config(None, ["seed=1", "split.label_cutoffs=1"]), retrieval=retrieval,
                                 behaviour=BehaviourConfig(dim=32, ease_l2=0.0),
                                 ranker=RankerConfig(n_estimators=rounds, early_stopping_rounds=0, n_jobs=1))
    item_ids = pl.read_parquet(folder / "items.parquet", columns=[schema.ITEM_ID])[schema.ITEM_ID].to_list()
    path = folder / "interactions.parquet"
    steps: dict[str, dict] = {}
    with dask_client(DaskConfig(enabled=True, n_workers=2, threads_per_worker=1)) as client:
        pids = {"driver": os.getpid()} | {
            f"worker {i}": pid for i, pid in enumerate(client.run(os.getpid).values())}
        sampler = RssSampler(pids)
        driver = sampler.procs["driver"]

        def timed(name: str, work):
            steps[name] = {"driver_start_mb": round(driver.memory_info().rss / 2**20)}
            sampler.current = name
            start = time.perf_counter()
            result = work()
            steps[name]["seconds"] = round(time.perf_counter() - start, 1)
            time.sleep(2 * sampler.every)  # a last sample after the step
            sampler.current = None
            return result

        parts = timed("read (workers)", lambda: read_user_parts(client, path, item_ids, 2))
        shares = timed("cut-offs (workers)", lambda: cutoff_shares(client, parts, config.split))
        del parts
        test = cluster_cutoff(client, shares, "test")
        frames, names = timed("stage 1 and features (workers, kept there)", lambda: frames_on_workers(
            client, config, FitOnWorker(item_ids, {}), test))
        ranker, _ = timed("ranker (workers)", lambda: fit_ranker_parts(
            client, [frames], None, names, config.ranker, config.seed))
        scores = timed("score (workers, per-user rows kept there)", lambda: scores_on_workers(
            client, frames, test.targets, ranker, (10, 20), ann, 0))
        rows, scored_users, test_targets = frames.height, scores.stage1.height, sum(shares.targets["test"])
        del frames, scores, test, shares

        def export() -> dict:
            parts = read_user_parts(client, path, item_ids, 2, by_user=True)
            whole = whole_history(client, parts)
            build = ArmLists(client, whole, item_ids, 20, True)
            plans = plan_arms({"plain": "retrieval", "control": "popular"}, {"plain": 0.45, "control": 0.45}, 0.1)
            pool = pool_from_parts(client, parts, item_ids)
            servers = {"plain": Server(None, "retrieval-only", build.retrieval(build.stage(config, {}, None), config)),
                       "control": popular_server(pool, 20)}
            built = export_parts(client, parts, plans, "scale", servers, pool, 20, True, batch_users)
            with tempfile.TemporaryDirectory(prefix="fuserank-scale-export-") as out:
                manifest = write_export(Path(out) / "export", built.lists, built.assignments, built.users, plans,
                                        servers, {}, [], "parquet")
            return {"list_rows": manifest["rows"], "exported_users": manifest["users"]["total"],
                    "lists_mb": round(manifest["files"]["ranked_lists.parquet"]["bytes"] / 2**20, 1)}

        exported = timed("export (workers read the data)", export)

        def command() -> dict:
            with tempfile.TemporaryDirectory(prefix="fuserank-scale-run-") as out:
                metrics, _ = train_evaluate(load_config(None, [
                    "data.dataset=catalog", f"data.items_path={folder / 'items.parquet'}",
                    f"data.interactions_path={path}", f"output_dir={out}", "tracking.enabled=false",
                    "dask.enabled=true", "seed=1", "split.label_cutoffs=1", f"retrieval.ann_candidates={ann}",
                    f"retrieval.popular_candidates={popular}", "retrieval.ease_candidates=0", "behaviour.dim=32",
                    "behaviour.ease_l2=0.0", f"ranker.n_estimators={rounds}", "ranker.early_stopping_rounds=0",
                    "ranker.n_jobs=1"]))
            return {key: metrics[key] for key in ("n_test_users", "ranker_train_rows", "test_ndcg_at_10",
                                                  "test_popular_ndcg_at_10", "test_stage1_recall")}

        run = timed("train-evaluate, the whole command (workers read the data)", command)
        sampler.stop()
    for name, peaks in sampler.peaks.items():
        steps[name]["peak_rss_mb"] = {k: round(v) for k, v in sorted(peaks.items())}
    return {"ann_candidates": ann, "popular_candidates": popular, "features": len(names), "feature_rows": rows,
            "test_targets": test_targets, "ranker_rounds": rounds, "scored_users": scored_users,
            **exported, "batch_users": batch_users, "train_evaluate": run, "steps": steps}


def write_size(folder: Path, n_users: int, n_items: int) -> dict:
    """Generate one size's catalog (about 20 interactions a user) and write it to `folder`."""
    from fuserank.data.synthetic import generate_catalog, write_catalog

    items, interactions = generate_catalog(n_items=n_items, n_users=n_users, seed=5, interactions_per_user=(15, 25))
    write_catalog(folder, items, interactions)
    return {"users": n_users, "items": n_items, "interactions": interactions.height}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--ann", type=int, default=20, help="ANN candidates per user (the same at every size)")
    parser.add_argument("--popular", type=int, default=5, help="popular candidates per user")
    parser.add_argument("--batch-users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50, help="ranker boosting rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale.json"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        print(json.dumps(write_size(args.write, args.users[0], args.items)))
        return
    if args.child:
        from fuserank.progress import set_quiet

        set_quiet(True)
        print(json.dumps(run_size(args.child, args.ann, args.popular, args.batch_users, args.rounds)))
        return
    results = {"machine": f"{os.cpu_count()} cores", "cluster": "LocalCluster, 2 workers x 1 thread", "runs": []}
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    for n in args.users:
        with tempfile.TemporaryDirectory(prefix="fuserank-scale-") as folder:
            written = subprocess.run([sys.executable, __file__, "--write", folder, "--users", str(n),
                                      "--items", str(args.items)], capture_output=True, text=True, env=env, check=True)
            run = json.loads(written.stdout.strip().splitlines()[-1])
            done = subprocess.run([sys.executable, __file__, "--child", folder, "--ann", str(args.ann),
                                   "--popular", str(args.popular), "--batch-users", str(args.batch_users),
                                   "--rounds", str(args.rounds)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            results["runs"].append(run | {"failed": done.stderr[-2000:]})
            print(f"{n} users failed:\n{done.stderr[-2000:]}", flush=True)
            break  # a larger catalog would not fit either
        results["runs"].append(run | json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results["runs"][-1]), flush=True)
    from fuserank import atomic

    atomic.write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
