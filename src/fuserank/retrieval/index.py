"""Stage 1: FAISS index build and exact-exclusion search, and the candidate sources.

Item vectors are float32 `(n_items, d)`, rows L2-normalised (or zero for an item with no
usable modality), so inner product is cosine similarity. Every candidate source returns a
frame with exactly `schema.CANDIDATES`, sorted by user_id then retrieval_rank (1 = best).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse

from fuserank import progress
from fuserank.retrieval.sharding import as_faiss_index, build_sharded
from fuserank.schema import (
    CANDIDATES,
    ITEM_ID,
    RETRIEVAL_RANK,
    RETRIEVAL_SCORE,
    SOURCE,
    TIMESTAMP,
    USER_ID,
)

# faiss's own default (40) loses recall on clustered catalogs; 2*M keeps build time modest.
_MIN_EF_CONSTRUCTION = 128
# Largest k a faiss GPU index accepts in one search; larger batches go to the CPU copy.
_GPU_MAX_K = 2048
_ROW = "_row"
_USER = "_user"


@dataclass
class ItemIndex:
    """A FAISS inner-product index over item vectors; index row i is `item_ids[i]`.

    `cpu_index` holds a CPU copy when `on_gpu`, for searches whose k exceeds the GPU limit;
    `gpu_resources` keeps the GPU resources alive as long as the index.
    """

    index: Any
    item_ids: tuple[str, ...]
    kind: str
    on_gpu: bool
    cpu_index: Any = field(default=None, repr=False)
    gpu_resources: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        # FAISS objects do not pickle; Dask ships an index to workers as its serialised bytes
        # (the CPU copy of a GPU index; the worker keeps it on the CPU).
        import faiss

        cpu = self.cpu_index if self.on_gpu else self.index
        if isinstance(cpu, faiss.IndexShards):
            raise ValueError("a sharded index (retrieval.shards > 1) cannot be shipped to Dask workers; "
                             "use retrieval.shards=1 with dask.enabled")
        return {"bytes": faiss.serialize_index(cpu), "item_ids": self.item_ids, "kind": self.kind}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import faiss

        self.index = faiss.deserialize_index(state["bytes"])
        self.item_ids, self.kind, self.on_gpu = state["item_ids"], state["kind"], False
        self.cpu_index = self.gpu_resources = None


def build_index(
    vectors: np.ndarray,
    item_ids: Sequence[str],
    kind: str = "flat",
    hnsw_m: int = 32,
    hnsw_ef_search: int = 256,
    use_gpu: str = "auto",
    ivfpq: IVFPQSettings | None = None,
) -> ItemIndex:
    """Build an inner-product FAISS index over item vectors.

    Args:
        vectors: float32 `(n_items, d)`, rows L2-normalised or zero.
        item_ids: `n_items` ids; `item_ids[i]` owns row i.
        kind: "flat" (exact), "hnsw", "ivfpq" (IVF-PQ trained on a sample, optionally split
            into shards that share its codebooks; see `ivfpq`), or any FAISS index-factory string
            such as "IVF64,PQ16" (trained on all of `vectors` when it needs training).
        hnsw_m: HNSW graph degree M.
        hnsw_ef_search: HNSW default efSearch (search() raises it to k when k is larger).
        use_gpu: "auto" moves flat-like indexes to the GPU when the installed faiss has GPU
            support and sees a device; "never" keeps the index on the CPU ("ivfpq" stays on the CPU).
        ivfpq: the settings of kind "ivfpq" (defaults when None).

    Returns:
        The ItemIndex.

    Raises:
        ValueError: shapes disagree, `use_gpu` is unknown, or FAISS rejects the factory string.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n_items, d), got shape {vectors.shape}")
    if len(item_ids) != vectors.shape[0]:
        raise ValueError(f"{len(item_ids)} item ids for {vectors.shape[0]} vectors")
    if use_gpu not in ("auto", "never"):
        raise ValueError(f"use_gpu must be 'auto' or 'never', got {use_gpu!r}")
    n, d = vectors.shape
    with progress.step(f"build {kind} index") as s:
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(_MIN_EF_CONSTRUCTION, 2 * hnsw_m)
            index.hnsw.efSearch = hnsw_ef_search
        elif kind == "ivfpq":
            settings = ivfpq or IVFPQSettings()
            index = as_faiss_index(build_sharded(vectors, settings.shards, settings.lists, settings.pq_m,
                                                 settings.pq_bits, settings.nprobe, settings.train_sample,
                                                 settings.seed))
        else:
            try:
                index = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as err:
                raise ValueError(f"FAISS cannot build index {kind!r} for d={d}: {err}") from err
            if not index.is_trained:
                index.train(vectors)
        if kind != "ivfpq":  # build_sharded fills its shards itself
            index.add(vectors)
        n_bytes = n * d * 4 if kind == "flat" else _index_bytes(faiss, index)
        item_index = ItemIndex(index=index, item_ids=tuple(item_ids), kind=kind, on_gpu=False)
        if use_gpu == "auto" and kind != "ivfpq" and not _is_hnsw(faiss, index) and _gpu_available(faiss):
            _move_to_gpu(faiss, item_index)
        device = "gpu" if item_index.on_gpu else "cpu"
        s.done(f"{n:,} items x {d}-d, {kind}, {progress.megabytes(n_bytes)}, {device}")
    return item_index


@dataclass(frozen=True)
class IVFPQSettings:
    """Kind "ivfpq": `lists` coarse lists, `pq_m` sub-quantisers of `pq_bits` bits, `nprobe` lists
    probed per query, trained on `train_sample` sampled rows (0: all), split into `shards`."""

    lists: int = 1024
    pq_m: int = 48
    pq_bits: int = 8
    nprobe: int = 32
    train_sample: int = 50_000
    shards: int = 1
    seed: int = 0


def _index_bytes(faiss: Any, index: Any) -> int:
    if isinstance(index, faiss.IndexShards):
        return sum(_index_bytes(faiss, index.at(i)) for i in range(index.count()))
    return int(faiss.serialize_index(index).nbytes)


def _gpu_available(faiss: Any) -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _is_hnsw(faiss: Any, index: Any) -> bool:
    return isinstance(index, faiss.IndexHNSW)


def _move_to_gpu(faiss: Any, item_index: ItemIndex) -> None:
    resources = faiss.StandardGpuResources()
    try:
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, item_index.index)
    except RuntimeError:
        return  # this index type has no GPU implementation: stay on the CPU
    item_index.cpu_index = item_index.index
    item_index.index = gpu_index
    item_index.gpu_resources = resources
    item_index.on_gpu = True


def search(
    index: ItemIndex,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[np.ndarray],
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per query, never returning the rows in `exclude[q]`.

    Queries are searched in batches of similar exclusion size, each asking FAISS for
    `k + max len(exclude)` results, so the top k after exclusion are exact for a flat index.

    Args:
        index: the ItemIndex.
        queries: float32 `(n_queries, d)`.
        k: results per query.
        exclude: `n_queries` int arrays of item rows to leave out (e.g. the user's history).
        batch_size: queries per FAISS call.

    Returns:
        rows: int64 `(n_queries, k)` item rows, best first, -1 where fewer than k remain.
        scores: float32 `(n_queries, k)` inner products, -inf where the row is -1.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.index.d:
        raise ValueError(f"queries must be (n, {index.index.d}), got shape {queries.shape}")
    if len(exclude) != queries.shape[0]:
        raise ValueError(f"{len(exclude)} exclusion arrays for {queries.shape[0]} queries")
    n_queries, n_items = queries.shape[0], int(index.index.ntotal)
    rows = np.full((n_queries, k), -1, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    if n_queries == 0 or k <= 0 or n_items == 0:
        return rows, scores
    lengths = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=n_queries)
    order = np.argsort(lengths, kind="stable")
    starts = range(0, n_queries, batch_size)
    for start in progress.bar(starts, desc="ann search", total=len(starts), unit="batch"):
        batch = order[start : start + batch_size]
        k_batch = int(min(n_items, k + lengths[batch].max()))
        found_scores, found_rows = _search_raw(faiss, index, queries[batch], k_batch)
        excluded = _excluded_mask(found_rows, [exclude[q] for q in batch], n_items)
        keep = (found_rows >= 0) & ~excluded
        position = np.cumsum(keep, axis=1) - 1
        keep &= position < k
        r, c = np.nonzero(keep)
        rows[batch[r], position[r, c]] = found_rows[r, c]
        scores[batch[r], position[r, c]] = found_scores[r, c]
    return rows, scores


def _search_raw(faiss: Any, index: ItemIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    target = index.index
    if index.on_gpu and k > _GPU_MAX_K:
        target = index.cpu_index
    if _is_hnsw(faiss, target) and target.hnsw.efSearch < k:
        # Per-call parameters leave the index's own efSearch untouched.
        params = faiss.SearchParametersHNSW(efSearch=k)
        return target.search(queries, k, params=params)
    return target.search(queries, k)


def _excluded_mask(found: np.ndarray, exclude: list[np.ndarray], n_items: int) -> np.ndarray:
    # One key per (query-in-batch, row) pair turns the per-query membership test into one isin.
    sizes = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=len(exclude))
    if sizes.sum() == 0:
        return np.zeros(found.shape, dtype=bool)
    owner = np.repeat(np.arange(len(exclude), dtype=np.int64), sizes)
    excluded_keys = owner * n_items + np.concatenate(exclude).astype(np.int64)
    found_keys = np.arange(found.shape[0], dtype=np.int64)[:, None] * n_items + found
    return np.isin(found_keys, excluded_keys)


def user_queries(
    history: pl.DataFrame,
    item_ids: Sequence[str],
    item_vectors: np.ndarray,
    query_items: int = 50,
    half_life: float = 10.0,
) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """One query vector per user: the recency-weighted mean of their latest item vectors.

    The user's interactions on known items are ordered by timestamp, ties in `history`'s row
    order (see data.split); the newest
    has weight 1 and the one j steps older `0.5 ** (j / half_life)`; only the last
    `query_items` count. Items missing from `item_ids` are ignored.

    Args:
        history: interactions frame (schema.INTERACTIONS columns).
        item_ids: `n_items` ids, row i of `item_vectors` belongs to `item_ids[i]`.
        item_vectors: float32 `(n_items, d)`.
        query_items: how many of the latest interactions make the query.
        half_life: in interactions; the weight halves every `half_life` steps back.

    Returns:
        users: every user in `history`, sorted.
        queries: float32 `(n_users, d)`, L2-normalised (zero for a user with no known item
            or only zero vectors).
        histories: per user, the sorted unique int64 item rows of their whole known history.
    """

    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if item_vectors.ndim != 2 or item_vectors.shape[0] != len(item_ids):
        raise ValueError(f"item_vectors shape {item_vectors.shape} does not fit {len(item_ids)} item ids")
    users, mix, histories = query_weights(history, item_ids, query_items, half_life)
    return users, mixed_queries(mix, item_vectors), histories


def query_weights(
    history: pl.DataFrame, item_ids: Sequence[str], query_items: int = 50, half_life: float = 10.0,
) -> tuple[list[str], sparse.csr_matrix, list[np.ndarray]]:
    """What `user_queries` weighs, whatever the vectors: one set of weights serves every view.

    Returns:
        users: every user in `history`, sorted.
        mix: float32 csr (n_users, n_items), each user's recency weights of their latest items.
        histories: per user, the sorted unique int64 item rows of their whole known history.
    """
    if query_items < 1 or not half_life > 0:
        raise ValueError(f"need query_items >= 1 and half_life > 0, got {query_items}, {half_life}")
    catalog = _catalog_rows(item_ids)
    users = history.select(pl.col(USER_ID).unique().sort()).with_row_index(_USER)
    known = (
        history.select(USER_ID, ITEM_ID, TIMESTAMP)
        .with_row_index("_seq")
        .join(catalog, on=ITEM_ID, how="inner")
        .join(users, on=USER_ID, how="inner")
        .sort(_USER, TIMESTAMP, "_seq")
    )
    age = pl.len().over(_USER) - 1 - pl.int_range(pl.len()).over(_USER)
    recent = known.with_columns(age.alias("_age")).filter(pl.col("_age") < query_items)
    weights = np.power(0.5, recent["_age"].to_numpy() / half_life).astype(np.float32)
    n_users, n_items = users.height, len(item_ids)
    mix = sparse.csr_matrix(
        (weights, (recent[_USER].to_numpy(), recent[_ROW].to_numpy())), shape=(n_users, n_items)
    )
    seen = known.select(_USER, _ROW).unique().sort(_USER, _ROW)
    counts = np.bincount(seen[_USER].to_numpy(), minlength=n_users)
    histories = np.split(seen[_ROW].to_numpy().astype(np.int64), np.cumsum(counts)[:-1])
    return users[USER_ID].to_list(), mix, histories


def mixed_queries(mix: sparse.csr_matrix, item_vectors: np.ndarray) -> np.ndarray:
    """float32 (n_users, d) L2-normalised rows of `mix @ item_vectors` (zero rows stay zero)."""
    queries = np.asarray(mix @ np.ascontiguousarray(item_vectors, dtype=np.float32), dtype=np.float32)
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    return np.divide(queries, norms, out=np.zeros_like(queries), where=norms > 0)


def _catalog_rows(item_ids: Sequence[str]) -> pl.DataFrame:
    catalog = pl.DataFrame({ITEM_ID: pl.Series(list(item_ids), dtype=pl.String)}).with_row_index(_ROW)
    if catalog[ITEM_ID].n_unique() != catalog.height:
        raise ValueError("item_ids contains duplicates")
    return catalog.with_columns(pl.col(_ROW).cast(pl.Int64))


def retrieve(
    index: ItemIndex,
    history: pl.DataFrame,
    item_vectors: np.ndarray,
    n: int,
    query_items: int = 50,
    half_life: float = 10.0,
    users: Sequence[str] | None = None,
    batch_size: int = 1024,
) -> pl.DataFrame:
    """ANN candidates: the top-n items per user that are not in the user's history.

    Args:
        index: ItemIndex built over `item_vectors` (same rows, same item ids).
        history: interactions the queries and the exclusions come from.
        item_vectors: float32 `(n_items, d)`.
        n: candidates per user.
        query_items, half_life: see `user_queries`.
        users: whom to retrieve for; default every user in `history`. A user without known
            history (or whose query vector is zero) gets no ANN candidates.
        batch_size: queries per FAISS call.

    Returns:
        CANDIDATES frame, source "ann", sorted by user_id, retrieval_rank.
    """
    if item_vectors.shape[0] != len(index.item_ids):
        raise ValueError(f"{item_vectors.shape[0]} item vectors for an index of {len(index.item_ids)} items")
    with progress.step("ann retrieval") as s:
        if users is not None:
            wanted = pl.DataFrame({USER_ID: pl.Series(list(users), dtype=pl.String)})
            history = history.join(wanted.unique(), on=USER_ID, how="semi")
        user_ids, queries, histories = user_queries(history, index.item_ids, item_vectors, query_items, half_life)
        frame = search_candidates(index, user_ids, queries, histories, n, "ann", batch_size)
        s.done(f"{frame[USER_ID].n_unique():,} users, {frame.height:,} candidates")
    return frame


def search_candidates(index: ItemIndex, user_ids: Sequence[str], queries: np.ndarray, histories: Sequence[np.ndarray],
                      n: int, source: str, batch_size: int = 1024) -> pl.DataFrame:
    """Candidates from one query vector per user: the top-n index items not in the user's history.

    Args:
        index: the ItemIndex to search.
        user_ids: one user per query row.
        queries: float32 (n_users, d); a zero row gets no candidates.
        histories: per user, int64 item rows (in the index's order) to leave out.
        n: candidates per user.
        source: the candidates' source name.
        batch_size: queries per FAISS call.

    Returns:
        CANDIDATES frame, sorted by user_id, retrieval_rank.
    """
    usable = np.flatnonzero(np.any(queries != 0, axis=1))
    rows, scores = search(index, queries[usable], n, [histories[i] for i in usable], batch_size)
    q, position = np.nonzero(rows >= 0)
    return pl.DataFrame(
        {
            USER_ID: pl.Series(list(user_ids), dtype=pl.String).gather(usable[q]),
            ITEM_ID: pl.Series(index.item_ids, dtype=pl.String).gather(rows[q, position]),
            SOURCE: source,
            RETRIEVAL_SCORE: pl.Series(scores[q, position], dtype=pl.Float32),
            RETRIEVAL_RANK: pl.Series(position + 1, dtype=pl.Int32),
        },
        schema=CANDIDATES,
    ).sort(USER_ID, RETRIEVAL_RANK)


def seen_rows(history: pl.DataFrame, users: Sequence[str], item_ids: Sequence[str]) -> list[np.ndarray]:
    """Per user of `users`, the sorted int64 rows in `item_ids` of the items in their history."""
    owner, rows = seen_pairs(history, users, item_ids)
    return np.split(rows, np.cumsum(np.bincount(owner, minlength=len(users)))[:-1])


def seen_pairs(history: pl.DataFrame, users: Sequence[str], item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`seen_rows` as two flat int64 arrays (position in `users`, item row), sorted by both."""
    user_index = pl.DataFrame({USER_ID: pl.Series(list(users), dtype=pl.String),
                               "_u": np.arange(len(users), dtype=np.int64)})
    item_index = pl.DataFrame({ITEM_ID: pl.Series(list(item_ids), dtype=pl.String),
                               "_i": np.arange(len(item_ids), dtype=np.int64)})
    pairs = (history.select(USER_ID, ITEM_ID).join(user_index, on=USER_ID).join(item_index, on=ITEM_ID)
             .select("_u", "_i").unique().sort("_u", "_i"))
    return pairs["_u"].to_numpy().astype(np.int64), pairs["_i"].to_numpy().astype(np.int64)


def merge_candidates(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Union of candidate frames; a (user, item) found by several sources keeps its first frame's row.

    Args:
        frames: CANDIDATES frames in priority order.

    Returns:
        CANDIDATES frame sorted by user_id, then frame order, then retrieval_rank (the
        "stage-1 order", used as the retrieval-only baseline).
    """
    if not frames:
        return pl.DataFrame(schema=CANDIDATES)
    tagged = [_as_candidates(f).with_columns(pl.lit(i, dtype=pl.Int32).alias("_frame")) for i, f in enumerate(frames)]
    ordered = pl.concat(tagged).sort(USER_ID, "_frame", RETRIEVAL_RANK, maintain_order=True)
    # The first row of each (user, item): hashing one integer per pair costs a third of
    # hashing the two strings.
    users, items = ordered[USER_ID].unique(), ordered[ITEM_ID].unique()
    pair = (ordered[USER_ID].cast(pl.Enum(users)).to_physical().cast(pl.Int64) * len(items)
            + ordered[ITEM_ID].cast(pl.Enum(items)).to_physical().cast(pl.Int64))
    return ordered.filter(pair.is_first_distinct()).drop("_frame")


def candidate_recall(candidates: pl.DataFrame, targets: pl.DataFrame) -> float:
    """Share of target (user_id, item_id) rows found among the candidates.

    Args:
        candidates: CANDIDATES frame.
        targets: frame with user_id and item_id (e.g. held-out interactions); a user with
            no candidates counts as misses.

    Returns:
        Recall in [0, 1]; NaN when `targets` is empty.
    """
    if targets.height == 0:
        return float("nan")
    pairs = candidates.select(USER_ID, ITEM_ID).unique()
    found = targets.select(USER_ID, ITEM_ID).join(pairs, on=[USER_ID, ITEM_ID], how="semi").height
    return found / targets.height


def _as_candidates(frame: pl.DataFrame) -> pl.DataFrame:
    missing = sorted(set(CANDIDATES) - set(frame.columns))
    if missing:
        raise ValueError(f"candidate frame lacks column(s) {missing}")
    return frame.select([pl.col(name).cast(dtype) for name, dtype in CANDIDATES.items()])
