"""Text encoder: a local transformers model, mean pooled over the attention mask.

The model folder is read with `local_files_only=True`; nothing is fetched from a hub. Vectors
are cached by content hash (model fingerprint, max_length, text), so re-encoding a catalog
costs only the texts that changed, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import progress, schema
from fuserank.encoders.base import Embeddings
from fuserank.encoders.cache import EmbeddingCache, content_key

# Each text is padded to a length set by its own token count (the next multiple of PAD_MULTIPLE),
# never by the longest text of its batch. A vector then does not depend on which texts share its
# batch, so cold and warm caches and Dask partitions give identical vectors: padding to the
# batch's longest text moved a tenth of MovieLens-1M's vectors by up to 2e-7, enough to change
# the ranker's splits and test NDCG@10 in the third decimal.
PAD_MULTIPLE = 8
PADDING = f"pad-multiple-{PAD_MULTIPLE}"  # part of the cache key: vectors padded otherwise differ


def model_fingerprint(model_dir: Path) -> str:
    """sha256 hex over the names and bytes of the files in `model_dir`.

    Config, weights and tokenizer files all change the vectors, so all of them are hashed;
    README files and hidden files or folders (.gitattributes, .cache/) are not.
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        parts = path.relative_to(model_dir).parts
        if parts[-1].lower().startswith("readme") or any(part.startswith(".") for part in parts):
            continue
        digest.update("/".join(parts).encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def resolve_device(device: str) -> str:
    """Map "auto" to "cuda" when torch sees a GPU, else "cpu"; return any other value as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TextEncoder:
    """Mean-pooled sentence vectors from a transformers encoder model (e.g. all-MiniLM-L6-v2).

    Args:
        model_dir: a folder with config, weights and tokenizer (what `save_pretrained` writes).
        batch_size: texts per forward pass.
        max_length: tokens kept per text; longer texts are truncated.
        device: "auto" (cuda when available), "cpu", "cuda" or any torch device string.
        cache_dir: root of the embedding cache; vectors go to a sub-folder named after the model
            fingerprint. None disables caching.
        chunk_batches: batches encoded between two cache writes; smaller means less lost work
            on interruption and more shard files.

    Attributes:
        name: "text".
        dim: the model's hidden size (384 for all-MiniLM-L6-v2).
        fingerprint: sha256 hex of the model folder's files.
        model, tokenizer: the transformers objects (model in eval mode on `device`), loaded on
            first use, which a fully cached catalog never reaches.
    """

    name = "text"

    def __init__(
        self,
        model_dir: Path,
        batch_size: int = 128,
        max_length: int = 128,
        device: str = "auto",
        cache_dir: Path | None = None,
        chunk_batches: int = 16,
    ) -> None:
        if batch_size < 1 or max_length < 2 or chunk_batches < 1:
            raise ValueError("batch_size and chunk_batches must be >= 1 and max_length >= 2")
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"text model folder not found: {self.model_dir}")
        self.batch_size = batch_size
        self.max_length = max_length
        self.chunk_batches = chunk_batches
        self._device = device
        # The model is loaded on the first text the cache lacks: a warm cache (every export,
        # every rerun) then never imports torch and transformers (~14 s on 2 busy cores).
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8")) \
            if (self.model_dir / "config.json").is_file() else {}
        self.dim = int(config["hidden_size"]) if "hidden_size" in config else int(self.model.config.hidden_size)
        self.fingerprint = model_fingerprint(self.model_dir)
        self.cache = None
        if cache_dir is not None:
            self.cache = EmbeddingCache(Path(cache_dir) / f"text-{self.fingerprint[:16]}", self.dim)

    @cached_property
    def device(self) -> str:
        return resolve_device(self._device)

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer  # heavy; only when a text must be encoded

        return AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

    @cached_property
    def model(self) -> Any:
        from transformers import AutoModel  # heavy; only when a text must be encoded
        from transformers.utils import logging as hf_logging

        if progress.is_quiet():
            hf_logging.disable_progress_bar()
        return AutoModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """Encode the schema.TEXT column of `items`.

        Returns:
            Embeddings in the order of items[schema.ITEM_ID], shape (n, dim); a null or blank
            text gives a zero row and mask False.
        """
        texts = items[schema.TEXT].to_list()
        mask = np.array([t is not None and t.strip() != "" for t in texts], dtype=bool)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if mask.any():
            vectors[mask] = self.encode_texts([t for t, ok in zip(texts, mask) if ok])
        return Embeddings(tuple(items[schema.ITEM_ID].to_list()), vectors, mask)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`, in the given order.

        Only texts missing from the cache are run through the model, each distinct text once,
        longest first so that an out-of-memory error shows up in the first batch rather than the
        last. A batch holds texts of one padded length (see PAD_MULTIPLE).

        Returns:
            float32 array (len(texts), dim), rows L2-normalised.
        """
        keys = [content_key(self.fingerprint, str(self.max_length), PADDING, text) for text in texts]
        if self.cache is not None:
            vectors, found = self.cache.get(keys)
        else:
            vectors, found = np.zeros((len(texts), self.dim), dtype=np.float32), np.zeros(len(texts), dtype=bool)

        rows_of_key: dict[str, list[int]] = {}
        for row in np.flatnonzero(~found):
            rows_of_key.setdefault(keys[row], []).append(int(row))
        todo = list(rows_of_key)
        if not todo:
            return vectors
        # Tokenised once; each batch is only padded (tokenizer.pad), not tokenised again.
        tokens = self._tokenize([texts[rows_of_key[k][0]] for k in todo])
        token_of_key = dict(zip(todo, tokens))
        lengths = [_padded_length(len(t["input_ids"]), self.max_length) for t in tokens]
        batches: list[tuple[int, list[str]]] = []
        for length in sorted(set(lengths), reverse=True):
            same = [k for k, n in zip(todo, lengths) if n == length]
            batches += [(length, same[i : i + self.batch_size]) for i in range(0, len(same), self.batch_size)]

        n_batches = len(batches)
        done_keys: list[str] = []
        done_vectors: list[np.ndarray] = []
        for b in progress.bar(range(n_batches), desc="text", total=n_batches, unit="batch"):
            length, batch_keys = batches[b]
            batch_vectors = self._forward([token_of_key[k] for k in batch_keys], length)
            for key, vector in zip(batch_keys, batch_vectors):
                vectors[rows_of_key[key]] = vector
            done_keys += batch_keys
            done_vectors.append(batch_vectors)
            if self.cache is not None and (len(done_vectors) == self.chunk_batches or b == n_batches - 1):
                self.cache.put(done_keys, np.concatenate(done_vectors))
                done_keys, done_vectors = [], []
        return vectors

    def padded_lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's token count (after truncation) rounded up to PAD_MULTIPLE, at most max_length."""
        return [_padded_length(len(t["input_ids"]), self.max_length) for t in self._tokenize(texts)]

    def _tokenize(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        """Unpadded, truncated model inputs of each text (input_ids, attention_mask, ...)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [{name: values[i] for name, values in encoded.items()} for i in range(len(texts))]

    def _forward(self, tokens: list[dict[str, list[int]]], length: int) -> np.ndarray:
        """One batch through the model, every text padded to `length` tokens: mean over
        non-padding tokens, then L2 normalisation."""
        import torch

        encoded = self.tokenizer.pad(tokens, padding="max_length", max_length=length, return_tensors="pt")
        encoded = {name: tensor.to(self.device) for name, tensor in encoded.items()}
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            weights = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return pooled.cpu().numpy().astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"TextEncoder({self.model_dir}, dim={self.dim}, device={self.device!r})"


def _padded_length(n_tokens: int, max_length: int) -> int:
    """`n_tokens` rounded up to PAD_MULTIPLE, at most `max_length`."""
    return min(max_length, -(-n_tokens // PAD_MULTIPLE) * PAD_MULTIPLE)
