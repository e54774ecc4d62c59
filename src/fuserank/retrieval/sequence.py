"""A SASRec next-item model fitted on one cut-off's history: fit or load, user states, scores.

The network is fuserank.retrieval.sequence_model; training (validation inside the history, early
stopping) is fuserank.retrieval.sequence_training. Inference reads whatever history it is given, usually
a longer one than the fit's (a later cut-off's): each user's newest `max_length` items. It never
trains on it.

A fit starts from scratch, or (sequence.refit "continue") from the model of the protocol's
shared history, the interactions every cut-off has (data.cutoffs): that model is fitted once and
each cut-off's fit continues from it for a few epochs on its own history, so a protocol of five
cut-offs costs about one full fit, and no fit sees what its cut-off predicts or hides. Under
"shared" every cut-off uses that one model as it is.

A fitted model is cached under sha256(history rows, catalog, settings, seed, device,
MODEL_VERSION, the key of the model it continued from) as a torch state dict read back with
weights_only=True, so a rerun with the same inputs loads it instead of training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fuserank import atomic, progress, schema
from fuserank.config import SequenceConfig
from fuserank.data.split import sort_interactions
from fuserank.encoders.text import resolve_device
from fuserank.retrieval.collaborative import top_k
from fuserank.retrieval.sequence_training import (
    VALID_K,
    build_network,
    exclude_history,
    train_network,
    training_sequences,
    user_sequences,
)
from fuserank.torch_threads import torch_threads

if TYPE_CHECKING:
    from fuserank.retrieval.sequence_model import SASRec  # imports torch: loaded only when a model runs

log = logging.getLogger(__name__)

# Bump when training or the network changes, so cached models are refitted.
MODEL_VERSION = "sasrec-v1"
# The model's name as a content view (its item embeddings), a candidate source and its cache folder.
VIEW = "sequence"
_USER_BATCH = 512


@dataclass(frozen=True, eq=False)
class UserStates:
    """Users' hidden states after one history, computed once per candidate frame and read by both
    stages (the sequence candidates and the sequence features).

    Attributes:
        users: the users, in the row order of `vectors`.
        vectors: float32 (len(users), dim); zeros for a user without catalog items in the history.
    """

    users: tuple[str, ...]
    vectors: np.ndarray

    def of(self, users: Sequence[str]) -> np.ndarray:
        """The states of `users` (each one of `self.users`), in that order."""
        row = {user: r for r, user in enumerate(self.users)}
        return self.vectors[np.fromiter((row[user] for user in users), dtype=np.int64, count=len(users))]


@dataclass(frozen=True, eq=False)
class SequenceModel:
    """A fitted SASRec model.

    Attributes:
        item_ids: the catalog, in the row order of `item_vectors` and of score columns.
        item_vectors: float32 (n_items, dim), the output embeddings (tied to the input ones); an
            item's score for a user is user_state . item_vector.
        network: the sequence_model.SASRec, in eval mode on `device`.
        max_length: newest history items read per user.
        device: where the network runs ("cpu" or "cuda").
        threads: torch CPU threads while it runs.
        epochs: epochs trained; best_epoch: the epoch whose weights were kept (1-based).
        valid_ndcg / train_loss: validation NDCG@10 and mean training loss of each epoch.
        cache_key: `cache_key` of the fit; from_cache: whether it was loaded rather than trained.
        started_from: the cache key of the model this fit continued from (None: from scratch).
        train_seconds: wall seconds its training took, read back from the cache with it (None
            for models cached before it was recorded).
    """

    item_ids: tuple[str, ...]
    item_vectors: np.ndarray
    network: SASRec
    max_length: int
    device: str
    threads: int
    epochs: int
    best_epoch: int
    valid_ndcg: tuple[float, ...]
    train_loss: tuple[float, ...]
    cache_key: str
    from_cache: bool
    started_from: str | None = None
    train_seconds: float | None = None

    @property
    def best_valid_ndcg(self) -> float:
        """Validation NDCG@10 of the kept weights."""
        return self.valid_ndcg[self.best_epoch - 1]

    def user_states(self, history: pl.DataFrame, users: Sequence[str]) -> np.ndarray:
        """Each user's hidden state after their newest `max_length` history items.

        Args:
            history: interactions (any cut-off's, e.g. longer than the one fitted on); items
                outside the catalog are ignored.
            users: the users wanted, in the order of the result.

        Returns:
            float32 (len(users), dim); zeros for a user without catalog items in `history`.
        """
        from fuserank.retrieval.sequence_model import last_hidden  # torch: imported only when used

        known, sequences = user_sequences(history.filter(pl.col(schema.USER_ID).is_in(list(users))), self.item_ids)
        with torch_threads(self.threads):
            computed = last_hidden(self.network, sequences, self.device)
        row_of = {user: row for row, user in enumerate(known)}
        states = np.zeros((len(users), self.item_vectors.shape[1]), dtype=np.float32)
        for out_row, user in enumerate(users):
            if user in row_of:
                states[out_row] = computed[row_of[user]]
        return states

    def states(self, history: pl.DataFrame, users: Sequence[str]) -> UserStates:
        """`user_states` of the distinct `users`, kept with their ids."""
        users = tuple(dict.fromkeys(users))
        return UserStates(users, self.user_states(history, users))

    def scores(self, history: pl.DataFrame, users: Sequence[str]) -> np.ndarray:
        """float32 (len(users), n_items): every catalog item's score after each user's history
        (zeros for a user without history)."""
        return self.user_states(history, users) @ self.item_vectors.T

    def recommend(self, history: pl.DataFrame, users: Sequence[str], k: int,
                  exclude_seen: bool = True) -> pl.DataFrame:
        """The k best-scored catalog items per user, `_USER_BATCH` users at a time.

        Args:
            history: what the users' states are computed from; with `exclude_seen`, also the
                items each list leaves out.
            users: users to rank for; a user without history gets no rows.
            k: list length (shorter only when fewer items are left).
            exclude_seen: leave out the user's history items.

        Returns:
            schema.RANKED_LIST frame (user_id, item_id, rank 1..k, score), by user then rank;
            ties go to the earlier catalog item.
        """
        history = history.filter(pl.col(schema.USER_ID).is_in(list(users)))
        known, sequences = user_sequences(history, self.item_ids)
        seen = dict(zip(known, sequences, strict=True))
        wanted = [user for user in dict.fromkeys(users) if user in seen]
        catalog = np.asarray(self.item_ids, dtype=object)
        k = min(k, len(self.item_ids))
        frames = [pl.DataFrame(schema=schema.RANKED_LIST)]
        for start in range(0, len(wanted), _USER_BATCH):
            chunk = wanted[start:start + _USER_BATCH]
            scores = self.scores(history.filter(pl.col(schema.USER_ID).is_in(chunk)), chunk)
            if exclude_seen:
                exclude_history(scores, [seen[user] for user in chunk])
            top, top_scores = top_k(scores, k)
            keep = np.isfinite(top_scores)
            frames.append(pl.DataFrame(
                {schema.USER_ID: np.repeat(np.asarray(chunk, dtype=object), keep.sum(axis=1)).tolist(),
                 schema.ITEM_ID: catalog[top[keep]].tolist(),
                 schema.RANK: (np.nonzero(keep)[1] + 1).astype(np.int32),
                 schema.SCORE: top_scores[keep].astype(np.float32)},
                schema=schema.RANKED_LIST,
            ))
        return pl.concat(frames)


# Settings of how a protocol's cut-offs share fits, not of one fit: a from-scratch fit's key
# leaves them out, so "scratch" and "continue" find the same model of the shared history.
_REFIT_FIELDS = ("refit", "refit_epochs")


def cache_key(history: pl.DataFrame, item_ids: Sequence[str], config: SequenceConfig, seed: int,
              device: str, start: str | None = None) -> str:
    """sha256 hex of everything a fit depends on: the history's (user, item, timestamp) rows in
    event order, the catalog, the config fields (refit settings only for a continued fit), the
    seed, the device, MODEL_VERSION and the key of the model it continues from (`start`)."""
    digest = hashlib.sha256()
    fields = {name: value for name, value in dataclasses.asdict(config).items() if name not in _REFIT_FIELDS}
    # Added after models were cached: at its default (the batching those were trained with) it
    # stays out of the key, so they remain valid.
    if fields["batching"] == "random":
        del fields["batching"]
    settings = {"config": fields, "seed": seed, "device": device, "version": MODEL_VERSION}
    if start is not None:
        settings.update(start=start, refit_epochs=config.refit_epochs)
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8") + b"\0")
    digest.update(json.dumps(list(item_ids)).encode("utf-8") + b"\0")
    rows = sort_interactions(history.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP))
    digest.update(rows.write_csv().encode("utf-8"))
    return digest.hexdigest()


def fit_sequence_model(history: pl.DataFrame, item_ids: Sequence[str], config: SequenceConfig, seed: int,
                       cache_dir: Path | None = None, start_history: pl.DataFrame | None = None) -> SequenceModel:
    """Fit (or load from `cache_dir`) a SASRec model on `history`.

    Args:
        history: schema.INTERACTIONS rows, the only data the model learns from; items outside
            `item_ids` are ignored.
        item_ids: the catalog (unique), the row order of the item vectors.
        config: the sequence section.
        seed: seeds initialisation, dropout, batch order and negatives; the caller's random
            state is untouched (sequence_training.train_network).
        cache_dir: folder of cached models (created if missing); None neither reads nor writes.
        start_history: rows of `history` that every cut-off of the protocol has (data.cutoffs'
            shared history). With fewer rows than `history` and config.refit "continue", a
            model is fitted (or loaded) on them from scratch and this fit continues from its
            weights for at most config.refit_epochs epochs; under "shared" that model is
            returned as it is. Otherwise the fit starts from scratch on `history`.

    Returns:
        The fitted SequenceModel.

    Raises:
        ValueError: no user has three catalog items in `history` (nothing to train on), or
            config.dim is not a multiple of config.heads.
    """
    item_ids = tuple(item_ids)
    device = resolve_device(config.device)
    start = None
    if config.refit != "scratch" and start_history is not None and start_history.height < history.height:
        start = fit_sequence_model(start_history, item_ids, config, seed, cache_dir)
        if config.refit == "shared":
            return start
    key = cache_key(history, item_ids, config, seed, device, start.cache_key if start is not None else None)
    path = Path(cache_dir) / f"sasrec-{key}.pt" if cache_dir is not None else None
    with torch_threads(config.threads):
        loaded = _load(path, len(item_ids), config, device) if path is not None and path.exists() else None
        if loaded is not None:
            return _fitted(item_ids, *loaded, config, device, key, from_cache=True)
        data = training_sequences(history, item_ids, config.max_length)
        if not data.train:
            longest = max((len(seq) for seq in data.items), default=0)
            raise ValueError(f"the sequence model needs a user with at least 3 catalog items in the history; "
                             f"the most any of {len(data.users):,} users has is {longest}")
        what = "continue sequence model" if start is not None else "fit sequence model"
        with progress.step(what) as s:
            began = time.perf_counter()
            network, record = train_network(
                data, len(item_ids), config, seed, device,
                start=start.network.state_dict() if start is not None else None,
                max_epochs=config.refit_epochs if start is not None else None,
            )
            record["started_from"] = start.cache_key if start is not None else None
            record["train_seconds"] = time.perf_counter() - began
            best = record["best_epoch"]
            s.done(f"{record['epochs']} epochs, best {best}, valid NDCG@{VALID_K} {record['valid_ndcg'][best - 1]:.4f}")
        if path is not None:
            _save(path, network, record)
    return _fitted(item_ids, network, record, config, device, key, from_cache=False)


def _fitted(item_ids: tuple[str, ...], network: SASRec, record: dict[str, Any], config: SequenceConfig,
            device: str, key: str, from_cache: bool) -> SequenceModel:
    network.eval()
    vectors = network.item_weights.detach().cpu().numpy().astype(np.float32, copy=True)
    return SequenceModel(
        item_ids=item_ids, item_vectors=vectors, network=network, max_length=config.max_length, device=device,
        threads=config.threads, epochs=int(record["epochs"]), best_epoch=int(record["best_epoch"]),
        valid_ndcg=tuple(float(v) for v in record["valid_ndcg"]),
        train_loss=tuple(float(v) for v in record["train_loss"]), cache_key=key, from_cache=from_cache,
        started_from=record.get("started_from"), train_seconds=record.get("train_seconds"),
    )


def _save(path: Path, network: SASRec, record: dict[str, Any]) -> None:
    import torch

    payload = {"version": MODEL_VERSION, "record": record,
               "state_dict": {name: value.detach().cpu() for name, value in network.state_dict().items()}}
    atomic.write_atomic(path, lambda tmp: torch.save(payload, tmp))


def _load(path: Path, n_items: int, config: SequenceConfig, device: str) -> tuple[SASRec, dict[str, Any]] | None:
    """The cached network and its record, or None (with a warning) when the file cannot be used."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):  # the throw-away initialisation draws no caller randomness
            network = build_network(n_items, config, device)
        network.load_state_dict(payload["state_dict"])
        record = payload["record"]
        missing = {"epochs", "best_epoch", "valid_ndcg", "train_loss"} - set(record)
        if missing:
            raise KeyError(f"record lacks {sorted(missing)}")
        return network, record
    except Exception as err:  # noqa: BLE001 - whatever makes the file unusable costs a refit only
        log.warning("refitting the sequence model: cached %s is unreadable (%s)", path, err)
        return None


