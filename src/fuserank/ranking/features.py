"""Features per (user, candidate): pure polars/numpy functions adding named columns.

Every statistic here is computed from the `history` frame handed in, which the caller builds from
the interactions before the targets being predicted, and each query sees that history only up to
its own reference time (data/cutoffs.py): popularity, recency, item age, ratings and the user's
popularity gap count only interactions at or before it (popularity.item_timeline). Under
leave-last-out the reference time is the user's newest history interaction; under global time
it is the cut time. The item embeddings and EASE are fitted on the whole history handed in (see
docs/protocol.md for what that lets them learn).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.retrieval.collaborative import ItemItemModel, ease_feature
from fuserank.retrieval.covisitation import fit_transitions, transition_features
from fuserank.config import FeatureConfig
from fuserank.encoders.base import Embeddings
from fuserank.ranking.feature_groups import GROUP_PREFIXES, GROUPS
from fuserank.retrieval.popularity import Timeline, item_timeline, ref_time_array, reference_times
from fuserank.retrieval.index import mixed_queries, query_weights

DAY = 86_400.0
# Catalogs up to about 4,000 items index their item pairs with a dense table (16M slots).
_DENSE_PAIRS = 1 << 24
# Row products gather their operands in blocks that stay in the CPU cache: gathering the whole
# (n, d) operand first streams it through memory, which cost ~10x the arithmetic.
_CACHE_CHUNK_BYTES = 2_000_000

def feature_group(name: str) -> str:
    """The group a feature belongs to (e.g. "cos_text_last" -> "text"); "other" if none matches."""
    for prefix, group in GROUP_PREFIXES.items():
        if name.startswith(prefix):
            return group
    return "other"


def select_features(names: Sequence[str], disabled_groups: Sequence[str]) -> list[str]:
    """`names` without the features of `disabled_groups` (order kept).

    Raises:
        ValueError: a disabled group is not a known group, or nothing would be left.
    """
    known = {*GROUPS, "other"}
    unknown = sorted(set(disabled_groups) - known)
    if unknown:
        raise ValueError(f"features.disabled_groups: unknown group(s) {unknown}; known groups are {sorted(known)}")
    kept = [n for n in names if feature_group(n) not in set(disabled_groups)]
    if not kept:
        raise ValueError(f"features.disabled_groups {list(disabled_groups)} leaves the ranker no feature")
    return kept


@dataclass(frozen=True)
class UserHistory:
    """Per-user history of the users of one candidate frame, in that frame's user order.

    Attributes:
        user_ids: users in row order.
        recent: int64 (n_users, k) item rows of the k newest interactions, newest first, -1 padded.
        ref_time: int64 (n_users,) each user's reference time (seconds).
    """

    user_ids: tuple[str, ...]
    recent: np.ndarray
    ref_time: np.ndarray


def summarise_history(history: pl.DataFrame, users: Sequence[str], item_ids: Sequence[str], last_items: int,
                      ref_times: pl.DataFrame | None = None) -> UserHistory:
    """Collect each user's newest items (equal timestamps: later in row order is newer, as in
    retrieval) and reference time (`ref_times`, schema.REF_TIMES; None: each user's newest
    history interaction, the leave-last-out rule)."""
    index = pl.DataFrame({schema.ITEM_ID: list(item_ids), "_row": np.arange(len(item_ids))})
    newest = (
        history.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP)
        .with_row_index("_seq")
        .filter(pl.col(schema.USER_ID).is_in(list(users)))
        .join(index, on=schema.ITEM_ID, how="inner")
        .sort([schema.USER_ID, schema.TIMESTAMP, "_seq"], descending=[False, True, True])
        .with_columns(pl.int_range(pl.len()).over(schema.USER_ID).alias("_age"))
        .filter(pl.col("_age") < last_items)
    )
    user_index = {u: i for i, u in enumerate(users)}
    u = np.array([user_index[x] for x in newest[schema.USER_ID].to_list()], dtype=np.int64)
    age = newest["_age"].to_numpy().astype(np.int64)
    recent = np.full((len(users), last_items), -1, dtype=np.int64)
    recent[u, age] = newest["_row"].to_numpy().astype(np.int64)
    if ref_times is None:
        ref_times = reference_times(history, users)
    return UserHistory(tuple(users), recent, ref_time_array(ref_times, users))


def user_profiles(
    history: pl.DataFrame, hist: UserHistory, item_ids: Sequence[str], views: Mapping[str, np.ndarray],
    profile_items: int, half_life: float,
) -> dict[str, np.ndarray]:
    """Per view, float32 (n_users, d) profile per user of `hist`: the same recency-weighted mean
    as the retrieval query (zero for a user without history)."""
    # A profile depends only on its own user's rows; the others would cost (n_all_users, d) memory
    # per call, which batched export calls thousands of times.
    wanted = pl.DataFrame({schema.USER_ID: pl.Series(list(hist.user_ids), dtype=pl.String)})
    history = history.join(wanted, on=schema.USER_ID, how="semi")
    ids, mix, _ = query_weights(history, item_ids, profile_items, half_life)
    row = {u: i for i, u in enumerate(ids)}
    targets = [t for t, user in enumerate(hist.user_ids) if user in row]
    sources = [row[hist.user_ids[t]] for t in targets]
    profiles = {}
    for name, vectors in views.items():
        profiles[name] = np.zeros((len(hist.user_ids), vectors.shape[1]), dtype=np.float32)
        profiles[name][targets] = mixed_queries(mix, vectors)[sources]
    return profiles


@dataclass(frozen=True)
class RecentPairs:
    """The distinct (candidate item, recent item) pairs of a candidate frame (of a small
    catalog: every pair).

    Attributes:
        left, right: integer (m,) item rows of each pair (n_items: the zero padding row),
            sorted by (left, right).
        inverse: integer (n, k) index into the pairs of each candidate's k newest history items.
        known: bool (n, k) whether the user has that many history items (False: padding).
    """

    left: np.ndarray
    right: np.ndarray
    inverse: np.ndarray
    known: np.ndarray


def recent_pairs(user_rows: np.ndarray, item_rows: np.ndarray, hist: UserHistory, n_items: int) -> RecentPairs:
    """Deduplicate the (candidate, recent item) pairs: a batch of users repeats the same pairs of
    a catalog many times over, and a cosine depends on the pair alone."""
    width = n_items + 1
    # int32 codes and slots halve the memory the (n, k) arrays stream through when they fit.
    dtype = np.int32 if width * width < 2**31 else np.int64
    recent = np.where(hist.recent >= 0, hist.recent, n_items).astype(dtype)[user_rows]
    codes = item_rows.astype(dtype)[:, None] * width + recent
    if width * width <= min(_DENSE_PAIRS, codes.size):
        # A small catalog's every pair costs less to multiply than its distinct pairs cost to find.
        every = np.arange(width * width, dtype=dtype)
        return RecentPairs(every // width, every % width, codes, recent != n_items)
    if width * width <= _DENSE_PAIRS:  # a table of every pair is cheaper than sorting the codes
        seen = np.zeros(width * width, dtype=bool)
        seen[codes] = True
        unique = np.flatnonzero(seen)
        slot = np.cumsum(seen, dtype=dtype) - 1
        inverse = slot[codes]
    else:
        unique, inverse = np.unique(codes, return_inverse=True)
    return RecentPairs(unique // width, unique % width, inverse.reshape(recent.shape), recent != n_items)


def pair_cosines(padded: np.ndarray, pairs: RecentPairs) -> np.ndarray:
    """float32 (n, k) inner products of `pairs` in `padded` (n_items + 1, d), computed once per
    distinct pair (bit for bit what the row-by-row product gives, see `grouped_products`)."""
    return grouped_products(padded, pairs.right, padded, pairs.left)[pairs.inverse]


def grouped_products(many: np.ndarray, many_rows: np.ndarray, one: np.ndarray, one_rows: np.ndarray) -> np.ndarray:
    """float32 (m,) inner products of rows `many[many_rows[j]]` and `one[one_rows[j]]`.

    Where `one_rows` comes in runs (equal rows adjacent: a user's candidates, the pairs of one
    item), a run's rows of `many` meet their row of `one` broadcast, so only `many` is gathered,
    in blocks that stay in the CPU cache. The einsum reduces over d as the product of two
    gathered rows does, so every value is bit for bit that.
    """
    d = many.shape[1]
    out = np.empty(len(many_rows), dtype=np.float32)
    step = max(1, _CACHE_CHUNK_BYTES // (4 * d))
    starts = np.flatnonzero(np.diff(one_rows, prepend=-1))
    if len(starts) * 8 > len(out):  # short runs: a call per run would cost more than it saves
        for first in range(0, len(out), step):
            part = slice(first, first + step)
            out[part] = np.einsum("nd,nd->n", many[many_rows[part]], one[one_rows[part]])
        return out
    ends = np.append(starts[1:], len(out))
    for row, start, end in zip(one_rows[starts].tolist(), starts.tolist(), ends.tolist()):
        for first in range(start, end, step):
            part = slice(first, min(first + step, end))
            out[part] = np.einsum("nd,d->n", many[many_rows[part]], one[row])
    return out


def similarity_features(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    hist: UserHistory,
    profile: np.ndarray,
    vectors: np.ndarray,
    prefix: str,
    pairs: RecentPairs | None = None,
) -> dict[str, np.ndarray]:
    """Cosines between a candidate and the user's history in one modality.

    Args:
        user_rows: int64 (n,) row of each candidate's user in `hist`.
        item_rows: int64 (n,) row of each candidate item in `vectors`.
        hist: the users' summarised history.
        profile: float32 (n_users, d) unit profile vector per user of `hist` (see user_profiles).
        vectors: float32 (n_items, d), L2-normalised rows (zero rows for items without this modality).
        prefix: start of the feature names, e.g. "cos_text".
        pairs: `recent_pairs` of these rows (the same for every modality; None: computed here).

    Returns:
        float32 (n,) arrays: `<prefix>_profile` (recency-weighted mean profile), `<prefix>_last`
        (newest item), `<prefix>_max_recent` and `<prefix>_mean_recent` (over the newest k items),
        `<prefix>_coherence` (mean pairwise cosine of the user's newest k items) and
        `<prefix>_profile_z` (the profile cosine standardised within the user's candidates).
    """
    d = vectors.shape[1]
    padded = np.vstack([vectors, np.zeros((1, d), dtype=np.float32)])  # row -1 -> zeros
    # How alike the user's newest items are in this modality: the mean pairwise cosine, from the
    # norm of their sum. High when the user's taste lives in this modality.
    # Summed slot by slot (the order numpy's sum over that axis adds them in) instead of over a
    # gathered (n_users, k, d) array.
    total = np.zeros((len(hist.recent), d), dtype=np.float32)
    for column in hist.recent.T:
        total += padded[column]
    n = (hist.recent >= 0).sum(axis=1)
    coherence = np.where(n > 1, (np.einsum("ud,ud->u", total, total) - n) / np.maximum(n * (n - 1), 1), 0.0)
    out = {name: np.zeros(len(item_rows), dtype=np.float32) for name in ("profile", "last", "max_recent", "mean_recent")}
    out["profile"][:] = grouped_products(padded, item_rows, profile, user_rows)
    pairs = pairs if pairs is not None else recent_pairs(user_rows, item_rows, hist, len(vectors))
    sims = pair_cosines(padded, pairs)
    out["last"][:] = sims[:, 0]
    # Column by column: numpy reduces a short last axis row by row, several times slower.
    out["max_recent"][:] = functools.reduce(np.maximum, np.where(pairs.known, sims, -1.0).T)
    count = np.maximum(n[user_rows], 1)
    out["mean_recent"][:] = np.where(pairs.known, sims, 0.0).sum(axis=1) / count
    out["coherence"] = coherence[user_rows].astype(np.float32)
    out["profile_z"] = within_user_z(user_rows, out["profile"])
    return {f"{prefix}_{name}": values for name, values in out.items()}


def within_user_z(user_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` standardised within each user's candidates, so one tree split means the same for
    every user whatever the user's own similarity level.

    Args:
        user_rows: int64 (n,) each candidate's user.
        values: float (n,); NaN (no value) is left out of its user's mean and spread, and stays NaN.

    Returns:
        float32 (n,); 0 for a user whose values are all equal.
    """
    filled = np.nan_to_num(values, nan=0.0).astype(np.float64)
    has = ~np.isnan(values)
    count = np.maximum(np.bincount(user_rows, weights=has), 1)
    mean = np.bincount(user_rows, weights=filled) / count
    var = np.bincount(user_rows, weights=filled**2) / count - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    z = (values - mean[user_rows]) / np.where(std > 1e-6, std, 1.0)[user_rows]
    return np.where(has, z, np.nan).astype(np.float32)


def popularity_features(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    hist: UserHistory,
    timeline: Timeline,
    window_days: Sequence[int],
) -> dict[str, np.ndarray]:
    """Item popularity and recency as of each user's reference time.

    Returns float32 (n,) arrays, each counting only interactions at or before the reference time:
    the log count, the log count in each window before it, days since the item's last
    interaction, the item's age (days since its first interaction; NaN before it), the mean
    rating and the log number of ratings.
    """
    ref = hist.ref_time[user_rows]
    out: dict[str, np.ndarray] = {
        "item_log_count": np.log1p(timeline.count(item_rows, ref)).astype(np.float32),
    }
    for days in window_days:
        count = timeline.count_between(item_rows, ref - int(days * DAY), ref)
        out[f"item_log_count_{days}d"] = np.log1p(count).astype(np.float32)
    out["item_days_since_last"] = ((ref - timeline.last_time(item_rows, ref)) / DAY).astype(np.float32)
    out["item_age_days"] = ((ref - timeline.first_time(item_rows, ref)) / DAY).astype(np.float32)
    mean, n_rated = timeline.means(item_rows, ref)
    out["item_mean_rating"] = mean.astype(np.float32)
    out["item_log_rating_count"] = np.log1p(n_rated).astype(np.float32)
    return out


def user_features(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    hist: UserHistory,
    history: pl.DataFrame,
    item_ids: Sequence[str],
    timeline: Timeline,
) -> dict[str, np.ndarray]:
    """User activity, and how the candidate's popularity compares with what the user usually
    picks (both counted at the user's reference time)."""
    item_index = pl.DataFrame({schema.ITEM_ID: list(item_ids), "_i": np.arange(len(item_ids), dtype=np.int64)})
    user_index = pl.DataFrame({schema.USER_ID: list(hist.user_ids), "_u": np.arange(len(hist.user_ids))})
    own = history.join(user_index, on=schema.USER_ID, how="inner")
    stats = own.group_by("_u").agg(
        pl.len().alias("n"),
        pl.col(schema.RATING).mean().alias("mean_rating"),
        pl.col(schema.TIMESTAMP).min().alias("first"),
    )
    n_users = len(hist.user_ids)
    slots = stats["_u"].to_numpy().astype(np.int64)
    n = np.zeros(n_users)
    n[slots] = stats["n"].to_numpy()
    mean_rating = np.full(n_users, np.nan)
    mean_rating[slots] = stats["mean_rating"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    first = np.zeros(n_users)
    first[slots] = stats["first"].to_numpy()
    # The user's taste: mean log popularity of the items they picked, as of their reference time.
    picked = own.join(item_index, on=schema.ITEM_ID, how="inner")
    picked_users = picked["_u"].to_numpy().astype(np.int64)
    picked_pop = np.log1p(timeline.count(picked["_i"].to_numpy(), hist.ref_time[picked_users]))
    taste = np.bincount(picked_users, weights=picked_pop, minlength=n_users) / np.maximum(
        np.bincount(picked_users, minlength=n_users), 1)
    candidate_pop = np.log1p(timeline.count(item_rows, hist.ref_time[user_rows]))
    return {
        "user_log_history": np.log1p(n[user_rows]).astype(np.float32),
        "user_mean_rating": mean_rating[user_rows].astype(np.float32),
        "user_active_days": ((hist.ref_time - first) / DAY)[user_rows].astype(np.float32),
        "user_popularity_gap": (candidate_pop - taste[user_rows]).astype(np.float32),
    }


def build_features(
    candidates: pl.DataFrame,
    history: pl.DataFrame,
    embeddings: Mapping[str, Embeddings],
    fused: np.ndarray,
    config: FeatureConfig,
    profile_items: int = 50,
    half_life: float = 10.0,
    sources: Sequence[str] = ("ann", "popular"),
    ease: ItemItemModel | None = None,
    ref_times: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Add every feature column to a candidates frame.

    Args:
        candidates: schema.CANDIDATES rows (any order; order is kept).
        history: the interactions known before the targets (schema.INTERACTIONS).
        embeddings: per-modality item embeddings, all with the same item_ids order.
        fused: float32 (n_items, D) fused item vectors in that order.
        config: last_items and window_days.
        profile_items, half_life: how the user profile vector is formed (as in retrieval).
        sources: candidate sources that get a `from_<source>` indicator.
        ease: an EASE model fitted on `history`: adds `ease_score` and its within-user z-score.
        ref_times: schema.REF_TIMES of the candidates' users (None: each user's newest history
            interaction); statistics count only interactions at or before them.

    Returns:
        (frame, feature_names): candidates plus float32 feature columns, and their ordered names.
    """
    item_ids = next(iter(embeddings.values())).item_ids if embeddings else None
    if item_ids is None:
        raise ValueError("build_features needs at least one modality's embeddings")
    users = candidates[schema.USER_ID].unique(maintain_order=True).to_list()
    hist = summarise_history(history, users, item_ids, config.last_items, ref_times)
    user_index = pl.DataFrame({schema.USER_ID: users, "_u": np.arange(len(users))})
    item_index = pl.DataFrame({schema.ITEM_ID: list(item_ids), "_i": np.arange(len(item_ids))})
    rows = candidates.join(user_index, on=schema.USER_ID, how="left", maintain_order="left").join(
        item_index, on=schema.ITEM_ID, how="left", maintain_order="left"
    )
    if rows["_i"].null_count():
        missing = rows.filter(pl.col("_i").is_null())[schema.ITEM_ID][0]
        raise ValueError(f"candidate item {missing!r} has no embedding row")
    user_rows = rows["_u"].to_numpy().astype(np.int64)
    item_rows = rows["_i"].to_numpy().astype(np.int64)

    columns: dict[str, np.ndarray] = {
        "retrieval_rank": candidates[schema.RETRIEVAL_RANK].to_numpy().astype(np.float32),
        "retrieval_score": candidates[schema.RETRIEVAL_SCORE].to_numpy().astype(np.float32),
    }
    for name in sources:  # compared in polars: a numpy array of millions of str objects is ~15x slower
        columns[f"from_{name}"] = (candidates[schema.SOURCE] == name).fill_null(False).to_numpy().astype(np.float32)
    views = {"fused": fused} | {f"cos_{m}": emb.vectors for m, emb in embeddings.items()}
    pairs = recent_pairs(user_rows, item_rows, hist, len(item_ids))
    profiles = user_profiles(history, hist, item_ids, views, profile_items, half_life)
    for prefix, vectors in views.items():
        columns.update(similarity_features(user_rows, item_rows, hist, profiles[prefix], vectors, prefix, pairs))
    if ease is not None:
        score = ease_feature(ease, history, users, user_rows, item_rows)
        columns["ease_score"] = score
        columns["ease_score_z"] = within_user_z(user_rows, np.nan_to_num(score, nan=0.0))
    for modality, emb in embeddings.items():
        columns[f"has_{modality}"] = emb.mask[item_rows].astype(np.float32)
    timeline = item_timeline(history, item_ids)
    columns.update(popularity_features(user_rows, item_rows, hist, timeline, config.window_days))
    columns.update(user_features(user_rows, item_rows, hist, history, item_ids, timeline))
    if config.transition_window > 0:
        transitions = fit_transitions(history, item_ids, config.transition_window)
        columns.update(transition_features(transitions, hist.recent, user_rows, item_rows, hist.ref_time))
    names = list(columns)
    frame = candidates.with_columns(pl.Series(name, values, dtype=pl.Float32) for name, values in columns.items())
    return frame, names
