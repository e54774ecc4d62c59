"""The SASRec network (Kang & McAuley, 2018): causal self-attention over a user's item sequence.

Item and learned position embeddings, pre-norm causal blocks (attention and a feed-forward
layer, each with a residual), a final layer norm, and an output tied to the item embeddings:
the score of item i after position t is hidden[t] . items[i]. Sequences are left-padded with
PAD (0), so the newest item is always the last column; positions count back from it, which
makes a window of any length up to `max_length` use the same position embeddings.

torch is imported at module level here because this module is the network itself; only
fuserank.retrieval.sequence imports it, inside its functions, so `import fuserank` stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD = 0
# Initial weight scale of embeddings and linear layers (BERT's and RecBole's SASRec's choice).
_INIT_STD = 0.02


class CausalBlock(nn.Module):
    """Pre-norm multi-head causal self-attention followed by a position-wise feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention_dropout = dropout
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.project = nn.Linear(dim, dim)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: float (batch, length, dim); allowed: bool (batch, 1, length, length), True where a
        query position may attend to a key position. Returns float (batch, length, dim)."""
        batch, length, dim = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        p = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        x = x + self.dropout(self.project(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRec(nn.Module):
    """Next-item model over left-padded item-index sequences (item i of the catalog is index i + 1).

    Args:
        n_items: catalog size (embedding rows n_items + 1, row PAD stays zero).
        max_length: the longest sequence read; also the number of position embeddings.
        dim: embedding width, a multiple of `heads`.
        blocks: causal blocks.
        heads: attention heads.
        dropout: dropout rate on embeddings, attention weights and block outputs.
    """

    def __init__(self, n_items: int, max_length: int, dim: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"sequence.dim ({dim}) must be a multiple of sequence.heads ({heads})")
        self.max_length = max_length
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
        self.positions = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=_INIT_STD)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.items.weight[PAD].zero_()

    @property
    def item_weights(self) -> torch.Tensor:
        """The output embeddings: float (n_items, dim), row i scores catalog item i."""
        return self.items.weight[1:]

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden states after every position.

        Args:
            sequences: long (batch, length), length <= max_length, left-padded with PAD.

        Returns:
            float (batch, length, dim); row t depends only on items at positions <= t. Rows at
            padded positions are meaningless.
        """
        length = sequences.shape[1]
        positions = torch.arange(self.max_length - length, self.max_length, device=sequences.device)
        real = (sequences != PAD).unsqueeze(-1)
        # SASRec scales item embeddings by sqrt(dim) so that they dominate the position embeddings.
        x = self.items(sequences) * math.sqrt(self.items.embedding_dim) + self.positions(positions)
        x = self.dropout(x) * real
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        # A padded key is never attended to; a padded query attends to itself, so that no row of
        # the attention is empty (an empty softmax row would give NaN).
        allowed = (causal & real.transpose(1, 2)) | torch.eye(length, dtype=torch.bool, device=sequences.device)
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed) * real
        return self.norm(x)


def left_pad(rows: list[np.ndarray], length: int) -> np.ndarray:
    """int64 (len(rows), length): each row's last `length` values, right-aligned, PAD before."""
    out = np.full((len(rows), length), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        row = row[len(row) - min(len(row), length):]
        out[r, length - len(row):] = row
    return out


def last_hidden(network: SASRec, sequences: list[np.ndarray], device: str, batch_size: int = 512) -> np.ndarray:
    """The network's state after each sequence's newest `network.max_length` items.

    Args:
        network: a SASRec (its train/eval mode is left as it is).
        sequences: non-empty int64 arrays of item indices (catalog item i is index i + 1).
        device: where `network` lives.
        batch_size: sequences per forward pass.

    Returns:
        float32 (len(sequences), dim).
    """
    out = np.zeros((len(sequences), network.items.embedding_dim), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            rows = [seq[-network.max_length:] for seq in sequences[start:start + batch_size]]
            inputs = torch.from_numpy(left_pad(rows, max(len(row) for row in rows))).to(device)
            out[start:start + len(rows)] = network(inputs)[:, -1].float().cpu().numpy()
    return out
