"""Content embeddings of a catalog: one encoder per modality the items carry.

Text always; image, audio and video when the items table has the path column with at least one
value. A missing or corrupt media file degrades that item's modality (zero row, mask False); the
counts are returned so the run can log them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import RunConfig, cache_dir
from fuserank.data.sources import resolve
from fuserank.encoders.audio import AudioEncoder
from fuserank.encoders.base import Embeddings, centre
from fuserank.encoders.image import make_image_encoder
from fuserank.encoders.text import TextEncoder
from fuserank.encoders.video import VideoEncoder
from fuserank.jobs.distributed import dask_client, encode_dask, encode_fitted_dask
from fuserank.progress import megabytes, step

log = logging.getLogger(__name__)


def catalog_root(config: RunConfig) -> Path:
    """Folder that media paths are relative to: data.catalog_root, else the items file's folder."""
    if config.data.catalog_root:
        return Path(config.data.catalog_root)
    if config.data.items_path:
        return Path(config.data.items_path).parent
    return Path.cwd()


def has_media(items: pl.DataFrame, column: str) -> bool:
    return column in items.columns and items[column].is_not_null().any()


def _summary(emb: Embeddings) -> str:
    return f"{int(emb.mask.sum()):,}/{len(emb.item_ids):,} items x {emb.dim}-d, {megabytes(emb.vectors.nbytes)}"


def encode_content(
    items: pl.DataFrame, train_items: pl.Series, config: RunConfig
) -> tuple[dict[str, Embeddings], dict[str, float]]:
    """Encode every modality the catalog carries.

    Args:
        items: the validated items table.
        train_items: ids of items in the train interactions; statistics that standardise a
            modality (audio) are fitted on these items only.
        config: the run configuration (encoder sections, sources, data).

    Returns:
        (embeddings by modality, all in the items' row order; media counts for logging, e.g.
        {"media_image_with_path": 120, "media_image_encoded": 118, "media_image_failed": 2}).
    """
    root_cache = cache_dir(config.sources)
    embeddings: dict[str, Embeddings] = {"text": _encode_text(items, config, root_cache)}
    media_root = catalog_root(config)
    image_encoder = None
    if has_media(items, schema.IMAGE_PATH) or has_media(items, schema.VIDEO_PATH):
        image_encoder = make_image_encoder(config.image, media_root, root_cache / "embeddings", sources_cache=root_cache)
    if has_media(items, schema.IMAGE_PATH):
        with step("encode images") as s:
            embeddings["image"] = _run_encoder(image_encoder, items, config)
            s.done(_summary(embeddings["image"]))
    audio_encoder = None
    if has_media(items, schema.AUDIO_PATH) or has_media(items, schema.VIDEO_PATH):
        audio_encoder = AudioEncoder(
            media_root, config.audio.sample_rate, config.audio.max_seconds, cache_dir=root_cache / "embeddings" / "audio"
        )
        fit_items = items.filter(pl.col(schema.ITEM_ID).is_in(train_items.implode()))
        if has_media(fit_items, schema.AUDIO_PATH):
            try:
                audio_encoder.fit(fit_items)
            except ValueError as err:  # no training clip decoded: the modality degrades, the run goes on
                log.warning("audio statistics could not be fitted on the training catalog: %s", err)
    if has_media(items, schema.AUDIO_PATH):
        with step("encode audio") as s:
            if audio_encoder.is_fitted:
                embeddings["audio"] = _run_encoder(audio_encoder, items, config)
            else:
                embeddings["audio"] = _nothing_encoded(items, audio_encoder.dim)
            s.done(_summary(embeddings["audio"]))
    if has_media(items, schema.VIDEO_PATH):
        video = VideoEncoder(
            media_root,
            image_encoder,
            audio_encoder,
            max_keyframes=config.video.max_keyframes,
            sample_fps=config.video.sample_fps,
            max_seconds=config.video.max_seconds,
            cache_dir=root_cache / "embeddings" / "video",
        )
        with step("encode video") as s:
            if not audio_encoder.is_fitted:  # the catalog's only sound is in its videos
                try:
                    video.fit_audio(fit_items)
                except ValueError as err:  # videos then keep their image half only
                    log.warning("video soundtracks could not be standardised: %s", err)
            embeddings["video"] = _run_encoder(video, items, config)
            s.done(_summary(embeddings["video"]))
    fit = items[schema.ITEM_ID].is_in(train_items.implode()).to_numpy()
    for modality in config.fusion.centre:
        if modality in embeddings:
            embeddings[modality] = centre(embeddings[modality], fit)
    return embeddings, media_counts(items, embeddings)


def _run_encoder(encoder: Any, items: pl.DataFrame, config: RunConfig) -> Embeddings:
    """`encoder.encode(items)`; over Dask partitions of the catalog when `dask.enabled` (the fitted
    encoder is shipped to the workers)."""
    if not config.dask.enabled:
        return encoder.encode(items)

    with dask_client(config.dask) as client:
        return encode_fitted_dask(client, encoder, items, config.dask.item_partitions)


def _nothing_encoded(items: pl.DataFrame, dim: int) -> Embeddings:
    n = items.height
    return Embeddings(tuple(items[schema.ITEM_ID].to_list()), np.zeros((n, dim), np.float32), np.zeros(n, bool))


def media_counts(items: pl.DataFrame, embeddings: dict[str, Embeddings]) -> dict[str, float]:
    """Per media modality: items with a path, items encoded, and items whose file failed."""
    counts: dict[str, float] = {}
    for modality, column in (("image", schema.IMAGE_PATH), ("audio", schema.AUDIO_PATH), ("video", schema.VIDEO_PATH)):
        if modality not in embeddings:
            continue
        with_path = int(items[column].is_not_null().sum())
        encoded = int(embeddings[modality].mask.sum())
        counts[f"media_{modality}_with_path"] = float(with_path)
        counts[f"media_{modality}_encoded"] = float(encoded)
        counts[f"media_{modality}_failed"] = float(with_path - encoded)
    return counts


def _encode_text(items: pl.DataFrame, config: RunConfig, root_cache: Path) -> Embeddings:

    with step("fetch text model") as s:
        model_dir = resolve(config.sources.text_model, root_cache)
        s.done(str(model_dir))
    kwargs = {"model_dir": model_dir, "batch_size": config.text.batch_size, "max_length": config.text.max_length,
              "device": config.text.device, "cache_dir": root_cache / "embeddings" / "text"}
    with step("encode text") as s:
        if config.dask.enabled:  # one model per worker, a slice of the catalog each

            with dask_client(config.dask) as client:
                text = encode_dask(client, TextEncoder, kwargs, items, config.dask.item_partitions)
        else:
            text = TextEncoder(**kwargs).encode(items)
        s.done(_summary(text))
    return text
