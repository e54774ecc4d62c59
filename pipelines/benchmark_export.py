"""Export throughput and peak memory; writes benchmarks/export.json.

Two measurements, each in a fresh process so its peak RSS (resource.getrusage) is its own:

- full: the whole `fuserank export` path (stage 1 rebuilt, candidates, features, the run's
  booster, top-K, Parquet) for every user of a synthetic catalog, after training one run on it;
- write: assignment, list building and batched Parquet writing for `--write-users` users (1M by
  default) with K=100, whose lists come from the most-popular server with seen items excluded
  (no model scoring), to show that memory stays bounded as rows grow.

The full path trains one run on `--train-users` users, then exports every user of a catalog
of `--full-users` users with the same items (a model serving more users than it saw); setup
(run lookup, data, stage-1 refit, booster) is timed apart from the per-user lists.

    python pipelines/benchmark_export.py --train-users 2000 --full-users 20000 --write-users 100000 1000000

With `--reference SRC` every measurement also runs with fuserank imported from SRC (e.g. a
checkout of an older commit), and `--repeats N` runs each N times, the codes taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORK = Path(tempfile.gettempdir()) / "fuserank-bench-export"  # scratch catalogs, runs and exports


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_run(n_train: int, n_users: int, n_items: int, top_k: int) -> dict:
    """Train one run on the first `n_train` users of a synthetic catalog, then put the whole
    catalog (`n_users` users, the same items; its first users are the trained ones) at the
    paths the run recorded, as a serving export finds it: more users than the model saw."""
    from fuserank.config import load_config
    from fuserank.data.synthetic import generate_catalog, write_catalog
    from fuserank.jobs.train_evaluate import train_evaluate

    root = WORK / f"full-{n_train}-{n_users}-{n_items}"
    items, interactions = generate_catalog(n_items=n_items, n_users=n_train, seed=11, interactions_per_user=(5, 25))
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    overrides = [
        "data.dataset=catalog", f"data.items_path={items_path}", f"data.interactions_path={interactions_path}",
        f"output_dir={root / 'outputs'}", "run_name=bench", "split.label_cutoffs=1", "ranker.n_estimators=100",
        f"tracking.tracking_uri=sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'mlruns' / 'artifacts'}", "tracking.experiment=bench-export",
        f"export.top_k={top_k}",
    ]
    start = time.perf_counter()
    _, folder = train_evaluate(load_config(None, overrides))
    seconds = time.perf_counter() - start
    run_id = json.loads((folder / "metrics.json").read_text())["run_id"]
    items, interactions = generate_catalog(n_items=n_items, n_users=n_users, seed=11, interactions_per_user=(5, 25))
    write_catalog(root / "catalog", items, interactions)
    spec = {"root": str(root), "overrides": overrides, "run_id": run_id, "train_users": n_train, "items": n_items,
            "train_seconds": round(seconds, 1), "interactions": interactions.height}
    (root / "run.json").write_text(json.dumps(spec))
    return spec


def run_full(root: Path) -> dict:
    """Time `fuserank export` of every user of a trained run's catalog (see `train_run`).

    The setup (finding the run, loading data, refitting stage 1 on every interaction, loading
    the booster) is timed apart from the per-user path (candidates, features, booster, top-K,
    Parquet), which is what grows with the users.
    """
    import fuserank.jobs.export as export_job
    from fuserank.config import load_config

    spec = json.loads((root / "run.json").read_text())
    config = load_config(None, spec["overrides"])
    timed: dict[str, float] = {}
    write_export = export_job.write_export

    def write_timed(*args, **kwargs):  # batches are built lazily while they are written
        timed["start"], timed["cpu_start"] = time.perf_counter(), time.process_time()
        try:
            return write_export(*args, **kwargs)
        finally:
            timed["end"], timed["cpu_end"] = time.perf_counter(), time.process_time()

    export_job.write_export = write_timed
    start = time.perf_counter()
    manifest, _ = export_job.export(config, root / "export", run_id=spec["run_id"])
    seconds = time.perf_counter() - start
    users = manifest["users"]["total"]
    lists_seconds = timed["end"] - timed["start"]
    return {
        "path": "full two-stage (stage 1 refit, candidates, features, booster, top-K, Parquet)",
        "users": users, "items": spec["items"], "interactions": spec["interactions"],
        "train_users": spec["train_users"], "top_k": manifest["top_k"], "rows": manifest["rows"],
        "candidates_per_user": "ann {} + ease {} + popular {}, deduplicated".format(
            config.retrieval.ann_candidates, config.behaviour.ease_l2 and config.retrieval.ease_candidates,
            config.retrieval.popular_candidates),
        "batch_users": config.export.batch_users,
        "export_seconds": round(seconds, 1), "users_per_second": round(users / seconds, 1),
        "setup_seconds": round(timed["start"] - start, 1), "lists_seconds": round(lists_seconds, 1),
        "lists_users_per_second": round(users / lists_seconds, 1),
        # CPU seconds of every thread of the process: the work done, which other jobs on the
        # machine change far less than the wall time.
        "lists_cpu_seconds": round(timed["cpu_end"] - timed["cpu_start"], 1),
        "train_seconds": spec["train_seconds"], "peak_rss_mb": round(peak_rss_mb(), 0),
        "file_mb": round(manifest["files"]["ranked_lists.parquet"]["bytes"] / 1e6, 1),
        "lists_sha256": manifest["files"]["ranked_lists.parquet"]["sha256"],
    }


def run_write(n_users: int, n_items: int, top_k: int, per_user: int) -> dict:
    """Assign, build (most-popular, seen excluded) and write K items for `n_users` synthetic users."""
    import numpy as np
    import polars as pl

    from fuserank import schema
    from fuserank.jobs import arms
    from fuserank.jobs.arms import Server, assign_arms, export_batches, plan_arms, popular_lists, popularity_pool
    from fuserank.jobs.export import write_export

    rng = np.random.default_rng(0)
    item_ids = [f"i{i:06d}" for i in range(n_items)]
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    picks = rng.choice(n_items, size=n_users * per_user, p=popularity / popularity.sum())
    users = pl.Series([f"u{u:08d}" for u in range(n_users)], dtype=pl.String)
    seen = pl.DataFrame({schema.USER_ID: users.gather(np.repeat(np.arange(n_users), per_user)),
                         schema.ITEM_ID: pl.Series(item_ids).gather(picks)}).unique()
    before_mb = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    # The pool counts through popularity.item_counts, which reads times and ratings.
    pool = popularity_pool(seen.with_columns(pl.lit(0, pl.Int64).alias(schema.TIMESTAMP),
                                             pl.lit(None, pl.Float64).alias(schema.RATING)), item_ids)
    plans = plan_arms({"control": "popular", "treatment": "popular"}, {"control": 0.45, "treatment": 0.45}, 0.1)
    assignments = assign_arms(users.to_list(), plans, "bench").with_columns(pl.lit(False).alias(schema.COLD_START))
    assign_seconds = time.perf_counter() - start

    def lists(us):  # what older code's export built for a most-popular arm
        mine = seen.join(pl.DataFrame({schema.USER_ID: us}, schema={schema.USER_ID: pl.String}),
                         on=schema.USER_ID, how="semi")
        return popular_lists(pool, mine, us, top_k)

    if hasattr(arms, "popular_server"):  # the export's own most-popular arm, serving both arms
        takes_seen = "takes_seen" in Server.__dataclass_fields__  # older code: it held the seen pairs
        server = arms.popular_server(pool, top_k) if takes_seen else arms.popular_server(pool, seen, top_k)
        servers = {arm: server for arm in ("control", "treatment")}
    else:
        clean = {"clean": True} if "clean" in Server.__dataclass_fields__ else {}  # older code: no flag
        servers = {arm: Server(None, "most-popular", lists, **clean) for arm in ("control", "treatment")}
    served = assignments.filter(pl.col(schema.ARM) != "holdout")
    batches = export_batches(served, servers, seen, pool, top_k, True, 10_000)
    out = WORK / f"write-{n_users}"
    if hasattr(arms, "arm_users"):  # assignments streamed in batches, like the lists
        manifest = write_export(out, batches, assignments.iter_slices(10_000), arms.arm_users(assignments), plans,
                                servers, {"salt": "bench"}, [], "parquet")
    else:
        manifest = write_export(out, batches, assignments, plans, servers, {"salt": "bench"}, [], "parquet")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "path": "assignment + most-popular lists (seen excluded) + batched Parquet writing, no model scoring",
        "users": n_users, "served_users": served.height, "items": n_items, "seen_pairs": seen.height,
        "top_k": top_k, "rows": manifest["rows"], "batch_users": 10_000,
        "assign_seconds": round(assign_seconds, 1), "export_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "users_per_second": round(n_users / seconds, 0),
        "peak_rss_mb_before_export": round(before_mb, 0), "peak_rss_mb": round(peak_rss_mb(), 0),
        "file_mb": round(manifest["files"]["ranked_lists.parquet"]["bytes"] / 1e6, 1),
        "lists_sha256": manifest["files"]["ranked_lists.parquet"]["sha256"],
    }


def child(argv: list[str], src: str | None = None) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON (`src`: import fuserank
    from that source folder instead, e.g. a checkout of an older commit as the reference)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-users", type=int, default=2000, help="users the benchmark run is trained on")
    parser.add_argument("--full-users", type=int, nargs="*", default=[20_000], help="users exported (full path)")
    parser.add_argument("--full-items", type=int, default=1000)
    parser.add_argument("--write-users", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--write-items", type=int, default=5000)
    parser.add_argument("--per-user", type=int, default=5, help="seen items per synthetic user (write path)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--reference", help="also run every measurement with fuserank imported from this source "
                        "folder (e.g. `git worktree add /tmp/ref <commit>` then /tmp/ref/src), in the same session")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every measurement, the codes taking turns "
                        "(on a shared machine one run of each says little)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/export.json"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from fuserank.progress import set_quiet

        set_quiet(True)
        kind = args.child[0]
        if kind == "train":
            result = train_run(int(args.child[1]), int(args.child[2]), args.full_items, args.top_k)
        elif kind == "full":
            result = run_full(Path(args.child[1]))
        else:
            result = run_write(int(args.child[1]), args.write_items, args.top_k, args.per_user)
        print(json.dumps(result))
        return
    common = ["--full-items", str(args.full_items), "--write-items", str(args.write_items),
              "--per-user", str(args.per_user), "--top-k", str(args.top_k)]
    codes = {"this checkout": None} | ({"reference": args.reference} if args.reference else {})
    results = {"machine": f"{os.cpu_count()} cores", "reference": args.reference and "see each run's code",
               "command": " ".join(["python", *sys.argv]), "repeats": args.repeats, "runs": []}

    def record(run: dict, code: str) -> None:
        results["runs"].append({"code": code, **run})
        print(json.dumps(results["runs"][-1]), flush=True)

    for n in args.full_users:
        # Trained by the reference code when there is one: a run records its whole config, and
        # older code rejects the keys added since, while newer code reads older runs.
        spec = child(["train", str(args.train_users), str(n), *common], args.reference)
        for _ in range(args.repeats):
            for code, src in codes.items():  # the same trained run and catalog for every code
                record(child(["full", spec["root"], *common], src), code)
    for n in args.write_users:
        for _ in range(args.repeats):
            for code, src in codes.items():
                record(child(["write", str(n), *common], src), code)
    from fuserank import atomic

    atomic.write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
