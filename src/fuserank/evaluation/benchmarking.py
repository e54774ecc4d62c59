"""Benchmarks against peers on one split: tune each peer on validation, evaluate every system on
test with the same metric code, and summarise with bootstrap 95% CIs.

Pure: frames in, frames and dicts out. The edge (pipelines/benchmark_peers.py) loads data, runs
fuserank's protocol and writes the results.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import atomic, schema
from fuserank.evaluation import peers
from fuserank.data.cutoffs import Cutoffs
from fuserank.data.split import Split, sort_interactions
from fuserank.evaluation.metrics import bootstrap_ci, evaluate_rankings, paired_bootstrap_ci
from fuserank.evaluation.peers import PEERS, PeerFitError, edge_choices, recommend
from fuserank.progress import step

# The metrics of the benchmark table, as evaluate_rankings names them.
HEADLINE = ("ndcg_at_10", "recall_at_10", "recall_at_20", "mrr_at_10")
KS = (10, 20)
TUNING_METRIC = "ndcg_at_10"


# (params, history, users) -> (ranked list, meta): one configuration fitted on `history`,
# ranking every catalog item not in a user's history for `users`.
RankFn = Callable[[Mapping[str, Any], pl.DataFrame, Sequence[str]], tuple[pl.DataFrame, dict[str, Any]]]


@dataclass(frozen=True)
class PeerResult:
    """One peer on one split.

    Attributes:
        name: the system's name in the table.
        params: the configuration chosen on validation.
        tuning: one row per tried configuration: params, validation NDCG@10 and the fit's meta
            (if its ranker returns any).
        per_user: test metrics per test user (user_id + `<metric>_at_<k>` columns).
        fit_seconds: wall time of tuning plus the final fit and ranking.
        grid_size: configurations in the grid (validation fits: this, or 0 for a grid of one).
        edges: axes whose chosen value sits on an edge of the grid (peers.edge_choices).
        test_meta: the final fit's meta (epochs, library version, ...).
    """

    name: str
    params: Mapping[str, Any]
    tuning: list[dict[str, Any]]
    per_user: pl.DataFrame
    fit_seconds: float
    grid_size: int = 1
    edges: Mapping[str, str] = field(default_factory=dict)
    test_meta: Mapping[str, Any] = field(default_factory=dict)

    def record(self, library: str) -> dict[str, Any]:
        """The JSON-ready details a benchmark keeps for this peer."""
        metas = [row["fit"] for row in self.tuning if "fit" in row] + ([self.test_meta] if self.test_meta else [])
        # A fit loaded from a cache took no time in this run; its meta keeps the time it took when fitted.
        fitted = [m["fit_seconds"] for m in metas if "fit_seconds" in m]
        return {"library": library, "params": dict(self.params), "tuning": self.tuning, "seconds": self.fit_seconds,
                "grid_size": self.grid_size, "validation_fits": len(self.tuning), "edge_choices": dict(self.edges),
                "from_cache": sum(bool(m.get("from_cache")) for m in metas),
                **({"fit_seconds_when_fitted": sum(fitted)} if fitted else {}),
                **({"test_fit": dict(self.test_meta)} if self.test_meta else {})}


def tune_and_test(name: str, rank: RankFn, grid: Sequence[Mapping[str, Any]], cutoffs: Cutoffs,
                  k: int = 50) -> PeerResult:
    """Tune a ranker on validation, refit the best configuration on the test history, rank test.

    Tuning fits each configuration of `grid` on the validation cut-off's history and scores its
    targets (NDCG@10; the first configuration wins ties); a configuration whose fit raises
    peers.PeerFitError (it diverged) is recorded with its error and skipped; a grid of one is
    not tuned. The chosen
    one is refitted on the test cut-off's history (train + valid under leave-last-out,
    everything before the test cut under global time), the history test lists exclude, as
    fuserank's protocol does.

    Args:
        name: the system's name (progress lines and the result).
        rank: fits one configuration and ranks (RankFn).
        grid: configurations, the first the default.
        cutoffs: the protocol's cut-offs (only valid and test are read).
        k: list length (>= the largest metric cut-off).
    """
    start = time.perf_counter()
    valid, test = cutoffs.valid, cutoffs.test
    tuning: list[dict[str, Any]] = []
    best, best_score = grid[0], -1.0
    for params in grid if len(grid) > 1 else ():
        with step(f"tune {name} {dict(params)}") as s:
            try:
                ranked, meta = rank(params, valid.history, valid.users)
            except PeerFitError as err:  # a diverged configuration is a tuning result, not a crash
                tuning.append({"params": dict(params), f"valid_{TUNING_METRIC}": None, "error": str(err)})
                s.done(f"failed: {err}")
                continue
            score = float(evaluate_rankings(ranked, valid.targets, (10,))[TUNING_METRIC].mean())
            s.done(f"valid {TUNING_METRIC} {score:.4f}")
        tuning.append({"params": dict(params), f"valid_{TUNING_METRIC}": score, **({"fit": meta} if meta else {})})
        if score > best_score:
            best, best_score = params, score
    with step(f"test {name}") as s:
        ranked, test_meta = rank(best, test.history, test.users)
        per_user = evaluate_rankings(ranked, test.targets, KS)
        s.done(f"{TUNING_METRIC} {per_user[TUNING_METRIC].mean():.4f}")
    return PeerResult(name, dict(best), tuning, per_user, time.perf_counter() - start, len(grid),
                      edge_choices(grid, best), test_meta)


def run_peer(name: str, cutoffs: Cutoffs, item_ids: Sequence[str], seed: int, k: int = 50,
             cache_dir: Path | None = None) -> PeerResult:
    """tune_and_test of peers.PEERS[name] (fitted in this process by peers.recommend).

    Args:
        name: key of peers.PEERS.
        cutoffs: the protocol's cut-offs (only valid and test are read).
        item_ids: the catalog every list ranks over.
        seed: model seed.
        k: list length (>= the largest metric cut-off).
        cache_dir: where each fit's lists (or the error of a fit that diverged) and its fit
            seconds are kept under `peer_key` and read back by a later run with the same inputs
            and code, so an interrupted benchmark resumes (None: always fit).
    """
    def rank(params: Mapping[str, Any], history: pl.DataFrame, users: Sequence[str]) -> tuple[pl.DataFrame, dict]:
        if cache_dir is None:
            return recommend(name, params, history, users, item_ids, k, seed), {}
        stem = Path(cache_dir) / f"{name}-{peer_key(name, params, history, users, item_ids, k, seed)}"
        lists, record = stem.with_suffix(".parquet"), stem.with_suffix(".json")
        kept = json.loads(record.read_text()) if record.exists() else {}
        if "error" in kept:
            raise PeerFitError(kept["error"])
        if lists.exists():
            return pl.read_parquet(lists), {**kept, "from_cache": True}
        start = time.perf_counter()
        try:
            ranked = recommend(name, params, history, users, item_ids, k, seed)
        except PeerFitError as err:
            atomic.write_json(record, {"error": str(err)})
            raise
        seconds = {"fit_seconds": time.perf_counter() - start}
        atomic.write_parquet(lists, ranked)
        atomic.write_json(record, seconds)
        return ranked, seconds

    return tune_and_test(name, rank, PEERS[name].grid, cutoffs, k)


def peer_key(name: str, params: Mapping[str, Any], history: pl.DataFrame, users: Sequence[str],
             item_ids: Sequence[str], k: int, seed: int) -> str:
    """sha256 hex of everything one in-process peer fit depends on: the peer, its fit function
    and settings, the seed, k, the catalog, the users, the history's rows in event order, the
    code of evaluation/peers.py (`fitting_code`) and the versions of the libraries it fits with."""
    versions = {lib: _version(lib) for lib in ("implicit", "cornac", "scipy", "numpy")}
    settings = {"name": name, "fit": peers.PEERS[name].fit.__qualname__, "params": dict(params), "seed": seed,
                "k": k, "versions": versions, "code": fitting_code()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8") + b"\0")
    digest.update(json.dumps([list(item_ids), list(users)]).encode("utf-8") + b"\0")
    rows = sort_interactions(history.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP))
    digest.update(rows.write_csv().encode("utf-8"))
    return digest.hexdigest()


@functools.cache
def fitting_code() -> str:
    """`code_digest` of evaluation/peers.py."""
    return code_digest(inspect.getsource(peers))


def code_digest(source: str) -> str:
    """sha256 hex of a module's code without its docstrings, comments and `PEERS` table: a peer
    fit's key follows the code that fits, while widening a grid (or rewording a docstring) keeps
    the fits already cached, since each fit's params are in its key."""
    tree = ast.parse(source)
    tree.body = [node for node in tree.body if not _is_peers_table(node)]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode("utf-8")).hexdigest()


def _is_peers_table(node: ast.stmt) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return any(isinstance(t, ast.Name) and t.id == "PEERS" for t in targets)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def summarise_systems(
    per_user: Mapping[str, pl.DataFrame], reference: str, seed: int, n_boot: int = 1000
) -> list[dict[str, Any]]:
    """Mean and bootstrap 95% CI of every HEADLINE metric per system, and the paired gain of
    `reference` over each other system on NDCG@10.

    Args:
        per_user: system -> per-user test metrics (user_id + HEADLINE columns); every frame must
            hold the same users (the test users of one split).
        reference: the system others are compared with (e.g. "fuserank").
        seed: bootstrap seed.
        n_boot: bootstrap resamples.

    Returns:
        One dict per system, in the order given: system, n_users, and per metric m: m, m_ci_low,
        m_ci_high; for systems other than `reference`: `reference_gain_ndcg_at_10` with its CI.
    """
    users = None
    aligned: dict[str, pl.DataFrame] = {}
    for system, frame in per_user.items():
        frame = frame.sort(schema.USER_ID)
        ids = frame[schema.USER_ID].to_list()
        if users is None:
            users = ids
        elif ids != users:
            raise ValueError(f"system {system!r} was scored on other users than {next(iter(per_user))!r}")
        aligned[system] = frame
    if reference not in aligned:
        raise ValueError(f"reference system {reference!r} not among {list(aligned)}")
    ref = aligned[reference]["ndcg_at_10"].to_numpy()
    rows = []
    for system, frame in aligned.items():
        row: dict[str, Any] = {"system": system, "n_users": frame.height}
        for metric in HEADLINE:
            values = frame[metric].to_numpy()
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            row |= {metric: float(np.mean(values)), f"{metric}_ci_low": low, f"{metric}_ci_high": high}
        if system != reference:
            other = frame["ndcg_at_10"].to_numpy()
            low, high = paired_bootstrap_ci(ref, other, n_boot=n_boot, seed=seed)
            row |= {
                f"{reference}_gain_ndcg_at_10": float(np.mean(ref - other)),
                f"{reference}_gain_ndcg_at_10_ci_low": low,
                f"{reference}_gain_ndcg_at_10_ci_high": high,
            }
        rows.append(row)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], reference: str = "fuserank") -> str:
    """A Markdown table of `summarise_systems` rows: each metric with its 95% CI, and the gain of
    the reference system's NDCG@10 over each other system."""
    head = ["system", *(m.replace("_at_", "@") for m in HEADLINE), f"{reference} NDCG@10 gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["system"])]
        for m in HEADLINE:
            cells.append(f"{row[m]:.4f} [{row[f'{m}_ci_low']:.4f}, {row[f'{m}_ci_high']:.4f}]")
        gain = f"{reference}_gain_ndcg_at_10"
        if gain in row:
            cells.append(f"{row[gain]:+.4f} [{row[gain + '_ci_low']:+.4f}, {row[gain + '_ci_high']:+.4f}]")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_over_seeds(by_seed: Mapping[int, Mapping[str, float]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation, min, max and per-seed value of each metric in `keys`
    that the runs have (seed -> metric name -> value); a single seed has standard deviation 0."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = np.array([m[key] for m in by_seed.values() if key in m])
        if values.size:
            out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                        "min": float(values.min()), "max": float(values.max()),
                        "by_seed": {str(s): float(m[key]) for s, m in by_seed.items() if key in m}}
    return out


def order_as_time(split: Split, seed: int) -> Split:
    """Replace timestamps with each user's position in a random order of train, then valid, then test.

    RecBole's random split has no time order: its targets are random items of each user, not
    the latest. fuserank's ranker takes its labels from the tail of each user's train history
    and weighs recent items more, so with real timestamps it learns "predict the latest item"
    and is tested on random ones. Giving it the protocol's own order (train rows shuffled with
    `seed`, valid rows after them, test rows last) makes its labels random held-out items too.
    No test row reaches training: test rows only get the largest positions.

    Args:
        split: a split whose parts are disjoint per user.
        seed: seed of the shuffle within each part.

    Returns:
        The same rows with Int64 timestamps 0..n_user-1 per user, each part sorted.
    """
    part, key = "__fuserank_part", "__fuserank_key"
    rows = pl.concat(
        [frame.with_columns(pl.lit(i, pl.Int8).alias(part)) for i, frame in enumerate((split.train, split.valid, split.test))]
    )
    rows = sort_interactions(rows)
    rows = rows.with_columns(pl.Series(key, np.random.default_rng(seed).random(rows.height))).sort(
        [schema.USER_ID, part, key]
    )
    rows = rows.with_columns(pl.int_range(pl.len()).over(schema.USER_ID).cast(pl.Int64).alias(schema.TIMESTAMP))
    parts = (sort_interactions(rows.filter(pl.col(part) == i).drop(part, key)) for i in range(3))
    return Split(*parts)
