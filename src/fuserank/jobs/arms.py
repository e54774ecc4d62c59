"""Ranked lists for A/B tests: user bucketing, arm plans, list building, batches and the manifest.

Pure: frames and arrays in and out. The edge that finds the run, loads its booster and writes
files is jobs/export.py.

Assignment: a user's bucket is sha256(salt + user_id) (UTF-8), its first 8 bytes read as a
big-endian unsigned integer, modulo 10,000. Arms own consecutive bucket ranges in their
configured order from bucket 0; the holdout owns the top range, so changing the arms' shares
never moves a user into or out of the holdout. A bucket depends on nothing but salt and id, so
assignment is stable across runs and independent of input order.

Cold start: a user without any interaction (an id of a given list that the data does not know)
gets the most-popular list of the whole catalog and `cold_start = true`. A warm user whose list
is shorter than K (few candidates) is topped up from the same most-popular ranking, without
scores (null), so every list has K items unless fewer eligible items exist.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import ExperimentConfig, RetrievalConfig
from fuserank.data.cutoffs import serving_cutoff, serving_ref_times
from fuserank.evaluation.scoring import stage_one_rankings
from fuserank.pipeline import StageOne, generate_candidates, rank_candidates, stage_frame
from fuserank.ranking.llm_features import LLMSignals
from fuserank.ranking.ranker import Ranker
from fuserank.registry import is_model_uri
from fuserank.retrieval.index import merge_candidates
from fuserank.retrieval.popularity import item_counts
from fuserank.schema import ARM, BUCKET, COLD_START, ITEM_ID, MODEL_VERSION, RANK, RUN_ID, SCORE, USER_ID

BUCKETS = 10_000
HOLDOUT = "holdout"
BASELINES = ("popular", "retrieval")
_POP = "_pop"
_COUNT = "_count"
# An MLflow run id as an arm source on its own (32 hex digits).
RUN_ID_FORM = re.compile(r"[0-9a-f]{32}")


class ExportError(ValueError):
    """An export cannot run as configured (bad arms or shares, unknown run, mismatched data)."""


@dataclass(frozen=True)
class ArmPlan:
    """One arm: what it serves and the buckets [low, high) it owns.

    source: "run", "run:<run id>", "models:/<name>@<alias>", "models:/<name>/<version>", "popular",
        "retrieval" or "holdout" (no list). A bare run id is written "run:<run id>".
    """

    name: str
    source: str
    low: int
    high: int

    @property
    def share(self) -> float:
        return (self.high - self.low) / BUCKETS


def user_buckets(user_ids: Sequence[str], salt: str) -> np.ndarray:
    """int32 (n,) bucket in [0, 10000) of each user id (see the module docstring for the hash)."""

    def bucket(user: str) -> int:
        digest = hashlib.sha256((salt + user).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    return np.fromiter((bucket(u) for u in user_ids), dtype=np.int32, count=len(user_ids))


def plan_arms(arms: Mapping[str, str], shares: Mapping[str, float], holdout: float) -> tuple[ArmPlan, ...]:
    """Bucket ranges of the arms (in the given order from bucket 0) and of the holdout (at the top).

    Range bounds are the cumulative shares times 10,000, rounded; shares in steps of 0.0001 are exact.

    Raises:
        ExportError: arms and shares name different arms, a share is not positive, the shares and
            holdout do not sum to 1, an arm is named "holdout", a source is unknown, or an arm
            would get no bucket.
    """
    if set(arms) != set(shares):
        raise ExportError(f"export.arms {sorted(arms)} and export.shares {sorted(shares)} must name the same arms")
    if not arms:
        raise ExportError("export.arms is empty")
    if HOLDOUT in arms:
        raise ExportError(f"arm name {HOLDOUT!r} is reserved for export.holdout")
    arms = {name: f"run:{source}" if RUN_ID_FORM.fullmatch(str(source)) else source for name, source in arms.items()}
    for name, source in arms.items():
        if (source not in ("run", *BASELINES) and not (source.startswith("run:") and len(source) > 4)
                and not is_model_uri(source)):
            raise ExportError(
                f"export.arms.{name}: unknown source {source!r}; use 'run', 'run:<run id>' (or the bare run id), "
                "'models:/<name>@<alias>', 'models:/<name>/<version>', 'popular' or 'retrieval'"
            )
    if any(not 0 < s <= 1 for s in shares.values()) or not 0 <= holdout < 1:
        raise ExportError(f"export.shares must be in (0, 1] and export.holdout in [0, 1); got {dict(shares)}, {holdout}")
    total = sum(shares.values()) + holdout
    if abs(total - 1.0) > 1e-6:
        raise ExportError(f"export.shares {dict(shares)} plus holdout {holdout} sum to {total:.6f}, not 1")
    top = BUCKETS - round(holdout * BUCKETS)
    plans, low, cumulative = [], 0, 0.0
    for name in arms:
        cumulative += shares[name]
        high = top if name == list(arms)[-1] else round(cumulative * BUCKETS)
        if high <= low:
            raise ExportError(f"export.shares.{name} = {shares[name]} gives the arm no bucket of {BUCKETS}")
        plans.append(ArmPlan(name, arms[name], low, high))
        low = high
    if top < BUCKETS:
        plans.append(ArmPlan(HOLDOUT, HOLDOUT, top, BUCKETS))
    return tuple(plans)


def assign_arms(user_ids: Sequence[str], plans: Sequence[ArmPlan], salt: str) -> pl.DataFrame:
    """Each user's bucket and arm, sorted by user_id (so independent of input order).

    Args:
        user_ids: unique user ids, any order.
        plans: from `plan_arms` (together they cover every bucket exactly once).
        salt: the experiment's salt.

    Returns:
        Frame user_id (str), bucket (int32), arm (str).
    """
    ordered = sorted(user_ids)
    buckets = user_buckets(ordered, salt)
    bounds = np.array([p.high for p in plans], dtype=np.int32)
    arm_index = np.searchsorted(bounds, buckets, side="right")
    names = np.array([p.name for p in plans], dtype=object)
    return pl.DataFrame(
        {
            USER_ID: pl.Series(ordered, dtype=pl.String),
            BUCKET: pl.Series(buckets, dtype=pl.Int32),
            ARM: pl.Series(names[arm_index], dtype=pl.String),
        }
    )


def popularity_pool(history: pl.DataFrame, item_ids: Sequence[str]) -> pl.DataFrame:
    """Every catalog item ranked by interaction count in `history` (ties: item_id).

    Returns:
        Frame item_id, _count (float32), _pop (int64, 0 = most popular), one row per catalog item
        (items never interacted with have count 0 and come last).
    """
    return pool_of_counts(item_counts(history, item_ids), item_ids)


def pool_of_counts(counts: np.ndarray, item_ids: Sequence[str]) -> pl.DataFrame:
    """`popularity_pool` from each catalog item's interaction count (`item_counts`' array)."""
    return (
        pl.DataFrame({ITEM_ID: pl.Series(list(item_ids), dtype=pl.String),
                      _COUNT: pl.Series(counts, dtype=pl.Float32)})
        .sort([_COUNT, ITEM_ID], descending=[True, False])
        .with_row_index(_POP)
        .with_columns(pl.col(_POP).cast(pl.Int64))
    )


def seen_lookup(seen: pl.DataFrame) -> Callable[[Sequence[str]], pl.DataFrame]:
    """The user_id, item_id pairs of `seen` that belong to given users (in no particular order).

    One hashing pass groups the rows of each user; a call then gathers only its users' rows
    instead of joining all of `seen` (export asks batch by batch: a million users is a hundred
    batches), and no sort of millions of strings is needed.
    """
    pairs = seen.select(USER_ID, ITEM_ID)
    rows_of = pairs.with_row_index("_row").group_by(USER_ID).agg("_row")

    def of(users: Sequence[str]) -> pl.DataFrame:
        # A Series goes in whole: list() would walk it one Python string at a time.
        wanted = pl.DataFrame({USER_ID: _strings(users)}).unique()
        rows = wanted.join(rows_of, on=USER_ID).explode("_row")["_row"]
        return pairs[rows.to_numpy()]

    return of


def _strings(values: Sequence[str] | pl.Series) -> pl.Series:
    return values.cast(pl.String) if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.String)


def popular_lists(pool: pl.DataFrame, seen: pl.DataFrame | None, users: Sequence[str], k: int) -> pl.DataFrame:
    """The k most popular items of `pool` per user, skipping the user's `seen` items.

    Args:
        pool: from `popularity_pool`.
        seen: user_id, item_id pairs to leave out (None: leave nothing out).
        users: whom to list.
        k: items per user (fewer when the pool runs out).

    Returns:
        schema.RANKED_LIST frame (score = interaction count), sorted by user_id, rank.
    """
    targets = pl.Series(USER_ID, list(users), dtype=pl.String).unique().sort()
    if seen is None:
        seen = pl.DataFrame(schema={USER_ID: pl.String, ITEM_ID: pl.String})
    # Every user reads the same ranking: a user's list is the first k + (their seen items)
    # positions of the pool, less the seen ones, cut at k. Positions are counted in numpy, one
    # slot per (user, position), rather than exploded, joined and ranked over a frame of strings.
    mine = (seen.select(USER_ID, ITEM_ID).unique()
            .join(targets.to_frame().with_row_index("_user"), on=USER_ID)
            .join(pool.select(ITEM_ID, _POP), on=ITEM_ID))
    seen_user = mine["_user"].to_numpy().astype(np.int64)
    seen_position = mine[_POP].to_numpy().astype(np.int64)
    depth = np.minimum(k + np.bincount(seen_user, minlength=len(targets)), pool.height)
    start = np.cumsum(depth) - depth
    owner = np.repeat(np.arange(len(targets)), depth)
    position = np.arange(int(depth.sum())) - start[owner]
    keep = np.ones(len(owner), dtype=bool)
    inside = seen_position < depth[seen_user]
    keep[start[seen_user[inside]] + seen_position[inside]] = False
    kept = np.cumsum(keep)
    rank = kept - np.concatenate([[0], kept])[start][owner]  # 1-based among the user's kept positions
    keep &= rank <= k
    rows = position[keep]  # the pool's row order is its ranking
    return pl.DataFrame({
        USER_ID: targets.gather(owner[keep]),
        ITEM_ID: pool[ITEM_ID].gather(rows),
        RANK: pl.Series(rank[keep], dtype=pl.Int32),
        SCORE: pool[_COUNT].gather(rows).cast(pl.Float32),
    })


def complete_lists(
    ranked: pl.DataFrame, fallback: pl.DataFrame, seen: pl.DataFrame | None, k: int
) -> pl.DataFrame:
    """Enforce the list guarantees: no duplicate, no seen item, K items unless fewer exist.

    Args:
        ranked: schema.RANKED_LIST rows of the arm (may be short, may repeat an item); rows of one
            user in rank order.
        fallback: schema.RANKED_LIST rows (rows of one user in rank order) appended, score set to
            null, after each user's own items until the list holds k, e.g. `popular_lists`.
        seen: user_id, item_id pairs to drop (None: keep them).
        k: list length.

    Returns:
        schema.RANKED_LIST frame, each user's rows in rank order; ranks 1..n without gaps.
    """
    # Row order within a user decides the rank, so concatenation (own items first) is the order.
    parts = [
        ranked.select(USER_ID, ITEM_ID, SCORE),
        fallback.select(USER_ID, ITEM_ID, pl.lit(None, pl.Float32).alias(SCORE)),
    ]
    frame = pl.concat(parts).unique([USER_ID, ITEM_ID], keep="first", maintain_order=True)
    if seen is not None:
        frame = frame.join(seen.select(USER_ID, ITEM_ID).unique(), on=[USER_ID, ITEM_ID], how="anti",
                           maintain_order="left")
    return (
        frame.with_columns((pl.int_range(pl.len()).over(USER_ID) + 1).cast(pl.Int32).alias(RANK))
        .filter(pl.col(RANK) <= k)
        .select(USER_ID, ITEM_ID, RANK, pl.col(SCORE).cast(pl.Float32))
    )


@dataclass(frozen=True)
class Server:
    """What one arm serves to warm users.

    Attributes:
        run_id: the MLflow run behind the lists (None for a baseline without one).
        model_version: e.g. the sha256 prefix of the booster text, or "most-popular".
        lists: users -> schema.RANKED_LIST of those users (best first; may be short).
        booster_sha256: sha256 of the booster text the lists are scored with (None: no booster).
        registered: the registered model version served: {"name", "version", "alias", "uri"}
            (alias None when named by number); None when the booster is no registered version.
        clean: the lists already keep the guarantees (no duplicate, no item the export drops as
            seen, ranks 1..n in row order, at most K), as `popular_lists` builds them; the
            export then only tops up short lists instead of cleaning every row again.
        takes_seen: `lists` is called as lists(users, seen) with the batch's seen pairs to
            leave out (None when the export keeps seen items), so the arm needs no history.
    """

    run_id: str | None
    model_version: str
    lists: Callable[..., pl.DataFrame]
    booster_sha256: str | None = None
    registered: Mapping[str, str | None] | None = None
    clean: bool = False
    takes_seen: bool = False


def popular_server(pool: pl.DataFrame, k: int) -> Server:
    """The most-popular arm: `popular_lists` of each batch, leaving out the batch's seen items
    when the export does."""

    def lists(users: Sequence[str], seen: pl.DataFrame | None) -> pl.DataFrame:
        return popular_lists(pool, seen, users, k)

    return Server(None, "most-popular", lists, clean=True, takes_seen=True)


def export_batches(
    assignments: pl.DataFrame,
    servers: Mapping[str, Server],
    seen: pl.DataFrame,
    pool: pl.DataFrame,
    k: int,
    exclude_seen: bool,
    batch_users: int,
    parallel_batches: int = 1,
) -> Iterator[pl.DataFrame]:
    """schema.EXPORT_LIST frames, one per batch of `batch_users` users in user_id order.

    Args:
        assignments: user_id, arm, cold_start per user, sorted by user_id (holdout users get no rows).
        servers: arm name -> its Server (its `lists` may be called from several threads at once).
        seen: user_id, item_id of every known interaction (the whole history).
        pool: from `popularity_pool`; serves cold-start users and tops up short lists.
        k: items per user.
        exclude_seen: leave out seen items (also from the top-up).
        batch_users: users per batch.
        parallel_batches: batches built at once, each in its own thread; they are still yielded
            one at a time, in order, and each is built exactly as it would be alone.
    """
    seen_of = seen_lookup(seen) if exclude_seen else None
    starts = range(0, assignments.height, batch_users)

    def build(start: int) -> pl.DataFrame:
        return _batch_lists(assignments.slice(start, batch_users), servers, seen_of, pool, k)

    if parallel_batches <= 1 or len(starts) <= 1:
        yield from map(build, starts)
        return
    # Much of a batch is single-threaded Python, polars and numpy; LightGBM, FAISS, polars and
    # numpy's large operations release the GIL, so another batch in flight can use an idle core.
    with ThreadPoolExecutor(max_workers=parallel_batches) as building:
        pending: deque[Future] = deque()
        try:
            for start in starts:
                pending.append(building.submit(build, start))
                if len(pending) >= parallel_batches:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early or a batch failed
                future.cancel()


def _batch_lists(
    batch: pl.DataFrame,
    servers: Mapping[str, Server],
    seen_of: Callable[[Sequence[str]], pl.DataFrame] | None,
    pool: pl.DataFrame,
    k: int,
) -> pl.DataFrame:
    """The schema.EXPORT_LIST frame of one batch of assignments (see `export_batches`)."""
    drop = seen_of(batch[USER_ID]) if seen_of is not None else None
    frames = []
    for arm, server in servers.items():
        members = batch.filter(pl.col(ARM) == arm)
        warm = members.filter(~pl.col(COLD_START))[USER_ID].to_list()
        cold = members.filter(pl.col(COLD_START))[USER_ID].to_list()
        parts = []
        if warm:
            # Clean first (duplicates, seen items), then top up only the lists left short.
            ranked = server.lists(warm, drop) if server.takes_seen else server.lists(warm)
            if not server.clean:
                ranked = complete_lists(ranked, schema.empty_frame(schema.RANKED_LIST), drop, k)
            full = set(ranked.group_by(USER_ID).len().filter(pl.col("len") >= k)[USER_ID].to_list())
            short = [u for u in warm if u not in full]
            if short:
                ranked = complete_lists(ranked, popular_lists(pool, drop, short, k), drop, k)
            parts.append(ranked.with_columns(pl.lit(False).alias(COLD_START)))
        if cold:
            parts.append(popular_lists(pool, None, cold, k).with_columns(pl.lit(True).alias(COLD_START)))
        for part in parts:
            frames.append(
                part.with_columns(
                    pl.lit(arm).alias(ARM),
                    pl.lit(server.run_id, pl.String).alias(RUN_ID),
                    pl.lit(server.model_version).alias(MODEL_VERSION),
                )
            )
    if frames:
        # Sorted by (user_id, rank) through one integer, the user's position in the batch
        # then the rank: ~5x faster than sorting the strings (a user has each rank once).
        position = batch.select(USER_ID).sort(USER_ID).with_row_index("_position")
        out = (pl.concat(frames).join(position, on=USER_ID, how="left", maintain_order="left")
               .sort(pl.col("_position").cast(pl.Int64) * 2**32 + pl.col(RANK)).drop("_position"))
    else:
        out = schema.empty_frame(schema.EXPORT_LIST)
    return out.select([pl.col(c).cast(t) for c, t in schema.EXPORT_LIST.items()])


def seen_candidates(history: pl.DataFrame, users: Sequence[str]) -> pl.DataFrame:
    """The users' own interacted items as schema.CANDIDATES (source "seen", no retrieval score or
    rank: missing values to the ranker), for exports that may repeat items."""
    wanted = pl.DataFrame({USER_ID: pl.Series(list(users), dtype=pl.String)})
    return (
        history.select(USER_ID, ITEM_ID)
        .join(wanted, on=USER_ID, how="semi")
        .unique()
        .sort(USER_ID, ITEM_ID)
        .select(
            USER_ID,
            ITEM_ID,
            pl.lit("seen").alias(schema.SOURCE),
            pl.lit(None, pl.Float32).alias(schema.RETRIEVAL_SCORE),
            pl.lit(None, pl.Int32).alias(schema.RETRIEVAL_RANK),
        )
    )


def ranker_lists(
    config: ExperimentConfig,
    stage: StageOne,
    ranker: Ranker,
    history: pl.DataFrame,
    k: int,
    exclude_seen: bool,
    llm: LLMSignals | None = None,
) -> Callable[[Sequence[str]], pl.DataFrame]:
    """The full two-stage lists: the stage pipeline (`pipeline.cutoff_frame`) on a serving
    cut-off of the users (data.cutoffs.serving_cutoff: every interaction is history, reference
    times by the rule the run was trained with), the run's booster, top k by score (ties:
    stage-1 order).

    Args:
        config: the run's recorded config (stage sections, split.protocol, llm.enabled).
        stage: stage 1 fitted on the whole history with that config (pipeline.fit_stage).
        ranker: the run's booster (ranking.load_ranker).
        history: every known interaction (schema.INTERACTIONS).
        k: list length.
        exclude_seen: False adds the user's interacted items as candidates (source "seen"), which
            the ranker never saw in training; meant for re-consumption catalogs.
        llm: the LLM signals of a run trained with `llm.enabled` (llm_features.prepare_llm).
    """

    def lists(users: Sequence[str]) -> pl.DataFrame:
        extra = None if exclude_seen else seen_candidates(history, users)
        cutoff = serving_cutoff(history, list(users), config.split.protocol)
        frame, _, _ = stage_frame(config, stage, cutoff, llm, extra=extra)
        return rank_candidates(frame, ranker.score(frame), k, config.slots.new_items)

    return lists


def retrieval_lists(
    stage: StageOne, history: pl.DataFrame, retrieval: RetrievalConfig, k: int, exclude_seen: bool,
    protocol: str = "leave_last_out",
) -> Callable[[Sequence[str]], pl.DataFrame]:
    """The retrieval-only baseline: stage-1 candidates in stage-1 order (evaluation.scoring.stage_one_rankings),
    then the user's seen items unless `exclude_seen`; reference times as in `ranker_lists`."""

    def lists(users: Sequence[str]) -> pl.DataFrame:
        candidates = generate_candidates(stage, history, users, retrieval,
                                         serving_ref_times(history, list(users), protocol))
        if not exclude_seen:
            candidates = merge_candidates([candidates, seen_candidates(history, users)])
        return stage_one_rankings(candidates, k)

    return lists


def config_digest(text: str) -> str:
    """sha256 hex digest of a recorded config file's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_version(booster_text: str) -> str:
    """The first 12 hex digits of the sha256 of a booster's LightGBM text."""
    return hashlib.sha256(booster_text.encode("utf-8")).hexdigest()[:12]


def arm_users(assignments: pl.DataFrame) -> dict[str, tuple[int, int]]:
    """Users and cold-start users of each arm in `assignments` (schema.ASSIGNMENTS rows)."""
    per_arm = assignments.group_by(ARM).agg(pl.len().alias("users"), pl.col(COLD_START).sum().alias("cold"))
    return {row[ARM]: (int(row["users"]), int(row["cold"])) for row in per_arm.iter_rows(named=True)}


def build_manifest(
    plans: Sequence[ArmPlan],
    servers: Mapping[str, Server],
    users: Mapping[str, tuple[int, int]],
    rows_per_arm: Mapping[str, int],
    files: Mapping[str, dict],
    settings: Mapping[str, object],
    unknown_users: Sequence[str],
    created_at: str,
    max_listed: int = 1000,
) -> dict:
    """The manifest: arms (run, model version, registered version, booster hash, share, buckets,
    user and row counts), counts, files.

    Args:
        plans: the arm plans (holdout included).
        servers: arm name -> Server (not the holdout).
        users: (users, cold-start users) of each arm that has any (`arm_users`).
        rows_per_arm: rows written per arm.
        files: file name -> {"sha256", "bytes", "rows"}.
        settings: run-level facts (run_id, config_hash, data_hash, salt, top_k, ...) copied as is.
        unknown_users: requested ids the data does not know (listed up to `max_listed`).
        created_at: ISO-8601 UTC time; the only entry that differs between identical exports.
    """
    arms = {}
    for plan in plans:
        server = servers.get(plan.name)
        n_users, n_cold = users.get(plan.name, (0, 0))
        arms[plan.name] = {
            "source": plan.source,
            "run_id": server.run_id if server else None,
            "model_version": server.model_version if server else None,
            "registered_model": dict(server.registered) if server and server.registered else None,
            "booster_sha256": server.booster_sha256 if server else None,
            "share": plan.share,
            "buckets": [plan.low, plan.high],
            "users": int(n_users),
            "cold_start_users": int(n_cold),
            "rows": int(rows_per_arm.get(plan.name, 0)),
        }
    return {
        **settings,
        "created_at": created_at,
        "bucket_hash": f"sha256(salt + user_id), first 8 bytes big-endian, modulo {BUCKETS}",
        "arms": arms,
        "users": {
            "total": sum(n for n, _ in users.values()),
            "cold_start": sum(cold for _, cold in users.values()),
            "unknown": len(unknown_users),
            "unknown_ids": sorted(unknown_users)[:max_listed],
        },
        "rows": int(sum(rows_per_arm.values())),
        "files": dict(files),
    }
