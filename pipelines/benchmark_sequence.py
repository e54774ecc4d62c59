"""The SASRec sequence model alone, on a protocol's validation and test cut-offs (split.protocol,
leave-last-out by default): quality, wall time, epochs.

Each cut-off's model is fitted on that cut-off's history as train-evaluate fits it (from the
model of the protocol's shared history under sequence.refit "continue"; its early stopping
holds out each user's last history item, so it sees nothing beyond that history) and ranks the
whole catalog minus each user's history items for every user of the cut-off;
fuserank.evaluation.metrics scores the lists against the cut-off's targets. Neither cut-off's
targets choose anything, so the validation and test numbers are alike in kind and show how
predictable each position is for the model. Most-popular on the same history is the floor
beside each. Writes benchmarks/sequence_<dataset>.json (per seed, and the spread over seeds).

    .venv/bin/python pipelines/benchmark_sequence.py --dataset movielens-100k
        [--seeds 42 43 44] [--set sequence.key=value ...] [--cache-dir DIR] [--quiet]

With --cache-dir set to train-evaluate's sequence cache (<sources.cache_dir>/sequence) and the
same settings, the models of an earlier train-evaluate are read back instead of trained.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import polars as pl

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fuserank import atomic, schema  # noqa: E402
from fuserank.config import load_config, to_dict  # noqa: E402
from fuserank.data.cutoffs import build_cutoffs  # noqa: E402
from fuserank.evaluation.metrics import evaluate_rankings, summarise  # noqa: E402
from fuserank.evaluation.benchmarking import spread_over_seeds  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402
from fuserank.provenance import command_line  # noqa: E402

KS = (10, 20)
HEADLINE = ("ndcg_at_10", "recall_at_10", "recall_at_20", "mrr_at_10")


def score_cutoff(cutoff, item_ids, config, seed: int, cache: Path | None) -> dict:
    """Fit (or load) the cut-off's model as train-evaluate does, rank its users, score both
    SASRec and most-popular against its targets."""
    from fuserank.evaluation.peers import recommend
    from fuserank.retrieval.sequence import fit_sequence_model

    start = time.perf_counter()
    model = fit_sequence_model(cutoff.history, item_ids, config.sequence, seed, cache, cutoff.shared_history)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ranked = model.recommend(cutoff.history, cutoff.users, k=max(KS))
    rank_seconds = time.perf_counter() - start
    sasrec = summarise(evaluate_rankings(ranked, cutoff.targets, KS))
    popular = summarise(evaluate_rankings(recommend("popular", {}, cutoff.history, cutoff.users, item_ids, max(KS),
                                                    seed), cutoff.targets, KS))
    return {
        "users": len(cutoff.users), "history_rows": cutoff.history.height, **target_shape(cutoff),
        "epochs": model.epochs, "best_epoch": model.best_epoch, "inner_valid_ndcg_at_10": model.best_valid_ndcg,
        "valid_ndcg_per_epoch": list(model.valid_ndcg), "train_loss_per_epoch": list(model.train_loss),
        "continued": model.started_from is not None, "from_cache": model.from_cache,
        "fit_seconds": fit_seconds, "rank_seconds": rank_seconds,
        "sasrec": {key: sasrec[key] for key in HEADLINE},
        "most_popular": {key: popular[key] for key in HEADLINE},
    }


def shared_model(cutoff, item_ids, config, seed: int, cache: Path | None) -> dict | None:
    """The training record of the shared-history model, which every cut-off continued from (or,
    under sequence.refit "shared", used as it is); None under "scratch". It is read back from
    the cache the cut-offs' fits filled; train_seconds is None for models cached before their
    records kept it."""
    from fuserank.retrieval.sequence import fit_sequence_model

    if config.sequence.refit == "scratch":
        return None
    model = fit_sequence_model(cutoff.shared_history, item_ids, config.sequence, seed, cache)
    return {"history_rows": cutoff.shared_history.height, "epochs": model.epochs, "best_epoch": model.best_epoch,
            "inner_valid_ndcg_at_10": model.best_valid_ndcg, "valid_ndcg_per_epoch": list(model.valid_ndcg),
            "train_seconds": model.train_seconds}


def target_shape(cutoff) -> dict:
    """What sets one cut-off's targets apart: the share that tie their user's newest history
    timestamp, and how many history interactions the target items have (median)."""
    newest = cutoff.history.group_by(schema.USER_ID).agg(pl.col(schema.TIMESTAMP).max().alias("newest"))
    tied = cutoff.targets.join(newest, on=schema.USER_ID).select((pl.col(schema.TIMESTAMP) == pl.col("newest")).mean())
    counts = cutoff.history.group_by(schema.ITEM_ID).len()
    seen = cutoff.targets.join(counts, on=schema.ITEM_ID, how="left")["len"].fill_null(0)
    return {"targets_tied_with_newest_history": float(tied.item()), "target_item_median_count": float(seen.median())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-100k", help="data.dataset (movielens-100k, movielens-1m)")
    parser.add_argument("--config", help="fuserank YAML config (defaults otherwise)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--cache-dir", help="fitted-model cache (default: none, so every fit is timed)")
    parser.add_argument("--out", help="output JSON (default benchmarks/sequence_<dataset>.json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    config = load_config(args.config, [f"data.dataset={args.dataset}", *args.overrides])
    from fuserank.jobs.train_evaluate import load_data

    items, interactions = load_data(config)
    item_ids = items[schema.ITEM_ID].to_list()
    cutoffs = build_cutoffs(interactions, config.split)
    cache = Path(args.cache_dir) if args.cache_dir else None
    by_seed = {str(seed): {cutoff.name: score_cutoff(cutoff, item_ids, config, seed, cache)
                           for cutoff in (cutoffs.valid, cutoffs.test)} for seed in args.seeds}
    shared = {str(seed): shared_model(cutoffs.test, item_ids, config, seed, cache) for seed in args.seeds}
    flat = {seed: {f"{name}_{system}_{key}": found[name][system][key] for name in found
                   for system in ("sasrec", "most_popular") for key in HEADLINE} for seed, found in by_seed.items()}
    report = {
        "command": "python " + command_line(["pipelines/benchmark_sequence.py", *(argv if argv is not None else sys.argv[1:])]),
        "dataset": args.dataset,
        "protocol": config.split.protocol,
        "seeds": args.seeds,
        "sequence": to_dict(config.sequence),
        "threads": {"torch": config.sequence.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1min": os.getloadavg()[0]},
        "catalog_items": len(item_ids),
        "by_seed": by_seed,
        "shared_history_model": shared,
        "over_seeds": spread_over_seeds(flat, list(next(iter(flat.values())))),
        "notes": "history items excluded from every list; full catalog ranked; each cut-off's SASRec stops on the "
                 "NDCG@10 of each user's last history item (inside its history) and keeps the best epoch's weights",
    }
    out = Path(args.out or f"benchmarks/sequence_{args.dataset}.json")
    atomic.write_json(out, report)
    for name, values in report["over_seeds"].items():
        if name.endswith("sasrec_ndcg_at_10"):
            print(f"{name}: {values['mean']:.4f} +- {values['std']:.4f} over seeds {', '.join(values['by_seed'])}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
