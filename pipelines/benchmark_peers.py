"""fuserank against peer recommenders on the same splits, with the same metric code.

    python pipelines/benchmark_peers.py --dataset movielens-1m
        [--protocols leave_last_out global_time recbole] [--seeds 42 43 44]
        [--peers popular item_knn als bpr ease rectools_sasrec fuserank_sasrec] [--set section.key=value ...]

Three protocols (data.cutoffs builds the first two):
- leave_last_out: per user, the last interaction is the test target, the one before it the
  validation target;
- global_time: two cut times at the 0.8 and 0.9 quantiles of all timestamps; a user's first
  interaction after a cut is their target, and nothing after a cut exists for its queries;
  users with no history before the test cut are counted apart (cold users);
- recbole: RecBole's general protocol (ratings >= 3, 10-core, per-user random 8:1:1), every
  remaining held-out item a target; the catalog is the items left after filtering.
On each, fuserank runs its full protocol (protocol.run_protocol: ranker trained on the label
cut-offs, early-stopped on validation, stage 1 refitted on the test history) once per seed; the
table shows the first seed, with the mean and spread over seeds beside it. Each peer tries its
grid (peers.PEERS; sizes in the results' budget table) on the validation cut-off, and the best by
validation NDCG@10 is refitted on the test cut-off's history. Every list excludes the user's
history items and ranks the whole catalog. Writes benchmarks/peers_<dataset>.json (needs the
`bench` extra). `--fuserank-configurations N` records that fuserank's --set settings were chosen
among N configurations on validation before this run (the budget table counts them).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice; numpy's BLAS is not on the hot path

import polars as pl  # noqa: E402

from fuserank import atomic, schema  # noqa: E402
from fuserank.evaluation.benchmarking import (  # noqa: E402
    HEADLINE, format_table, order_as_time, run_peer, spread_over_seeds, summarise_systems,
)
from fuserank.config import RunConfig, cache_dir, load_config, with_overrides  # noqa: E402
from fuserank.data.cutoffs import Cutoffs, build_cutoffs, cutoffs_from_split  # noqa: E402
from fuserank.data.split import recbole_split  # noqa: E402
from fuserank.evaluation.peer_env import PeerEnv, ensure_env  # noqa: E402
from fuserank.evaluation.peers import PEERS  # noqa: E402
from fuserank.evaluation.sequence_peers import (  # noqa: E402
    RECTOOLS_SASREC_GRID, run_fuserank_sequence, run_rectools_sasrec,
)
from fuserank.progress import set_quiet, step  # noqa: E402

PROTOCOLS = ("leave_last_out", "global_time", "recbole")
# Systems beside peers.PEERS: (library, what it is).
SEQUENTIAL = {"rectools_sasrec": "rectools", "fuserank_sasrec": "fuserank (sequence model alone)"}
PEER_ENVS = Path(__file__).resolve().parent / "peer_envs"
RECTOOLS_LOCK, RECTOOLS_WORKER = PEER_ENVS / "rectools.lock.txt", PEER_ENVS / "rectools_worker.py"
# fuserank's own numbers worth keeping beside the table: its stage-1 ceiling and its stage-1 order.
FUSERANK_EXTRA = ("test_stage1_recall", "test_stage1_candidates_per_user", "test_retrieval_ndcg_at_10",
                  "valid_ndcg_at_10", "ranker_best_iteration")


def protocol_cutoffs(protocol: str, interactions: pl.DataFrame, config: RunConfig) -> tuple[Cutoffs, Cutoffs]:
    """(peers' cut-offs, fuserank's cut-offs) of one protocol (see the module docstring): the
    same rows; on recbole, fuserank's carry the protocol's random order as timestamps."""
    if protocol in ("leave_last_out", "global_time"):
        cutoffs = build_cutoffs(interactions, with_overrides(config, [f"split.protocol={protocol}"]).split)
        return cutoffs, cutoffs
    if protocol == "recbole":
        split = recbole_split(interactions, seed=config.seed)
        # See benchmarking.order_as_time; peers ignore timestamps, so they see the same data.
        return (cutoffs_from_split(split, config.split),
                cutoffs_from_split(order_as_time(split, seed=config.seed), config.split))
    raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")


def run_fuserank(cutoffs: Cutoffs, items: pl.DataFrame, config: RunConfig) -> tuple[pl.DataFrame, dict[str, float]]:
    """fuserank's full protocol on `cutoffs`; returns (its per-user test metrics, its metrics)."""
    from fuserank.encoders.content import encode_content
    from fuserank.evaluation.protocol import run_protocol

    content, _ = encode_content(items, cutoffs.valid.history[schema.ITEM_ID].unique(), config)
    result = run_protocol(cutoffs, items[schema.ITEM_ID].to_list(), content, config)
    per_user = result.per_user.filter(pl.col("system") == "fuserank").drop("system")
    return per_user, result.metrics


# fuserank's settings on the recbole protocol. Trees fitted on top of the EASE z-score were chosen
# on ML-100K's recbole validation NDCG@10 (0.2475 against 0.2351 without; on this protocol the
# ranker alone ranks below EASE, see the README). Labels as an eighth of each user's train rows
# (the protocol's valid:train ratio) were chosen on ML-1M's, among 10 rows or an eighth, with 1 or
# 3 cut-offs and base scales 0, 0.3 and 1: 0.2357 against 0.2350 for 10 rows per user, a
# difference within run-to-run noise; the share at least matches the protocol's shape.
RECBOLE_FUSERANK = ("split.label_share=0.125", "ranker.base_scale=0.3")


# fuserank's metrics whose spread over seeds the record keeps.
SEED_SPREAD = ("test_ndcg_at_10", "test_recall_at_10", "test_mrr_at_10", "test_stage1_recall", "valid_ndcg_at_10")


def budget_table(details: dict[str, dict]) -> str:
    """Markdown: each system's validation budget (configurations, fits), its choice and edges."""
    lines = ["| system | configurations | validation fits | chosen on validation | on a grid edge | seconds |",
             "|---|---|---|---|---|---|"]
    for system, d in details.items():
        if system == "fuserank":
            runs = d["validation_runs"]
            chosen = "defaults" if runs["configurations"] == 1 else "settings chosen on validation beforehand"
            lines.append(f"| fuserank | {runs['configurations']} | {runs['fits']} | {chosen}, ranker early-stopped "
                         f"on validation per seed | | {d['seconds']:.0f} |")
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in d.get("params", {}).items() if k in d.get("tuned_axes", ()))
        edges = ", ".join(f"{k} ({v})" for k, v in d.get("edge_choices", {}).items()) or "none"
        seconds = f"{d['seconds']:.0f}"
        if d.get("from_cache"):
            seconds += f" ({d['from_cache']} fits cached" + (
                f"; {d['fit_seconds_when_fitted']:.0f} s when fitted)" if "fit_seconds_when_fitted" in d else ")")
        lines.append(f"| {system} | {d.get('grid_size', 1)} | {d.get('validation_fits', 0)} | {chosen or '-'} | "
                     f"{edges} | {seconds} |")
    return "\n".join(lines)


def tuned_axes(grid: Sequence[dict]) -> list[str]:
    """Parameters that take more than one value in `grid`."""
    return [k for k in grid[0] if len({str(p.get(k)) for p in grid}) > 1] if grid else []


def benchmark_protocol(
    protocol: str, items: pl.DataFrame, interactions: pl.DataFrame, config: RunConfig, peers: list[str],
    recbole_overrides: Sequence[str] = RECBOLE_FUSERANK, seeds: Sequence[int] = (42,),
    rectools_env: PeerEnv | None = None, fuserank_configurations: int = 1, rectools_threads: int = 1,
) -> dict:
    """Every system on one protocol's cut-offs: the summary rows and the details for the record."""
    cutoffs, fuserank_cutoffs = protocol_cutoffs(protocol, interactions, config)
    used = cutoffs.interactions
    # The catalog is what the protocol keeps: all items (temporal) or the filtered ones (recbole).
    if protocol == "recbole":
        items = items.filter(pl.col(schema.ITEM_ID).is_in(used[schema.ITEM_ID].unique().implode()))
    item_ids = items[schema.ITEM_ID].to_list()
    per_user: dict[str, pl.DataFrame] = {}
    details: dict[str, dict] = {}
    start = time.perf_counter()
    fuserank_config = with_overrides(config, list(recbole_overrides)) if protocol == "recbole" else config
    by_seed: dict[int, dict[str, float]] = {}
    for seed in seeds:
        with step(f"[{protocol}] fuserank seed {seed}") as s:
            seeded = with_overrides(fuserank_config, [f"seed={seed}"])
            seed_per_user, by_seed[seed] = run_fuserank(fuserank_cutoffs, items, seeded)
            if seed == seeds[0]:
                per_user["fuserank"], metrics = seed_per_user, by_seed[seed]
            s.done(f"test ndcg@10 {by_seed[seed]['test_ndcg_at_10']:.4f}")
    details["fuserank"] = {"library": "fuserank", "seconds": time.perf_counter() - start,
                           "seeds": list(seeds), "over_seeds": spread_over_seeds(by_seed, SEED_SPREAD),
                           "label_window": fuserank_config.split.label_window,
                           "label_share": fuserank_config.split.label_share,
                           "base_scale": fuserank_config.ranker.base_scale,
                           "timestamps": "protocol order" if protocol == "recbole" else "real",
                           # The validation budget: the configurations fuserank's settings were chosen among
                           # (1: the defaults), plus this run's one fit per seed, whose ranker stops early on
                           # the validation cut-off's NDCG@10.
                           "validation_runs": {"configurations": fuserank_configurations,
                                               "fits": fuserank_configurations - 1 + len(seeds)},
                           **{k: metrics[k] for k in FUSERANK_EXTRA if k in metrics}}
    cache = cache_dir(config.sources)
    for name in peers:
        if name == "rectools_sasrec":
            assert rectools_env is not None, "rectools_sasrec needs its venv (peer_env.ensure_env)"
            grid = tuple(params | {"threads": rectools_threads} for params in RECTOOLS_SASREC_GRID)
            result = run_rectools_sasrec(cutoffs, item_ids, config.seed, rectools_env, RECTOOLS_WORKER, grid,
                                         cache_dir=cache / "peer_results")
            library = result.test_meta.get("library", "rectools")
        elif name == "fuserank_sasrec":
            # The sequence section as configured, threads included: with sequence.enabled this is the very
            # model the ranker's test features come from, read back from the sequence cache, not a second fit.
            sequence = fuserank_config.sequence
            result = run_fuserank_sequence(cutoffs, item_ids, sequence, config.seed, cache_dir=cache / "sequence")
            grid, library = (dataclasses.asdict(sequence),), SEQUENTIAL[name]
        else:
            result = run_peer(name, cutoffs, item_ids, seed=config.seed, cache_dir=cache / "peer_results")
            grid, library = PEERS[name].grid, PEERS[name].library
        per_user[name] = result.per_user
        details[name] = result.record(library) | {"tuned_axes": tuned_axes(list(grid))}
    rows = summarise_systems({s: f.select(schema.USER_ID, *HEADLINE) for s, f in per_user.items()},
                             reference="fuserank", seed=config.seed)
    return {
        "n_users": used[schema.USER_ID].n_unique(),
        "n_items": len(item_ids),
        "n_valid_history": cutoffs.valid.history.height, "n_valid_targets": cutoffs.valid.targets.height,
        "n_test_history": cutoffs.test.history.height, "n_test_targets": cutoffs.test.targets.height,
        "n_test_users": cutoffs.test.targets[schema.USER_ID].n_unique(),
        "n_test_cold_users": cutoffs.cold_test[schema.USER_ID].n_unique(),
        "cold_users": {k: metrics[k] for k in metrics if k.startswith("test_cold_")},
        "systems": rows,
        "details": details,
        "table": format_table(rows),
        "budget_table": budget_table(details),
        "edge_choices": {name: d["edge_choices"] for name, d in details.items() if d.get("edge_choices")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="movielens-1m", help="data.dataset (movielens-100k, movielens-1m)")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--peers", nargs="+", default=[*PEERS, *SEQUENTIAL], choices=[*PEERS, *SEQUENTIAL])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44],
                        help="fuserank's seeds (the table shows the first; the record has every one)")
    parser.add_argument("--config", help="fuserank YAML config (defaults otherwise)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--recbole-set", dest="recbole_overrides", action="append", metavar="SECTION.KEY=VALUE",
                        help=f"fuserank's settings on the recbole protocol only (default: {' '.join(RECBOLE_FUSERANK)})")
    parser.add_argument("--fuserank-configurations", type=int, default=1,
                        help="configurations fuserank's --set settings were chosen among on validation (1: defaults)")
    parser.add_argument("--rectools-threads", type=int, default=1,
                        help="torch threads of RecTools' SASRec fits (1: as the ML-100K record)")
    parser.add_argument("--out", help="output JSON (default benchmarks/peers_<dataset>.json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    recbole_overrides = args.recbole_overrides or list(RECBOLE_FUSERANK)
    config = load_config(args.config, [f"data.dataset={args.dataset}", *args.overrides])
    from fuserank.jobs.train_evaluate import load_data

    start = time.perf_counter()
    items, interactions = load_data(config)
    report = {
        "command": "python pipelines/benchmark_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "seed": config.seed,
        "fuserank_seeds": args.seeds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "recbole_protocol_fuserank": "timestamps replaced by the protocol's random order "
                                     f"(benchmarking.order_as_time), {' '.join(recbole_overrides)}; chosen on "
                                     "the protocol's validation NDCG@10 (see RECBOLE_FUSERANK)",
        "tuning": "each tunable peer: its grid (peers.PEERS, sequence_peers.RECTOOLS_SASREC_GRID) fitted on the "
                  "validation cut-off's history, the best validation NDCG@10 refitted on the test cut-off's history; "
                  "each protocol's details list grid sizes, validation fits and edge choices beside fuserank's "
                  "validation runs (default config, ranker early-stopped on validation, once per seed)",
        "protocols": {},
    }
    out = Path(args.out or f"benchmarks/peers_{args.dataset}.json")
    rectools_env = None
    if "rectools_sasrec" in args.peers:
        rectools_env = ensure_env("rectools", RECTOOLS_LOCK, cache_dir(config.sources) / "peer_envs")
        report["rectools_env"] = {"lock": "pipelines/peer_envs/rectools.lock.txt", "key": rectools_env.key,
                                  "build_seconds": rectools_env.built_seconds}
    for protocol in args.protocols:
        report["protocols"][protocol] = benchmark_protocol(protocol, items, interactions, config, args.peers,
                                                           recbole_overrides, args.seeds, rectools_env,
                                                           args.fuserank_configurations, args.rectools_threads)
        done = report["protocols"][protocol]
        print(f"\n{protocol} protocol, {args.dataset}:\n{done['table']}\n\n{done['budget_table']}\n", flush=True)
        # Written after every protocol, so a run stopped later keeps what it finished.
        report["wall_seconds"] = time.perf_counter() - start
        atomic.write_json(out, report | {"finished": list(report["protocols"]) == list(args.protocols)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
