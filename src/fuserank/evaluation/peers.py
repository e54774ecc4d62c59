"""Peer recommenders for benchmarks: most-popular, item-kNN, and wrappers around peer libraries.

Every peer is fitted on one binary user x item matrix and scores every catalog item for a batch
of users; `recommend` then removes what the user has already interacted with and keeps the top
k, so all peers rank over the same items with the same exclusion rule (full ranking). The peer
libraries (implicit's ALS and BPR, cornac's EASE) are imported only when their peer is fitted
(the `bench` extra installs them).

Each peer also carries its tuning grid: the configurations a benchmark tries on the validation
split before refitting the best one. Whenever a benchmark chose a value on an edge of an axis,
that axis was extended on that side (each step is in git history and docs/benchmarks.md):
item-kNN's neighbours (now 5 to 1600) and shrink (up to 5000), ALS's alpha and factors (8 to
256), BPR's factors (8 to 1024) and learning rate (0.0003 to 0.3). The last steps came from the
global-time protocol, whose validation targets are few (81 on ML-100K), so its choices are noisy.
BPR's learning rate 0.3 diverges (NaN factors, recorded as a failed fit): it marks where that
axis ends. `edge_choices` names any axis whose choice still sits on an edge, and the benchmark
records it. A cached fit is keyed by its params and the fitting code, not by this table
(benchmarking.code_digest), so widening a grid fits only the new configurations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from fuserank import schema
from fuserank.retrieval.collaborative import top_k, user_matrix

# user rows (n,) int64 -> float32 (n, n_items) scores, higher is better.
Scorer = Callable[[np.ndarray], np.ndarray]
FitFn = Callable[[sp.csr_matrix, Mapping[str, Any], int], Scorer]


@dataclass(frozen=True)
class Peer:
    """A peer recommender.

    Attributes:
        fit: (binary csr user x item matrix, params, seed) -> Scorer.
        grid: parameter dicts tried on the validation split (the first is the default).
        library: where the model comes from, e.g. "implicit 0.7" or "fuserank".
    """

    fit: FitFn
    grid: tuple[Mapping[str, Any], ...]
    library: str


def _grid(**axes: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    names = list(axes)
    return tuple(dict(zip(names, values, strict=True)) for values in product(*axes.values()))


def fit_popular(matrix: sp.csr_matrix, params: Mapping[str, Any], seed: int) -> Scorer:
    """Item interaction counts, the same for every user (ties broken by item order)."""
    counts = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()
    # A tiny decreasing offset makes ties deterministic: the earlier catalog item wins.
    counts = counts - np.arange(counts.size, dtype=np.float32) * np.float32(1e-6 / max(counts.size, 1))
    return lambda rows: np.broadcast_to(counts, (len(rows), counts.size)).copy()


def item_similarity(matrix: sp.csr_matrix, neighbours: int, shrink: float) -> np.ndarray:
    """Cosine item-item similarity of the binary matrix, each column pruned to its top neighbours.

    Args:
        matrix: binary csr (n_users, n_items).
        neighbours: similar items kept per item (0: keep all).
        shrink: added to the cosine's denominator, damping similarities built on few users.

    Returns:
        float32 (n_items, n_items) S with a zero diagonal; S[j, i] is how much having item j
        recommends item i, so a user's scores are x_u @ S.
    """
    binary = matrix.astype(np.float32)
    co = np.asarray((binary.T @ binary).todense(), dtype=np.float32)
    norms = np.sqrt(np.diag(co)).astype(np.float32)
    sim = co / (np.outer(norms, norms) + np.float32(shrink) + np.float32(1e-9))
    np.fill_diagonal(sim, 0.0)
    if 0 < neighbours < sim.shape[0]:
        weakest = np.argpartition(-sim, neighbours, axis=0)[neighbours:, :]
        np.put_along_axis(sim, weakest, 0.0, axis=0)
    return sim


def fit_item_knn(matrix: sp.csr_matrix, params: Mapping[str, Any], seed: int) -> Scorer:
    """Item-based kNN (cosine, top-`neighbours` per item, `shrink`): score = sum of similarities
    of the candidate to the user's items."""
    sim = item_similarity(matrix, int(params["neighbours"]), float(params["shrink"]))
    binary = matrix.astype(np.float32).tocsr()
    return lambda rows: np.asarray(binary[rows] @ sim, dtype=np.float32)


def _implicit_threads() -> Any:
    from threadpoolctl import threadpool_limits

    # implicit runs its own threads and asks for single-threaded BLAS beside them.
    return threadpool_limits(1, "blas")


def fit_als(matrix: sp.csr_matrix, params: Mapping[str, Any], seed: int) -> Scorer:
    """implicit's AlternatingLeastSquares (Hu, Koren, Volinsky 2008), confidence 1 + alpha."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=int(params["factors"]),
        regularization=float(params["regularization"]),
        alpha=float(params["alpha"]),
        iterations=int(params.get("iterations", 15)),
        random_state=seed,
        num_threads=int(params.get("threads", 2)),
    )
    return _fit_implicit(model, matrix)


class PeerFitError(RuntimeError):
    """A configuration could not be fitted (e.g. it diverged): tuning records it and moves on."""


def _fit_implicit(model: Any, matrix: sp.csr_matrix) -> Scorer:
    """Fit an implicit factorisation model; score = user factors . item factors.

    Raises:
        PeerFitError: the factors went NaN (a learning rate too high for the data).
    """
    from implicit.recommender_base import ModelFitError

    with _implicit_threads():
        try:
            model.fit(matrix.astype(np.float32).tocsr(), show_progress=False)
        except ModelFitError as err:
            raise PeerFitError(f"{type(model).__name__} did not fit: {err}") from err
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda rows: (users[rows] @ items.T).astype(np.float32)


def fit_bpr(matrix: sp.csr_matrix, params: Mapping[str, Any], seed: int) -> Scorer:
    """implicit's BayesianPersonalizedRanking (Rendle et al. 2009)."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(
        factors=int(params["factors"]),
        learning_rate=float(params["learning_rate"]),
        regularization=float(params.get("regularization", 0.01)),
        iterations=int(params.get("iterations", 100)),
        random_state=seed,
        num_threads=int(params.get("threads", 2)),
    )
    return _fit_implicit(model, matrix)


def fit_ease(matrix: sp.csr_matrix, params: Mapping[str, Any], seed: int) -> Scorer:
    """cornac's EASE^R (Steck 2019) with L2 weight `lamb`; posB=False is Steck's original model."""
    from cornac.data import Dataset
    from cornac.models import EASE

    coo = matrix.tocoo()
    # Every catalog item gets a column (cornac's maps follow first appearance), so the
    # identity map keeps our row/column order.
    n_users, n_items = matrix.shape
    uid_map = {str(u): u for u in range(n_users)}
    iid_map = {str(i): i for i in range(n_items)}
    triples = list(zip(coo.row.astype(str).tolist(), coo.col.astype(str).tolist(), [1.0] * coo.nnz, strict=True))
    data = Dataset.build(triples, fmt="UIR", global_uid_map=uid_map, global_iid_map=iid_map, seed=seed)
    model = EASE(lamb=float(params["lamb"]), posB=bool(params.get("posB", False)), verbose=False, seed=seed)
    model.fit(data)
    # cornac's Dataset may index only users and items seen in the triples; map ours onto them.
    user_index = np.array([data.uid_map.get(str(u), -1) for u in range(n_users)], dtype=np.int64)
    item_index = np.array([data.iid_map.get(str(i), -1) for i in range(n_items)], dtype=np.int64)
    known_items = item_index >= 0

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), n_items), dtype=np.float32)
        for r, row in enumerate(rows):
            if user_index[row] >= 0:
                out[r, known_items] = np.asarray(model.score(int(user_index[row]))).ravel()[item_index[known_items]]
        return out

    return score


# shrink 0 (no damping) is the bound of its axis, not an edge a wider grid could move.
PEERS: dict[str, Peer] = {
    "popular": Peer(fit_popular, ({},), "fuserank"),
    "item_knn": Peer(fit_item_knn, _grid(neighbours=(5, 10, 20, 50, 100, 200, 400, 800, 1600),
                                         shrink=(0.0, 10.0, 50.0, 200.0, 1000.0, 5000.0)), "fuserank"),
    "als": Peer(fit_als, _grid(factors=(8, 16, 32, 64, 128, 256), alpha=(0.25, 1.0, 5.0, 20.0), regularization=(0.05,)),
                "implicit"),
    "bpr": Peer(fit_bpr, _grid(factors=(8, 16, 32, 64, 128, 256, 512, 1024), learning_rate=(0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)),
                "implicit"),
    "ease": Peer(fit_ease, _grid(lamb=(50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)), "cornac"),
}

# Axes whose lowest value is the end of the axis itself: a choice there is not flagged.
AXIS_BOUNDS: dict[str, float] = {"shrink": 0.0}


def edge_choices(grid: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any],
                 bounds: Mapping[str, float] = AXIS_BOUNDS) -> dict[str, str]:
    """The tuned axes (more than one value in `grid`) whose chosen value is the grid's lowest
    ("low") or highest ("high"); a lowest value equal to the axis's bound in `bounds` is not an
    edge. Non-numeric axes are ignored.

    Returns:
        axis name -> "low" | "high", in the grid's axis order (empty when every choice is inside).
    """
    edges: dict[str, str] = {}
    for axis, value in chosen.items():
        values = {params[axis] for params in grid if axis in params}
        if len(values) < 2 or not all(isinstance(v, (int, float)) for v in values):
            continue
        if value == min(values) and bounds.get(axis) != value:
            edges[axis] = "low"
        elif value == max(values):
            edges[axis] = "high"
    return edges


def recommend(
    name: str,
    params: Mapping[str, Any],
    history: pl.DataFrame,
    users: Sequence[str],
    item_ids: Sequence[str],
    k: int,
    seed: int,
    batch_size: int = 512,
) -> pl.DataFrame:
    """Fit peer `name` on `history` and rank every catalog item the user has not interacted with.

    Args:
        name: a key of PEERS.
        params: one configuration (e.g. from the peer's grid).
        history: interactions the peer learns from; also what each user's list excludes.
        users: users to rank for (users without history get an empty row in the matrix).
        item_ids: the catalog; only these items are ranked.
        k: list length.
        seed: the model's seed.
        batch_size: users scored at once (memory: batch_size x n_items float32).

    Returns:
        schema.RANKED_LIST frame (user_id, item_id, rank 1..k, score), sorted by user and rank.
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known peers are {sorted(PEERS)}")
    user_ids = sorted(set(history[schema.USER_ID].unique().to_list()) | set(users))
    row_of = {u: r for r, u in enumerate(user_ids)}
    matrix = user_matrix(history, user_ids, item_ids)
    scorer = PEERS[name].fit(matrix, params, seed)
    k = min(k, len(item_ids))
    catalog = np.asarray(item_ids, dtype=object)
    out_users, out_items, out_scores = [], [], []
    wanted = list(users)
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start : start + batch_size]
        rows = np.array([row_of[u] for u in chunk], dtype=np.int64)
        scores = np.array(scorer(rows), dtype=np.float32)
        seen = matrix[rows]
        scores[seen.nonzero()] = -np.inf
        top, top_scores = top_k(scores, k)  # ties go to the earlier catalog item
        keep = np.isfinite(top_scores)
        out_users.append(np.repeat(np.asarray(chunk, dtype=object), keep.sum(axis=1)))
        out_items.append(catalog[top[keep]])
        out_scores.append(top_scores[keep])
    frame = pl.DataFrame(
        {
            schema.USER_ID: np.concatenate(out_users).tolist() if out_users else [],
            schema.ITEM_ID: np.concatenate(out_items).tolist() if out_items else [],
            schema.SCORE: np.concatenate(out_scores) if out_scores else np.zeros(0, np.float32),
        },
        schema={schema.USER_ID: pl.String, schema.ITEM_ID: pl.String, schema.SCORE: pl.Float32},
    )
    rank = (pl.int_range(pl.len()).over(schema.USER_ID) + 1).cast(pl.Int32)
    return frame.with_columns(rank.alias(schema.RANK)).select(list(schema.RANKED_LIST)).sort(schema.USER_ID, schema.RANK)
