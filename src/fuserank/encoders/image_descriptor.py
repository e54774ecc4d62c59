"""Weight-free image descriptor: colour, colour layout, edge orientation, texture and outline statistics.

The default image encoder whenever no CLIP checkpoint is configured. `describe_image` is a pure
function of the pixels; `DescriptorImageEncoder` runs it over a catalog through the encode loop
it shares with the CLIP encoder (fuserank.encoders.image: path safety, content-hash cache, one
warning per unreadable file). Only numpy and PIL are needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from fuserank.encoders.base import Embeddings, l2_normalise
from fuserank.encoders.cache import EmbeddingCache, content_key
from fuserank.encoders.image_files import LOADER_VERSION, encode_image_files

# Bump when describe_image changes the vector it returns, so cached vectors are recomputed.
DESCRIPTOR_VERSION = "descriptor-v2"

# Weight-free descriptor: seven blocks, each normalised on its own so none dominates.
_HUE_BINS, _GREY_BINS = 12, 4
_LAYOUT_GRID, _EDGE_GRID, _ORIENTATION_BINS = 4, 2, 8
_DENSITY_THRESHOLDS = (0.1, 0.3)  # Sobel magnitude of lightness in [0, 1], divided by 4
_OUTLINE_ANGLES, _OUTLINE_HARMONICS, _OUTLINE_RADIUS_BINS = 64, 8, 8
_FOREGROUND_MIN_DELTA_E = 8.0  # an object pixel differs from the border colour by more than this
_BLOCK_SIZES = {
    "colour": _HUE_BINS * 2 * 2 + _GREY_BINS,
    "hue": _HUE_BINS,
    "layout": _LAYOUT_GRID**2 * 3,
    "orientation": _EDGE_GRID**2 * _ORIENTATION_BINS,
    "texture": 10,
    "edge_density": _EDGE_GRID**2 * len(_DENSITY_THRESHOLDS),
    "outline": _OUTLINE_HARMONICS + _OUTLINE_RADIUS_BINS + 2,
}
_BLOCK_WEIGHTS = {"colour": 1.0, "hue": 1.0, "layout": 1.0, "orientation": 1.0, "texture": 0.5, "edge_density": 0.5,
                  "outline": 1.0}
_BLOCK_STARTS = np.cumsum([0, *_BLOCK_SIZES.values()])
DESCRIPTOR_BLOCKS: dict[str, slice] = {
    name: slice(int(start), int(start + n)) for (name, n), start in zip(_BLOCK_SIZES.items(), _BLOCK_STARTS)
}
DESCRIPTOR_DIM = int(_BLOCK_STARTS[-1])

_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_codes = np.arange(256)[:, None] >> np.arange(8) & 1
# Rotation-invariant uniform LBP: patterns with <= 2 bit flips around the circle are labelled
# by their count of set bits (0..8), every other pattern shares label 9.
_LBP_LABEL = np.where((_codes != np.roll(_codes, 1, axis=1)).sum(axis=1) <= 2, _codes.sum(axis=1), 9)


def describe_image(image: Image.Image, size: int = 128) -> np.ndarray:
    """The weighted descriptor blocks of one image, concatenated (see DESCRIPTOR_BLOCKS).

    colour: hue x saturation x value histogram (12 x 2 x 2, plus 4 grey levels for unsaturated
    or dark pixels); hue: 12-bin hue histogram of the coloured pixels only, weighted by
    saturation (zero for a greyscale image); layout: mean CIE Lab per cell of a 4x4 grid; orientation: Sobel gradient
    orientations (8 bins over 180 degrees, weighted by magnitude) per cell of a 2x2 grid;
    texture: rotation-invariant uniform LBP histogram; edge_density: share of pixels above two
    gradient magnitudes per 2x2 cell; outline: the shape of the main object, unchanged by its
    position, rotation and size (see `_outline`). Histograms are Hellinger-mapped (L1, then sqrt:
    unit L2).

    Args:
        image: any PIL image; resized to size x size (the grids follow the image, not its aspect).
        size: side in pixels, a multiple of 4.

    Returns:
        float32 (DESCRIPTOR_DIM,), not L2-normalised.
    """
    small = image if image.mode == "RGB" else image.convert("RGB")
    small = small.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    rgb = np.asarray(small, dtype=np.float64) / 255.0
    lab = _srgb_to_lab(rgb)
    lightness = lab[..., 0] / 100.0
    gx, gy = _sobel(lightness)
    magnitude = np.hypot(gx, gy) / 4.0
    colour, hue = _hsv_histograms(rgb)
    blocks = {
        "colour": _hellinger(colour),
        "hue": _hellinger(hue),
        "layout": _colour_layout(lab),
        "orientation": _hellinger(_orientation_histogram(gx, gy, magnitude)),
        "texture": _hellinger(_lbp_histogram(lightness)),
        "edge_density": _edge_density(magnitude),
        "outline": _outline(lab),
    }
    return np.concatenate([_BLOCK_WEIGHTS[name] * blocks[name] for name in _BLOCK_SIZES]).astype(np.float32)


def _hellinger(histogram: np.ndarray) -> np.ndarray:
    total = histogram.sum()
    return np.sqrt(histogram / total) if total > 0 else np.zeros_like(histogram, dtype=np.float64)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _hsv_histograms(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    saturation = np.divide(delta, value, out=np.zeros_like(value), where=value > 0)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    # half-bin shift so that pure red, green, blue sit in the middle of a bin, not on an edge
    hue_bin = np.floor((hue / 6 % 1.0) * _HUE_BINS + 0.5).astype(np.int64) % _HUE_BINS
    chromatic = (saturation >= 0.2) & (value >= 0.2)
    colour_index = hue_bin * 4 + (saturation >= 0.6) * 2 + (value >= 0.6)
    grey_index = _HUE_BINS * 4 + np.minimum((value * _GREY_BINS).astype(np.int64), _GREY_BINS - 1)
    index = np.where(chromatic, colour_index, grey_index)
    colour = np.bincount(index.ravel(), minlength=_BLOCK_SIZES["colour"]).astype(np.float64)
    # Hue alone, over coloured pixels only and weighted by saturation: which colours an image
    # has, however little of its area they cover (a white background does not dilute it).
    hue = np.bincount(hue_bin[chromatic], weights=saturation[chromatic], minlength=_HUE_BINS)
    return colour, hue


def _cells(x: np.ndarray, grid: int) -> np.ndarray:
    """Mean of `x` (size, size, ...) over each cell of a grid x grid partition: (grid, grid, ...)."""
    cell = x.shape[0] // grid
    return x.reshape(grid, cell, grid, cell, *x.shape[2:]).mean(axis=(1, 3))


def _colour_layout(lab: np.ndarray) -> np.ndarray:
    means = _cells(lab, _LAYOUT_GRID)
    # lightness centred on mid-grey and a*, b* over their sRGB range: every value in about [-1, 1]
    scaled = np.stack([(means[..., 0] - 50) / 50, means[..., 1] / 100, means[..., 2] / 100], axis=-1)
    return scaled.ravel() / np.sqrt(scaled.size)


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(x, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _cell_index(size: int, grid: int) -> np.ndarray:
    band = np.arange(size) * grid // size
    return band[:, None] * grid + band[None, :]


def _orientation_histogram(gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    theta = np.arctan2(gy, gx) % np.pi  # edges have no direction: 0 and 180 degrees are the same
    bins = np.floor(theta / (np.pi / _ORIENTATION_BINS) + 0.5).astype(np.int64) % _ORIENTATION_BINS
    index = _cell_index(gx.shape[0], _EDGE_GRID) * _ORIENTATION_BINS + bins
    return np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=_BLOCK_SIZES["orientation"])


def _lbp_histogram(x: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    # the 8 neighbours in circular order, so bit flips count transitions around the circle
    offsets = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
    code = np.zeros(x.shape, dtype=np.int64)
    for bit, (dr, dc) in enumerate(offsets):
        code |= (p[dr : dr + h, dc : dc + w] > x + tolerance).astype(np.int64) << bit
    return np.bincount(_LBP_LABEL[code].ravel(), minlength=_BLOCK_SIZES["texture"]).astype(np.float64)


def _edge_density(magnitude: np.ndarray) -> np.ndarray:
    shares = np.stack([_cells((magnitude > t).astype(np.float64), _EDGE_GRID) for t in _DENSITY_THRESHOLDS])
    return shares.ravel() / np.sqrt(shares.size)


def _foreground(lab: np.ndarray, border: int = 2) -> np.ndarray | None:
    """bool mask of the pixels that differ from the image's border colour (a product shot's
    backdrop), cleaned of isolated pixels; None when that is under 0.5% or over 90% of the image."""
    frame = np.concatenate([lab[:border].reshape(-1, 3), lab[-border:].reshape(-1, 3),
                            lab[:, :border].reshape(-1, 3), lab[:, -border:].reshape(-1, 3)])
    backdrop = np.median(frame, axis=0)
    noise = np.percentile(np.linalg.norm(frame - backdrop, axis=1), 90)
    mask = np.linalg.norm(lab - backdrop, axis=-1) > max(_FOREGROUND_MIN_DELTA_E, 3.0 * noise)
    h, w = mask.shape
    p = np.pad(mask, 1).astype(np.int8)
    mask = sum(p[dr : dr + h, dc : dc + w] for dr in range(3) for dc in range(3)) >= 5  # 3x3 majority
    return mask if 0.005 <= mask.mean() <= 0.9 else None


def _outline(lab: np.ndarray) -> np.ndarray:
    """Outline of the foreground object, invariant to its position, rotation and size.

    The distance from the object's centroid to its boundary, as a function of angle and divided
    by its mean, gives the spectrum magnitudes of harmonics 1..8 (rotation only shifts the phase:
    a square peaks at 4, a triangle at 3) and a histogram of the relative distances (a circle's
    all lie at 1). Two moment invariants (Hu's first two, the first minus a disc's) close the
    block. All zeros when no single object stands out from the border colour.
    """
    out = np.zeros(_BLOCK_SIZES["outline"])
    mask = _foreground(lab)
    if mask is None:
        return out
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    p = np.pad(mask, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    by, bx = np.nonzero(mask & ~interior)
    bins = np.floor((np.arctan2(by - cy, bx - cx) + np.pi) / (2 * np.pi) * _OUTLINE_ANGLES).astype(np.int64)
    radius = np.zeros(_OUTLINE_ANGLES)
    np.maximum.at(radius, bins % _OUTLINE_ANGLES, np.hypot(by - cy, bx - cx))
    seen = radius > 0
    if seen.sum() < 3:
        return out
    angles = np.arange(_OUTLINE_ANGLES)
    radius = np.interp(angles, angles[seen], radius[seen], period=_OUTLINE_ANGLES)
    radius /= radius.mean()
    h = _OUTLINE_HARMONICS
    out[:h] = 4.0 * np.abs(np.fft.rfft(radius))[1 : h + 1] / _OUTLINE_ANGLES
    histogram = np.histogram(radius, bins=_OUTLINE_RADIUS_BINS, range=(0.4, 1.6))[0].astype(np.float64)
    out[h : h + _OUTLINE_RADIUS_BINS] = 0.5 * _hellinger(histogram)
    area = float(mask.sum())
    mu20, mu02 = ((xs - cx) ** 2).sum() / area**2, ((ys - cy) ** 2).sum() / area**2
    mu11 = ((xs - cx) * (ys - cy)).sum() / area**2
    out[-2] = 10.0 * (mu20 + mu02 - 1.0 / (2.0 * np.pi))
    out[-1] = 10.0 * np.sqrt((mu20 - mu02) ** 2 + 4.0 * mu11**2)
    return out


class DescriptorImageEncoder:
    """Weight-free image vectors: colour histogram, colour layout, edge orientation, texture, outline.

    Carries real colour, layout, texture and shape signal without any model weights; the default
    whenever no CLIP checkpoint is configured.

    Args:
        root: catalog root the image paths are relative to.
        cache_dir: root of the embedding cache; None disables caching.
        max_pixels: larger images are skipped (JPEGs are decoded at reduced scale instead).
        size: images are resized to size x size pixels before description (a multiple of 4).

    Attributes:
        name: "image". dim: DESCRIPTOR_DIM. failures: {item_id: reason} from the last `encode`.
    """

    name = "image"
    dim = DESCRIPTOR_DIM

    def __init__(self, root: Path, cache_dir: Path | None = None, max_pixels: int = 40_000_000, size: int = 128) -> None:
        if size < 16 or size % 4 != 0:
            raise ValueError(f"size must be a multiple of 4 and >= 16, got {size}")
        if max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.size = size
        self.min_side = size
        self.failures: dict[str, str] = {}
        self.fingerprint = content_key(DESCRIPTOR_VERSION, str(size), LOADER_VERSION)
        self.cache = None
        if cache_dir is not None:
            self.cache = EmbeddingCache(Path(cache_dir) / f"image-descriptor-{self.fingerprint[:16]}", self.dim)

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """Encode the schema.IMAGE_PATH column of `items` (same contract as ClipImageEncoder.encode)."""
        embeddings, self.failures = encode_image_files(self, items, batch_size=64)
        return embeddings

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 (len(images), DESCRIPTOR_DIM), rows L2-normalised."""
        return self._embed([self._prepare(image) for image in images])

    def _prepare(self, image: Image.Image) -> np.ndarray:
        return describe_image(image, self.size)

    def _embed(self, prepared: list[np.ndarray]) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.stack(prepared))

    def __repr__(self) -> str:
        return f"DescriptorImageEncoder(size={self.size}, dim={self.dim})"
