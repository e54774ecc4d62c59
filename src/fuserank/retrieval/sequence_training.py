"""Training a SASRec network on one history, with validation inside that history.

Each user's items are read in event order (data.split.sort_interactions: by timestamp, ties in
row order). The last item of every user with two or more is held out as that user's validation
target; the rest trains the network with the next item as the target at every position (a full
softmax over the catalog, or a sampled one). Training stops after `patience` epochs without a
better validation NDCG@10 and keeps the best epoch's weights. Nothing outside the history given
is read, so a cut-off's model never learns from that cut-off's targets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fuserank import progress, schema
from fuserank.retrieval.collaborative import top_k
from fuserank.config import SequenceConfig
from fuserank.data.split import sort_interactions
from fuserank.evaluation.metrics import ndcg_at_k

if TYPE_CHECKING:
    import torch

    from fuserank.retrieval.sequence_model import SASRec  # imports torch: loaded only when a model runs

log = logging.getLogger(__name__)

VALID_K = 10
_SCORE_BATCH = 512
# Batches per pool that `epoch_batches` sorts by length: enough to group like lengths, few enough
# that a pool is still a random draw of the users.
_POOL_BATCHES = 10
_INDEX = "__fuserank_index"


@dataclass(frozen=True)
class Sequences:
    """One history as catalog indices (catalog item i is index i + 1; 0 is padding).

    Attributes:
        users: every user with at least one catalog item in the history, sorted.
        items: per user, int64 (n,) item indices in event order.
        train: per user with three or more items, int64 their items without the last, the
            newest max_length + 1 of them (a next-item target for every input position).
        valid_inputs: per user with two or more items, int64 their items without the last.
        valid_targets: int64 (n_valid,), those users' last items.
    """

    users: tuple[str, ...]
    items: tuple[np.ndarray, ...]
    train: tuple[np.ndarray, ...]
    valid_inputs: tuple[np.ndarray, ...]
    valid_targets: np.ndarray


def user_sequences(history: pl.DataFrame, item_ids: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """(users, sorted; per user int64 (n,) catalog indices in event order). Rows of items outside
    `item_ids` are dropped."""
    catalog = pl.DataFrame({schema.ITEM_ID: list(item_ids)}, schema={schema.ITEM_ID: pl.String})
    catalog = catalog.with_columns(pl.int_range(1, len(item_ids) + 1, dtype=pl.Int64).alias(_INDEX))
    ordered = sort_interactions(history.select(schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP))
    lists = (
        ordered.join(catalog, on=schema.ITEM_ID, how="inner", maintain_order="left")
        .group_by(schema.USER_ID, maintain_order=True)
        .agg(pl.col(_INDEX))
    )
    return lists[schema.USER_ID].to_list(), [np.asarray(s, dtype=np.int64) for s in lists[_INDEX].to_list()]


def training_sequences(history: pl.DataFrame, item_ids: Sequence[str], max_length: int) -> Sequences:
    """Split `history` into training sequences and validation targets (see `Sequences`)."""
    users, items = user_sequences(history, item_ids)
    eligible = [seq for seq in items if len(seq) >= 2]
    return Sequences(
        users=tuple(users),
        items=tuple(items),
        train=tuple(seq[:-1][-(max_length + 1):] for seq in eligible if len(seq) >= 3),
        valid_inputs=tuple(seq[:-1] for seq in eligible),
        valid_targets=np.asarray([seq[-1] for seq in eligible], dtype=np.int64),
    )


def build_network(n_items: int, config: SequenceConfig, device: str) -> SASRec:
    """A freshly initialised SASRec on `device` (initialised from torch's global generator)."""
    # torch is heavy: imported only when a network is built, so `import fuserank` stays fast.
    from fuserank.retrieval.sequence_model import SASRec  # imports torch: loaded only when a model runs

    network = SASRec(n_items, config.max_length, config.dim, config.blocks, config.heads, config.dropout)
    return network.to(device)


def train_network(data: Sequences, n_items: int, config: SequenceConfig, seed: int, device: str,
                  start: dict[str, torch.Tensor] | None = None,
                  max_epochs: int | None = None) -> tuple[SASRec, dict[str, Any]]:
    """Train until validation NDCG@10 has not improved for `patience` epochs (or `max_epochs`,
    default config.max_epochs), from a fresh initialisation or from the weights `start` (a
    state dict of a network of the same shape).

    torch's global generator (dropout, initialisation) is forked and seeded with `seed`, and a
    torch.Generator seeded with it orders batches and draws negatives, so the caller's random
    state is untouched and the same inputs give the same weights on the CPU (some CUDA kernels,
    such as the embedding gradient, are not bitwise deterministic).

    Returns:
        (network in eval mode holding the best epoch's weights, record): record holds "epochs"
        (trained), "best_epoch" (1-based), and per epoch "valid_ndcg" and "train_loss" (lists).
    """
    import torch

    cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        network = build_network(n_items, config, device)
        if start is not None:
            network.load_state_dict(start)
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
        scores: list[float] = []
        losses: list[float] = []
        best_state: dict[str, torch.Tensor] = {}
        best_epoch = 0
        for epoch in range(1, (max_epochs or config.max_epochs) + 1):
            network.train()
            losses.append(train_epoch(network, optimiser, data.train, config, generator, device, epoch))
            network.eval()
            scores.append(validation_ndcg(network, data, device))
            log.debug("sequence model epoch %d: train loss %.4f, valid NDCG@%d %.4f", epoch, losses[-1], VALID_K,
                      scores[-1])
            if best_epoch == 0 or scores[-1] > scores[best_epoch - 1]:
                best_epoch = epoch
                best_state = {name: value.detach().clone() for name, value in network.state_dict().items()}
            elif epoch - best_epoch >= config.patience:
                break
        network.load_state_dict(best_state)
    return network, {"epochs": len(scores), "best_epoch": best_epoch, "valid_ndcg": scores, "train_loss": losses}


def train_epoch(network: SASRec, optimiser: torch.optim.Optimizer, train: Sequence[np.ndarray],
                 config: SequenceConfig, generator: torch.Generator, device: str, epoch: int) -> float:
    """One pass over `train` in a seeded random order; returns the mean batch loss."""
    import torch

    from fuserank.retrieval.sequence_model import PAD, left_pad  # imports torch: loaded only when a model runs

    lengths = np.asarray([len(row) for row in train], dtype=np.int64)
    batches = epoch_batches(lengths, config.batch_size, config.batching, generator)
    total = 0.0
    with progress.counter(f"sequence model epoch {epoch}", total=len(batches), unit="batch") as bar:
        for batch in batches:
            rows = [train[i] for i in batch]
            # Padded to the batch's longest sequence, not max_length: positions count back from
            # the newest item, so the result is the same and short batches cost less.
            length = max(len(row) for row in rows) - 1
            inputs = torch.from_numpy(left_pad([row[:-1] for row in rows], length)).to(device)
            targets = torch.from_numpy(left_pad([row[1:] for row in rows], length)).to(device)
            real = targets != PAD
            loss = _loss(network(inputs)[real], targets[real] - 1, network.item_weights, config.negatives, generator)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    return total / max(len(batches), 1)


def epoch_batches(lengths: np.ndarray, batch_size: int, batching: str, generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches of row indices, every row exactly once, in a seeded random order.

    "random": consecutive slices of a random permutation. "length": the permutation is cut into
    pools of `_POOL_BATCHES` batches, each pool is sorted by sequence length (stable) and sliced,
    and the batches are shuffled; a batch is padded to its longest row, so rows of like length
    waste fewer positions in the attention blocks, while every pool is still a random draw.
    """
    import torch

    order = torch.randperm(len(lengths), generator=generator).numpy()
    if batching == "random":
        return [order[start:start + batch_size].tolist() for start in range(0, len(order), batch_size)]
    pool = batch_size * _POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        rows = order[start:start + pool]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches.extend(rows[begin:begin + batch_size].tolist() for begin in range(0, len(rows), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def _loss(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, negatives: int,
          generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of the next item: hidden float (n, dim), targets long (n,) in [0, n_items),
    weights float (n_items, dim). negatives > 0: a sampled softmax over the target and that many
    uniformly drawn items shared by the batch (a drawn item equal to the target is masked)."""
    import torch
    import torch.nn.functional as F

    if negatives == 0:
        return F.cross_entropy(hidden @ weights.T, targets)
    drawn = torch.randint(weights.shape[0], (negatives,), generator=generator).to(hidden.device)
    positive = (hidden * weights[targets]).sum(-1, keepdim=True)
    negative = (hidden @ weights[drawn].T).masked_fill(drawn.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    return F.cross_entropy(torch.cat([positive, negative], dim=1), torch.zeros_like(targets))


def validation_ndcg(network: SASRec, data: Sequences, device: str) -> float:
    """Mean NDCG@10 of the validation targets, each ranked against the whole catalog minus the
    user's other history items: metrics.ndcg_at_k (the one NDCG) on catalog indices."""
    from fuserank.retrieval.sequence_model import last_hidden  # imports torch: loaded only when a model runs

    states = last_hidden(network, list(data.valid_inputs), device)
    weights = network.item_weights.detach().cpu().numpy()
    total = 0.0
    for start in range(0, len(states), _SCORE_BATCH):
        scores = states[start:start + _SCORE_BATCH] @ weights.T
        exclude_history(scores, data.valid_inputs[start:start + _SCORE_BATCH])
        top, top_scores = top_k(scores, min(VALID_K, scores.shape[1]))
        targets = data.valid_targets[start:start + _SCORE_BATCH] - 1
        for row, row_scores, target in zip(top, top_scores, targets, strict=True):
            total += ndcg_at_k(row[np.isfinite(row_scores)].tolist(), {int(target)}, VALID_K)
    return total / max(len(states), 1)


def exclude_history(scores: np.ndarray, sequences: Sequence[np.ndarray]) -> None:
    """Set each row's history items to -inf, in place: scores float32 (n, n_items), sequences
    one int64 array of catalog indices (1-based) per row."""
    for row, seq in enumerate(sequences):
        scores[row, seq - 1] = -np.inf
