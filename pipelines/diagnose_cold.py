"""Where the ranker puts zero-interaction candidates, per cut-off, under the cold-item protocol (issue 17).

    python pipelines/diagnose_cold.py --dataset movielens-100k --seed 42
    python pipelines/diagnose_cold.py --dataset movielens-100k --seed 42 --cold-in-earlier-catalogs

Builds the label, validation and test frames of one run with the benchmark's cold settings
(pipelines/benchmark_cold.py: split.cold_items = 0.1 by hash, retrieval.cold_candidates = 100,
text on), trains the ranker as train-evaluate does (early stopping on validation), scores every
frame and reports, per cut-off, the seen and unseen candidates and where the ranker put them
(evaluation/cold_diagnosis.py). `--cold-in-earlier-catalogs` puts the cold items back into the
label and validation catalogs, as before `Cutoff.absent` existed, to show what that changed.

Writes benchmarks/cold_diagnosis_<dataset>[_before].json and prints the table. Nothing is tuned.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmark_cold import COLD  # noqa: E402

from fuserank import atomic, schema  # noqa: E402
from fuserank.config import load_config  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402

COLUMNS = ("users", "candidates", "unseen_share", "cold_items_offered", "positives", "unseen_positives",
           "seen_positive_rate", "unseen_positive_rate", "unseen_in_top10", "unseen_positives_in_top10",
           "unseen_positive_median_rank", "best_unseen_is_target", "tenth_seen_is_target")
RATES = ("unseen_share", "seen_positive_rate", "unseen_positive_rate", "unseen_positive_median_rank")


def main(argv: list[str] | None = None) -> int:
    import polars as pl

    from fuserank.evaluation.cold_diagnosis import unseen_candidate_report
    from fuserank.evaluation.protocol import QUERY, evaluation_frame, ranker_training_frame
    from fuserank.jobs.train_evaluate import prepare
    from fuserank.ranking.ranker import fit_ranker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-100k", choices=("movielens-100k", "movielens-1m"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cold-in-earlier-catalogs", action="store_true",
                        help="offer the cold items at the label and validation cut-offs (the behaviour before Cutoff.absent)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", help="output JSON (default benchmarks/cold_diagnosis_<dataset>[_before].json)")
    args = parser.parse_args(argv)
    set_quiet(True)
    config = load_config(None, [f"data.dataset={args.dataset}", *COLD, f"seed={args.seed}", "tracking.enabled=false",
                                *args.overrides])
    data = prepare(config)
    cutoffs = data.cutoffs
    if args.cold_in_earlier_catalogs:
        cutoffs = replace(cutoffs, labels=tuple(replace(c, absent=frozenset()) for c in cutoffs.labels),
                          valid=replace(cutoffs.valid, absent=frozenset()))
    item_ids = data.items[schema.ITEM_ID].to_list()
    fit, names = ranker_training_frame(cutoffs.labels, item_ids, data.content, config, data.llm)
    valid, _, _ = evaluation_frame(config, cutoffs.valid, item_ids, data.content, data.llm)
    test, _, _ = evaluation_frame(config, cutoffs.test, item_ids, data.content, data.llm)
    ranker = fit_ranker(fit, valid, names, config.ranker, seed=config.seed, group=QUERY)

    frames = {c.name: (fit.filter(pl.col(QUERY).str.ends_with(f"#{j}")), c.history)
              for j, c in enumerate(cutoffs.labels, start=1)}
    frames |= {"validation": (valid, cutoffs.valid.history), "test": (test, cutoffs.test.history)}
    rows = {name: unseen_candidate_report(frame, ranker.score(frame), history, cutoffs.cold_items)
            for name, (frame, history) in frames.items()}
    table = pl.DataFrame([{"cut-off": name, **row} for name, row in rows.items()]).select("cut-off", *COLUMNS)
    table = table.with_columns(pl.col(c).cast(pl.Int64) for c in COLUMNS if c not in RATES)
    with pl.Config(tbl_cols=-1, tbl_width_chars=400, float_precision=5, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        text = str(table)
    print(text)
    command = f"python pipelines/diagnose_cold.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    suffix = "_before" if args.cold_in_earlier_catalogs else ""
    out = Path(args.out or f"benchmarks/cold_diagnosis_{args.dataset}{suffix}.json")
    atomic.write_json(out, {"command": command, "seed": args.seed, "settings": COLD, "cold_items": len(cutoffs.cold_items),
                            "ranker_best_iteration": ranker.best_iteration, "cutoffs": rows, "table": text})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
