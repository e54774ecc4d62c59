"""Cold-start ablation (issue 17): per-modality and LLM ablation on the cold-item slice.

    python pipelines/benchmark_cold.py --dataset movielens-100k --llm --seeds 42 43 44
    python pipelines/benchmark_cold.py --dataset synthetic --catalog DIR --seeds 42 43 44

Runs `fuserank ablate` under the cold-item protocol (split.cold_items = 0.1 of the items by a
seeded hash, and the content-only "cold" candidate source, retrieval.cold_candidates = 100) once
per seed: the full model, each modality removed (and the LLM group with --llm), behaviour
removed, and the full run's baselines (most-popular, stage-1 order, content kNN on text,
random) as rows, each on every test user and on the warm-item and cold-item slices, with
bootstrap 95% CIs and paired CIs against the full model. `--dataset synthetic` reads the
catalog folder written by pipelines/make_synthetic_catalog.py (items.parquet,
interactions.parquet) with per-modality candidates on (retrieval.modality_candidates = 50, as
the warm synthetic ablation). With --llm the LLM's hidden-state view of each item's text is on
(descriptions and user profiles off: generating them for ML-100K did not fit a shared 2-core
machine; add --set llm.descriptions=true --set llm.profiles=true, see docs/benchmarks.md) and
its cost is recorded (model calls, wall seconds of its preparation).

Writes benchmarks/cold_<dataset>.json (settings, per-seed tables and printouts, the spread over
seeds of every variant's NDCG@10 and delta on all, warm and cold users) and
benchmarks/cold_<dataset>.txt (the tables). The settings are fixed before any test number is
seen; nothing here is tuned on test.
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
from fuserank.config import load_config  # noqa: E402
from fuserank.evaluation.benchmarking import spread_over_seeds  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402

COLD = ["split.cold_items=0.1", "split.cold_rule=hash", "retrieval.cold_candidates=100"]
SYNTHETIC = ["data.dataset=catalog", "retrieval.modality_candidates=50"]
LLM = ["llm.enabled=true", "llm.profiles=false", "llm.descriptions=false"]
COLUMNS = ("test_ndcg_at_10", "delta_vs_full", "delta_ci_low", "delta_ci_high")
KINDS = ("", "warm_", "cold_")


def cold_arguments(description: str, llm_help: str) -> argparse.ArgumentParser:
    """The arguments every cold-item benchmark takes (dataset, catalog, LLM views, seeds,
    overrides, quiet); `checked_cold_arguments` reads them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", default="movielens-100k", choices=("movielens-100k", "movielens-1m", "synthetic"))
    parser.add_argument("--catalog", help="folder of the synthetic catalog (--dataset synthetic)")
    parser.add_argument("--llm", action="store_true", help=llm_help)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    return parser


def checked_cold_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv` (a synthetic catalog needs its folder) and set the progress output."""
    args = parser.parse_args(argv)
    if args.dataset == "synthetic" and not args.catalog:
        parser.error("--dataset synthetic needs --catalog DIR")
    set_quiet(args.quiet)
    return args


def settings(args: argparse.Namespace, seed: int, scratch: str) -> list[str]:
    """The --set overrides of one seed's run."""
    data = [f"data.dataset={args.dataset}"]
    if args.dataset == "synthetic":
        folder = Path(args.catalog)
        data = [*SYNTHETIC, f"data.items_path={folder / 'items.parquet'}",
                f"data.interactions_path={folder / 'interactions.parquet'}"]
    return [*data, *COLD, *(LLM if args.llm else []), f"seed={seed}", "tracking.enabled=false",
            f"output_dir={scratch}", f"run_name=cold-{seed}", *args.overrides]


class LLMCost:
    """Counts the LLM's model calls and the wall time of its preparation, around the job."""

    def __init__(self) -> None:
        self.models: list = []
        self.seconds = 0.0

    def __enter__(self) -> LLMCost:
        import fuserank.jobs.train_evaluate as job
        import fuserank.ranking.llm_features as llm_features

        self._saved = (job.prepare_llm, llm_features.load_causal_lm)
        prepare, load = self._saved

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return prepare(*a, **k)
            finally:
                self.seconds += time.perf_counter() - start

        def kept(*a, **k):
            model = load(*a, **k)
            self.models.append(model)
            return model

        job.prepare_llm, llm_features.load_causal_lm = timed, kept
        return self

    def __exit__(self, *exc) -> None:
        import fuserank.jobs.train_evaluate as job
        import fuserank.ranking.llm_features as llm_features

        job.prepare_llm, llm_features.load_causal_lm = self._saved

    @property
    def calls(self) -> int:
        return sum(model.calls for model in self.models)


def main(argv: list[str] | None = None) -> int:
    from fuserank.evaluation.ablation import format_table
    from fuserank.jobs.train_evaluate import ablate

    parser = cold_arguments(__doc__.split("\n\n")[0], "LLM views on, with the ablation's without_llm row")
    parser.add_argument("--out", help="output JSON (default benchmarks/cold_<dataset>.json)")
    args = checked_cold_arguments(parser, argv)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    report = {
        "command": f"python pipelines/benchmark_cold.py {argv_text}",
        "dataset": args.dataset,
        "seeds": args.seeds,
        "settings": [s for s in settings(args, 0, "SCRATCH") if not s.startswith(("seed=", "output_dir=", "run_name="))],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": {},
    }
    flat: dict[int, dict[str, float]] = {}
    texts = []
    with tempfile.TemporaryDirectory(prefix="fuserank-cold-") as scratch:
        for seed in args.seeds:
            config = load_config(None, settings(args, seed, scratch))
            start = time.perf_counter()
            with LLMCost() as cost:
                table, _ = ablate(config)
            wall = time.perf_counter() - start
            text = format_table(table)
            print(f"\nseed {seed} ({wall:.0f} s):\n{text}", flush=True)
            texts.append(f"seed {seed}:\n{text}")
            run = {"wall_seconds": wall, "table": table.to_dicts(), "printout": text}
            if args.llm:
                run["llm"] = {"model_calls": cost.calls, "prepare_wall_seconds": cost.seconds, "model": config.llm.model}
            report["runs"][str(seed)] = run
            flat[seed] = {f"{row['variant']}/{kind}{column}": row[f"{kind}{column}"]
                          for row in table.iter_rows(named=True) for kind in KINDS for column in COLUMNS
                          if row.get(f"{kind}{column}") is not None and row[f"{kind}{column}"] == row[f"{kind}{column}"]}
    keys = sorted({key for values in flat.values() for key in values})
    report["over_seeds"] = spread_over_seeds(flat, keys)
    out = Path(args.out or f"benchmarks/cold_{args.dataset}.json")
    atomic.write_json(out, report)
    atomic.write_text(out.with_suffix(".txt"), f"{report['command']}\n\n" + "\n\n".join(texts) + "\n")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
