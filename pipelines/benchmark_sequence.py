"""The SASRec sequence model alone, on the leave-last-out test cut-off: quality, wall time, epochs.

The model is fitted on the test cut-off's history (train + valid; its early stopping holds out
each user's last history item, so it sees nothing beyond that history) and ranks the whole
catalog minus each user's history items for every test user; fuserank.evaluation.metrics scores the lists.
Most-popular on the same history is the floor beside it. Writes
benchmarks/sequence_<dataset>.json.

    OMP_NUM_THREADS=1 .venv/bin/python pipelines/benchmark_sequence.py --dataset movielens-100k
        [--seed 42] [--set sequence.key=value ...] [--cache-dir DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fuserank import atomic, schema  # noqa: E402
from fuserank.config import load_config, to_dict  # noqa: E402
from fuserank.data.cutoffs import build_cutoffs  # noqa: E402
from fuserank.evaluation.metrics import evaluate_rankings, summarise  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402

KS = (10, 20)
HEADLINE = ("ndcg_at_10", "recall_at_10", "recall_at_20", "mrr_at_10")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-100k", help="data.dataset (movielens-100k, movielens-1m)")
    parser.add_argument("--config", help="fuserank YAML config (defaults otherwise)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--cache-dir", help="fitted-model cache (default: none, so the fit is timed)")
    parser.add_argument("--out", help="output JSON (default benchmarks/sequence_<dataset>.json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    config = load_config(args.config, [f"data.dataset={args.dataset}", *args.overrides])
    from fuserank.evaluation.peers import recommend
    from fuserank.retrieval.sequence import fit_sequence_model
    from fuserank.jobs.train_evaluate import load_data

    items, interactions = load_data(config)
    item_ids = items[schema.ITEM_ID].to_list()
    test = build_cutoffs(interactions, config.split).test
    users = test.users

    start = time.perf_counter()
    model = fit_sequence_model(test.history, item_ids, config.sequence, config.seed,
                               Path(args.cache_dir) if args.cache_dir else None)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ranked = model.recommend(test.history, users, k=max(KS))
    rank_seconds = time.perf_counter() - start
    sasrec = summarise(evaluate_rankings(ranked, test.targets, KS), prefix="test_")
    popular = summarise(evaluate_rankings(recommend("popular", {}, test.history, users, item_ids, max(KS),
                                                    config.seed), test.targets, KS), prefix="test_")

    report = {
        "command": "python pipelines/benchmark_sequence.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "protocol": config.split.protocol,
        "seed": config.seed,
        "sequence": to_dict(config.sequence),
        "device": model.device,
        "threads": {"torch": config.sequence.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1min": os.getloadavg()[0]},
        "test_users": len(users),
        "history_rows": test.history.height,
        "catalog_items": len(item_ids),
        "epochs": model.epochs,
        "best_epoch": model.best_epoch,
        "valid_ndcg_at_10": model.best_valid_ndcg,
        "valid_ndcg_per_epoch": list(model.valid_ndcg),
        "train_loss_per_epoch": list(model.train_loss),
        "from_cache": model.from_cache,
        "fit_seconds": fit_seconds,
        "seconds_per_epoch": fit_seconds / model.epochs,
        "rank_seconds": rank_seconds,
        "sasrec": {key: sasrec[f"test_{key}"] for key in HEADLINE},
        "most_popular": {key: popular[f"test_{key}"] for key in HEADLINE},
        "notes": "history items excluded from every list; full catalog ranked; SASRec stops on the NDCG@10 of "
                 "each user's last history item (inside the history) and keeps the best epoch's weights",
    }
    out = Path(args.out or f"benchmarks/sequence_{args.dataset}.json")
    atomic.write_json(out, report)
    print(f"SASRec    {' '.join(f'{k}={v:.4f}' for k, v in report['sasrec'].items())}")
    print(f"popular   {' '.join(f'{k}={v:.4f}' for k, v in report['most_popular'].items())}")
    print(f"{model.epochs} epochs (best {model.best_epoch}, valid NDCG@10 {model.best_valid_ndcg:.4f}), "
          f"fit {fit_seconds:.0f} s, {dataclasses.asdict(config.sequence)}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
