"""Reading image files for the image encoders: bounded decoding and the shared encode loop.

Both image encoders (CLIP in fuserank.encoders.image, the descriptor in
fuserank.encoders.image_descriptor) read schema.IMAGE_PATH relative to the catalog root through
`media.safe_media_path`, cache vectors by content hash (encoder fingerprint, file sha256), and
degrade an unreadable image to a zero row with mask False plus one warning, so one bad file never
stops a run. Images are opened lazily and their header size is checked before any pixel is
decoded, so memory stays bounded.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from fuserank import progress, schema
from fuserank.data.media import MediaError, group_media_files
from fuserank.encoders.base import Embeddings
from fuserank.encoders.cache import CacheWriter, EmbeddingCache, content_key, fill_from_cache

logger = logging.getLogger(__name__)

# Bump when load_image changes the pixels it returns, so cached vectors are recomputed.
LOADER_VERSION = "load-v1"
_CACHE_FLUSH_ROWS = 256


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
