"""The headline numbers of `fuserank train-evaluate` over several seeds, for the docs.

    python pipelines/benchmark_headline.py --dataset movielens-100k --seeds 42 43 44
        [--protocols leave_last_out global_time] [--set section.key=value ...]

Runs the whole train-evaluate job (defaults plus --set, MLflow off, outputs in a temporary
folder) once per protocol and seed, and writes benchmarks/headline_<dataset>.json: each run's
printed summary and metrics, and per protocol the mean, standard deviation, min and max over
seeds of the headline metrics. The seed moves the behaviour embedding, the ranker and the
bootstrap; the split does not depend on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from fuserank import atomic  # noqa: E402
from fuserank.evaluation.benchmarking import spread_over_seeds  # noqa: E402
from fuserank.config import load_config  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402

PROTOCOLS = ("leave_last_out", "global_time")
SPREAD = ("test_ndcg_at_10", "test_recall_at_10", "test_mrr_at_10", "test_stage1_recall", "valid_ndcg_at_10",
          "test_popular_ndcg_at_10", "test_retrieval_ndcg_at_10", "test_cold_ndcg_at_10")


def main(argv: list[str] | None = None) -> int:
    from fuserank.jobs.train_evaluate import format_summary, train_evaluate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", help="output JSON (default benchmarks/headline_<dataset>.json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    report = {
        "command": "python pipelines/benchmark_headline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "seeds": args.seeds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "protocols": {},
    }
    with tempfile.TemporaryDirectory(prefix="fuserank-headline-") as scratch:
        for protocol in args.protocols:
            runs, summaries = {}, {}
            for seed in args.seeds:
                config = load_config(None, [f"data.dataset={args.dataset}", f"split.protocol={protocol}", f"seed={seed}",
                                            "tracking.enabled=false", f"output_dir={scratch}", *args.overrides])
                start = time.perf_counter()
                metrics, _ = train_evaluate(config)
                runs[seed] = {k: float(v) for k, v in metrics.items()}
                summaries[seed] = format_summary(metrics)
                print(f"\n{protocol}, seed {seed} ({time.perf_counter() - start:.0f} s):\n{summaries[seed]}", flush=True)
            report["protocols"][protocol] = {
                "over_seeds": spread_over_seeds(runs, SPREAD),
                "summary_by_seed": {str(s): text for s, text in summaries.items()},
                "metrics_by_seed": {str(s): m for s, m in runs.items()},
            }
    out = Path(args.out or f"benchmarks/headline_{args.dataset}.json")
    atomic.write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
