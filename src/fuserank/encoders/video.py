"""Video encoder: keyframes by frame difference through an image encoder, plus the soundtrack.

A video is sampled at `sample_fps` for at most `max_seconds`. Consecutive samples are compared
as small greyscale thumbnails (mean absolute difference on [0, 1]); the first frame and the
frames that differ most from their predecessor (scene cuts, large motion) are the keyframes.
Their image vectors are mean-pooled; the soundtrack goes through the audio encoder's features
and its standardisation. Each half is L2-normalised before the concatenation is, so picture and
sound weigh the same; a video without sound keeps a zero audio half.

The cache holds the parts that cost decoding (pooled image vector, raw soundtrack features), not
the final vector: the audio statistics change with every training split, the decoding does not.
Frames are decoded one at a time and at most `max_keyframes` images are held, so memory stays
bounded however long the file. PyAV is an optional dependency (`fuserank[video]`).
"""

from __future__ import annotations

import heapq
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import progress, schema
from fuserank.encoders import audio as audio_module
from fuserank.encoders.audio import AudioEncoder, media_paths
from fuserank.encoders.base import Embeddings, l2_normalise
from fuserank.encoders.cache import CacheWriter, EmbeddingCache, content_key, fill_from_cache
from fuserank.data.media import MediaError, group_media_files

logger = logging.getLogger(__name__)

# Bump when keyframe selection or pooling changes, so cached parts are recomputed.
KEYFRAME_VERSION = "1"
NO_PYAV_MESSAGE = (
    "PyAV is not installed (pip install 'fuserank[video]'): video items fall back to their other modalities"
)
# Mean absolute greyscale difference (on [0, 1]) below which a frame adds nothing new.
MIN_FRAME_DIFFERENCE = 0.02
THUMBNAIL_SIZE = 32
CACHE_CHUNK = 32


class VideoEncoder:
    """Keyframe image vectors and soundtrack features of each item's video (schema.VIDEO_PATH).

    Args:
        root: catalog root; video paths are relative to it (media.safe_media_path).
        image_encoder: has `name`, `dim` and `encode_images(images) -> float32 (k, dim)`;
            its `fingerprint` (when present, else name and dim) keys the cache.
        audio_encoder: gives the sample rate, clip length and (once fitted) the standardisation
            of the soundtrack; an unfitted one leaves the audio half zero (one warning).
        max_keyframes: most keyframes per video (the first frame included).
        sample_fps: frames compared per second of video.
        max_seconds: only the first `max_seconds` of a video are decoded (the soundtrack also
            stops at the audio encoder's max_seconds).
        cache_dir: root of the cache of decoded parts; None disables caching.

    Attributes:
        name: "video". dim: image_encoder.dim + audio_encoder.dim (image half first).
        failures: item_id -> reason, for items of the last call that could not be encoded.
    """

    name = "video"

    def __init__(
        self,
        root: Path,
        image_encoder: Any,
        audio_encoder: AudioEncoder,
        max_keyframes: int = 8,
        sample_fps: float = 2.0,
        max_seconds: float = 60.0,
        cache_dir: Path | None = None,
    ) -> None:
        if max_keyframes < 1 or sample_fps <= 0 or max_seconds <= 0:
            raise ValueError("max_keyframes must be >= 1, sample_fps and max_seconds positive")
        self.root = Path(root)
        self.image_encoder = image_encoder
        self.audio_encoder = audio_encoder
        self.max_keyframes = int(max_keyframes)
        self.sample_fps = float(sample_fps)
        self.max_seconds = float(max_seconds)
        self.image_dim = int(image_encoder.dim)
        self.audio_dim = int(audio_encoder.dim)
        self.dim = self.image_dim + self.audio_dim
        self.audio_seconds = min(self.max_seconds, audio_encoder.max_seconds)
        image_id = getattr(image_encoder, "fingerprint", None) or f"{image_encoder.name}:{self.image_dim}"
        self._key_prefix = content_key(
            "video-parts", KEYFRAME_VERSION, str(image_id), str(self.max_keyframes), repr(self.sample_fps),
            repr(self.max_seconds), repr(MIN_FRAME_DIFFERENCE), audio_module.FEATURE_VERSION,
            str(audio_encoder.sample_rate), repr(self.audio_seconds),
        )
        self.failures: dict[str, str] = {}
        self.cache = None
        if cache_dir is not None:
            # one row: pooled image vector, raw soundtrack features, has-soundtrack flag
            self.cache = EmbeddingCache(Path(cache_dir) / f"video-parts-{self._key_prefix[:16]}", self.dim + 1)

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """Video vectors of the items (schema.VIDEO_PATH), float32 (n, dim), in item order.

        Returns:
            Embeddings; a null path, an unusable file, or a missing PyAV gives a zero row and
            mask False. Rows are L2(concat(L2(mean keyframe vector), L2(standardised audio))).
        """
        image, audio_raw, has_audio, ok = self.parts(items)
        vectors = np.zeros((items.height, self.dim), dtype=np.float32)
        vectors[:, : self.image_dim] = image
        with_sound = ok & has_audio
        if with_sound.any():
            if self.audio_encoder.is_fitted:
                vectors[with_sound, self.image_dim :] = self.audio_encoder.embed(audio_raw[with_sound])
            else:
                logger.warning("the audio encoder has no statistics (fit it, or call VideoEncoder.fit_audio): "
                               "the soundtracks of %d videos are left out", int(with_sound.sum()))
        vectors = l2_normalise(vectors)
        mask = ok & vectors.any(axis=1)
        return Embeddings(tuple(items[schema.ITEM_ID].to_list()), vectors, mask)

    def fit_audio(self, items: pl.DataFrame) -> VideoEncoder:
        """Fit the audio encoder's statistics on the soundtracks of `items` (training items only).

        For catalogs whose only sound is in videos; the decoded parts are cached, so the
        following `encode` does not decode these files again.

        Raises:
            ValueError: none of the items has a decodable soundtrack.
        """
        _, audio_raw, has_audio, ok = self.parts(items)
        if not (ok & has_audio).any():
            raise ValueError(f"none of the {items.height} fit items has a video with a decodable soundtrack")
        self.audio_encoder.fit_raw(audio_raw[ok & has_audio])
        return self

    def parts(self, items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The decoded, unstandardised parts of each item's video.

        Returns:
            image: float32 (n, image_dim), the L2-normalised mean of the keyframe vectors.
            audio_raw: float32 (n, audio_dim), audio_features of the soundtrack (zero without).
            has_audio: bool (n,), True where the video has a decodable soundtrack.
            ok: bool (n,), True where the video could be decoded.
        """
        n = items.height
        item_ids = items[schema.ITEM_ID].to_list()
        relatives = media_paths(items, schema.VIDEO_PATH)
        rows = np.zeros((n, self.dim + 1), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        self.failures = {}
        if any(r is not None for r in relatives):
            try:
                import av  # noqa: F401
            except ImportError:
                logger.warning(NO_PYAV_MESSAGE)
                self.failures = {i: "PyAV is not installed" for i, r in zip(item_ids, relatives) if r is not None}
                relatives = [None] * n

        rows_of_key, file_of_key, failures = group_media_files(item_ids, relatives, self.root, (self._key_prefix,))
        for item_id, reason in failures.items():
            self._fail(item_id, reason)
        todo = fill_from_cache(self.cache, rows_of_key, rows, ok)

        writer = CacheWriter(self.cache, CACHE_CHUNK)
        for key in progress.bar(todo, desc="video", total=len(todo), unit="file") if todo else []:
            try:
                row = self._decode(file_of_key[key])
            except Exception as error:  # one bad file degrades one item, never the run
                for r in rows_of_key[key]:
                    self._fail(item_ids[r], str(error))
                continue
            rows[rows_of_key[key]] = row
            ok[rows_of_key[key]] = True
            writer.add([key], row)
        writer.flush()
        image = rows[:, : self.image_dim]
        audio_raw = rows[:, self.image_dim : self.dim]
        return image, audio_raw, rows[:, self.dim] > 0.5, ok

    def keyframes(self, path: Path) -> list[tuple[float, Any]]:
        """The keyframes of a video file.

        Args:
            path: a video file PyAV (FFmpeg) can decode.

        Returns:
            [(timestamp in seconds from the first frame, RGB PIL image)], in time order, at most
            max_keyframes long, starting with the first frame.

        Raises:
            MediaError: the file cannot be opened, has no video stream or no decodable frame.
        """
        import av

        name = Path(path).name
        try:
            container = av.open(str(path))
        except Exception as error:
            raise MediaError(f"{name}: cannot open as video: {error}") from error
        first: tuple[float, Any] | None = None
        # min-heap of (difference, -index, timestamp, image): the weakest candidate is evicted first,
        # and of two equal differences the later frame goes first.
        best: list[tuple[float, int, float, Any]] = []
        with container:
            if not container.streams.video:
                raise MediaError(f"{name}: no video stream")
            stream = container.streams.video[0]
            start: float | None = None
            next_sample = 0.0
            previous: np.ndarray | None = None
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if frame.time is None:
                        continue
                    start = frame.time if start is None else start
                    t = frame.time - start
                    if t > self.max_seconds:
                        break
                    if t + 1e-6 < next_sample:
                        continue
                    next_sample = (math.floor(t * self.sample_fps + 1e-6) + 1) / self.sample_fps
                    thumb = frame.reformat(width=THUMBNAIL_SIZE, height=THUMBNAIL_SIZE, format="gray").to_ndarray()
                    thumb = thumb.astype(np.float32) / 255.0
                    if previous is None:
                        first = (t, frame.to_image())
                        previous = thumb
                        continue
                    difference = float(np.abs(thumb - previous).mean())
                    previous = thumb
                    if difference <= MIN_FRAME_DIFFERENCE or self.max_keyframes == 1:
                        continue
                    if len(best) < self.max_keyframes - 1:
                        heapq.heappush(best, (difference, -index, t, frame.to_image()))
                    elif (difference, -index) > best[0][:2]:
                        heapq.heapreplace(best, (difference, -index, t, frame.to_image()))
            except Exception as error:  # a truncated file: keep the frames decoded so far
                if first is None:
                    raise MediaError(f"{name}: cannot decode video: {error}") from error
                logger.debug("video %s decoded only partly: %s", name, error)
        if first is None:
            raise MediaError(f"{name}: no decodable video frame")
        return [first] + [(t, image) for _, _, t, image in sorted(best, key=lambda entry: entry[2])]

    def soundtrack(self, path: Path) -> np.ndarray | None:
        """The first audio stream as mono float32 at the audio encoder's rate, or None without one.

        At most `min(max_seconds, audio_encoder.max_seconds)` seconds are decoded.
        """
        import av

        rate = self.audio_encoder.sample_rate
        limit = max(1, int(math.ceil(self.audio_seconds * rate)))
        chunks: list[np.ndarray] = []
        n_samples = 0
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n_samples += chunks[-1].size
                if n_samples >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        if not chunks:
            return None
        y = np.concatenate(chunks)[:limit].astype(np.float32)
        return np.nan_to_num(y) if y.size else None

    def _decode(self, path: Path) -> np.ndarray:
        """One cache row: pooled image vector, raw soundtrack features, has-soundtrack flag."""
        images = [image for _, image in self.keyframes(path)]
        embedded = np.asarray(self.image_encoder.encode_images(images), dtype=np.float32)
        if embedded.shape != (len(images), self.image_dim):
            raise ValueError(f"image encoder gave shape {embedded.shape}, expected ({len(images)}, {self.image_dim})")
        row = np.zeros(self.dim + 1, dtype=np.float32)
        row[: self.image_dim] = l2_normalise(embedded.mean(axis=0, keepdims=True))[0]
        try:
            y = self.soundtrack(path)
        except Exception as error:  # a broken soundtrack loses the sound, not the picture
            logger.warning("soundtrack of %s is left out: %s", Path(path).name, error)
            y = None
        if y is not None:
            row[self.image_dim : self.dim] = audio_module.audio_features(y, self.audio_encoder.sample_rate)
            row[self.dim] = 1.0
        return row

    def _fail(self, item_id: str, reason: str) -> None:
        self.failures[item_id] = reason
        logger.warning("video of item %s is left out: %s", item_id, reason)

    def __repr__(self) -> str:
        return (f"VideoEncoder({self.root}, image={getattr(self.image_encoder, 'name', '?')}, dim={self.dim}, "
                f"max_keyframes={self.max_keyframes}, sample_fps={self.sample_fps:g})")
