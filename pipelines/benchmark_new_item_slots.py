"""New-item slots under the cold-item protocol (issue 17): what each number of positions kept for
new items costs every user and gives the users whose next item is new.

    python pipelines/benchmark_new_item_slots.py --dataset movielens-100k --seeds 42 43 44
    python pipelines/benchmark_new_item_slots.py --dataset synthetic --catalog DIR --seeds 42

Per seed, with the cold-item benchmark's settings (pipelines/benchmark_cold.py): the frames and
the ranker of one train-evaluate run, then the validation and test top 10s for each slot count n
of --slots (positions 11-n to 10 kept for new items, `slots.new_items`, ranking/slots.py), scored
on all users and on the warm-item and cold-item slices (evaluation/slices.py; at validation the
cold slice is the users whose target the cut-off hides, the ranker's cold-like positives), with
bootstrap 95% CIs: on all users paired against no slots, on the cold slice paired against the
content-only kNN.

The slot count is chosen on validation alone, before test is read: the most slots whose
all-user validation NDCG@10 stays within --budget (a share, 0.05 = 5%) of no slots. The budget
is the price a catalog agrees to pay for showing its new items; it is an argument, not tuned.

Writes benchmarks/new_item_slots_<dataset>.json (and .txt, the tables).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmark_cold import checked_cold_arguments, cold_arguments, settings  # noqa: E402

from fuserank import atomic  # noqa: E402
from fuserank.config import load_config  # noqa: E402

METRIC = "ndcg_at_10"
TOP = 10


def positions(n: int) -> tuple[int, ...]:
    """The last `n` positions of the top 10."""
    return tuple(range(TOP - n + 1, TOP + 1))


def chosen_slots(valid_rows: list[dict], budget: float) -> int:
    """The most slots whose all-user validation NDCG@10 is within `budget` of no slots."""
    base = next(r for r in valid_rows if r["slots"] == 0)["all"]
    return max(r["slots"] for r in valid_rows if r["all"] >= (1 - budget) * base)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import polars as pl

    from fuserank import schema
    from fuserank.evaluation.metrics import bootstrap_ci, evaluate_rankings, paired_bootstrap_ci
    from fuserank.evaluation.protocol import QUERY, baseline_rankings, evaluation_frame, ranker_training_frame
    from fuserank.evaluation.slices import COLD, KIND, user_slices
    from fuserank.jobs.train_evaluate import prepare
    from fuserank.pipeline import rank_candidates
    from fuserank.ranking.ranker import fit_ranker

    parser = cold_arguments(__doc__.split("\n\n")[0], "the LLM views on, as in benchmark_cold.py --llm")
    parser.add_argument("--slots", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--budget", type=float, default=0.05,
                        help="the share of all-user validation NDCG@10 the slots may cost")
    parser.add_argument("--out", help="output JSON (default benchmarks/new_item_slots_<dataset>.json)")
    args = checked_cold_arguments(parser, argv)
    if 0 not in args.slots or min(args.slots) < 0 or max(args.slots) > TOP:
        parser.error(f"--slots must include 0 and lie in [0, {TOP}]")

    def per_user(ranked: pl.DataFrame, targets: pl.DataFrame) -> np.ndarray:
        return evaluate_rankings(ranked, targets, (TOP,))[METRIC].to_numpy()

    def row(values: np.ndarray, seed: int) -> dict:
        low, high = bootstrap_ci(values, seed=seed)
        return {"mean": float(values.mean()) if values.size else float("nan"), "ci_low": low, "ci_high": high}

    def paired(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
        low, high = paired_bootstrap_ci(a, b, seed=seed)
        return {"delta": float((a - b).mean()), "ci_low": low, "ci_high": high, "beyond_ci": bool(low > 0 or high < 0)}

    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": f"python pipelines/benchmark_new_item_slots.py {argv_text}", "dataset": args.dataset,
              "seeds": args.seeds, "slots": args.slots, "budget": args.budget,
              "settings": [s for s in settings(args, 0, "SCRATCH") if not s.startswith(("seed=", "output_dir=", "run_name="))],
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "runs": {}}
    texts = []
    with tempfile.TemporaryDirectory(prefix="fuserank-slots-") as scratch:
        for seed in args.seeds:
            start = time.perf_counter()
            config = load_config(None, settings(args, seed, scratch))
            data = prepare(config)
            cutoffs, item_ids = data.cutoffs, data.items[schema.ITEM_ID].to_list()
            fit, names = ranker_training_frame(cutoffs.labels, item_ids, data.content, config, data.llm)
            frames = {"validation": (evaluation_frame(config, cutoffs.valid, item_ids, data.content, data.llm)[0],
                                     cutoffs.valid),
                      "test": (evaluation_frame(config, cutoffs.test, item_ids, data.content, data.llm)[0], cutoffs.test)}
            ranker = fit_ranker(fit, frames["validation"][0], names, config.ranker, seed=seed, group=QUERY)
            run: dict = {"ranker_best_iteration": ranker.best_iteration}
            for name, (frame, cutoff) in frames.items():
                kinds = user_slices(cutoff).sort(schema.USER_ID)
                cold = (kinds[KIND] == COLD).to_numpy()
                scores = ranker.score(frame)
                knn = baseline_rankings(cutoff, item_ids, data.content, config, TOP).get("content_knn")
                knn_values = per_user(knn(cutoff.users, 0), cutoff.targets) if knn is not None else None
                lists = {n: per_user(rank_candidates(frame, scores, TOP, positions(n)), cutoff.targets) for n in args.slots}
                rows = []
                for n, values in lists.items():
                    entry = {"slots": n, "positions": list(positions(n)), "n_users": int(values.size),
                             "n_cold_users": int(cold.sum()), "all": row(values, seed), "warm": row(values[~cold], seed),
                             "cold": row(values[cold], seed), "all_vs_no_slots": paired(values, lists[0], seed)}
                    if knn_values is not None:
                        entry["cold_vs_content_knn"] = paired(values[cold], knn_values[cold], seed)
                    rows.append(entry)
                run[name] = {"rows": rows}
                if knn_values is not None:
                    run[name]["content_knn"] = {"all": row(knn_values, seed), "warm": row(knn_values[~cold], seed),
                                                "cold": row(knn_values[cold], seed)}
            run["chosen_slots"] = chosen_slots([{"slots": r["slots"], "all": r["all"]["mean"]}
                                                for r in run["validation"]["rows"]], args.budget)
            run["wall_seconds"] = time.perf_counter() - start
            text = format_run(seed, run)
            print(text, flush=True)
            texts.append(text)
            report["runs"][str(seed)] = run
    report["over_seeds"] = over_seeds(report["runs"], args.slots)
    out = Path(args.out or f"benchmarks/new_item_slots_{args.dataset}.json")
    atomic.write_json(out, report)
    atomic.write_text(out.with_suffix(".txt"), f"{report['command']}\n\n" + "\n\n".join(texts) + "\n")
    print(f"wrote {out} and {out.with_suffix('.txt')}")
    return 0


def format_run(seed: int, run: dict) -> str:
    """One seed's validation and test tables."""
    lines = [f"seed {seed} ({run['wall_seconds']:.0f} s); chosen on validation: {run['chosen_slots']} slots"]
    for name in ("validation", "test"):
        part = run[name]
        cold_users = part["rows"][0]["n_cold_users"]
        lines.append(f"\n{name}: {part['rows'][0]['n_users']} users, {cold_users} with a cold target")
        lines.append(f"{'slots':>5}  {'all':>7} {'vs none, 95% CI':>27}  {'warm':>7}  {'cold':>7} {'95% CI':>18}"
                     f"  {'cold vs kNN, 95% CI':>27}")
        for r in part["rows"]:
            vs = r["all_vs_no_slots"]
            knn = r.get("cold_vs_content_knn")
            knn_text = f"{knn['delta']:+.4f} [{knn['ci_low']:+.4f}, {knn['ci_high']:+.4f}]" if knn else "-"
            lines.append(f"{r['slots']:>5}  {r['all']['mean']:.4f} {vs['delta']:+.4f} [{vs['ci_low']:+.4f}, "
                         f"{vs['ci_high']:+.4f}]  {r['warm']['mean']:.4f}  {r['cold']['mean']:.4f} "
                         f"[{r['cold']['ci_low']:.4f}, {r['cold']['ci_high']:.4f}]  {knn_text:>27}")
        if "content_knn" in part:
            k = part["content_knn"]
            lines.append(f"{'kNN':>5}  {k['all']['mean']:.4f} {'':>27}  {k['warm']['mean']:.4f}  "
                         f"{k['cold']['mean']:.4f} [{k['cold']['ci_low']:.4f}, {k['cold']['ci_high']:.4f}]")
    return "\n".join(lines)


def over_seeds(runs: dict, slots: list[int]) -> dict:
    """Mean and standard deviation over seeds of each slot count's test NDCG@10 (all, warm, cold)
    and of its paired deltas; how many seeds' CIs exclude 0."""
    import numpy as np

    out = {}
    for n in slots:
        rows = [next(r for r in run["test"]["rows"] if r["slots"] == n) for run in runs.values()]
        entry = {}
        for kind in ("all", "warm", "cold"):
            values = np.array([r[kind]["mean"] for r in rows])
            entry[kind] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        for key in ("all_vs_no_slots", "cold_vs_content_knn"):
            if key in rows[0]:
                deltas = np.array([r[key]["delta"] for r in rows])
                entry[key] = {"mean": float(deltas.mean()), "sd": float(deltas.std(ddof=1)) if len(deltas) > 1 else 0.0,
                              "beyond_ci": sum(r[key]["beyond_ci"] for r in rows), "seeds": len(rows)}
        out[str(n)] = entry
    out["chosen_slots"] = {seed: run["chosen_slots"] for seed, run in runs.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
