"""The contract every Encoder implementation passes, and the Embeddings type behind it.

Every encoder runs on the same five items over a tiny media catalog written to tmp: three PNGs,
three WAVs and one mp4; item m7 names files that do not exist and m9 has no media at all, so
each encoder has something to encode and something that degrades to a zero row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile
from PIL import Image, ImageDraw

from fuserank import schema
from fuserank.encoders.audio import AudioEncoder
from fuserank.encoders.base import Embeddings, Encoder, l2_normalise
from fuserank.encoders.behaviour import BehaviourEncoder
from fuserank.encoders.image import ClipImageEncoder
from fuserank.encoders.image_descriptor import DescriptorImageEncoder
from fuserank.encoders.text import TextEncoder
from fuserank.encoders.video import VideoEncoder

from tiny_models import TINY_CLIP, save_tiny_bert, save_tiny_clip

HAS_PYAV = importlib.util.find_spec("av") is not None
SR = 22050

ITEMS = pl.DataFrame(
    {
        schema.ITEM_ID: ["m3", "m1", "m7", "m2", "m9"],
        schema.TEXT: ["a red cat", None, "quarterly tax report", "a picture of a kitten", ""],
        schema.IMAGE_PATH: ["red.png", "blue.png", "missing.png", "pics/stripes.png", None],
        schema.AUDIO_PATH: ["low.wav", "high.wav", "missing.wav", "sounds/mid.wav", None],
        schema.VIDEO_PATH: ["clip.mp4", None, "missing.mp4", None, None],
    },
    schema={schema.ITEM_ID: pl.String, schema.TEXT: pl.String, schema.IMAGE_PATH: pl.String,
            schema.AUDIO_PATH: pl.String, schema.VIDEO_PATH: pl.String},
)
# Which of ITEMS each modality can encode: text needs non-blank text, behaviour an interaction
# (see make_behaviour), media a file that exists (m7's do not, m9 has none).
EXPECTED_MASK = {
    "text": [True, False, True, True, False],
    "behaviour": [True, False, True, True, False],
    "image": [True, True, False, True, False],
    "audio": [True, True, False, True, False],
    "video": [True, False, False, False, False],
}


def tone(freq: float, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(4 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    """The catalog root ITEMS' media paths are relative to (the mp4 only when PyAV is installed)."""
    root = tmp_path_factory.mktemp("media")
    (root / "pics").mkdir()
    (root / "sounds").mkdir()
    for name, colour in (("red.png", (220, 20, 30)), ("blue.png", (20, 40, 210))):
        image = Image.new("RGB", (48, 40), "white")
        ImageDraw.Draw(image).ellipse((6, 6, 40, 34), fill=colour)
        image.save(root / name)
    stripes = np.broadcast_to((np.arange(40) // 4 % 2 * 255)[:, None], (40, 48)).astype(np.uint8)
    Image.fromarray(stripes).convert("RGB").save(root / "pics" / "stripes.png")
    for name, freq in (("low.wav", 140.0), ("high.wav", 2200.0), ("sounds/mid.wav", 660.0)):
        soundfile.write(root / name, tone(freq), SR)
    if HAS_PYAV:
        from test_video_encoder import cut_scene, write_video

        write_video(root / "clip.mp4", cut_scene, tone_hz=440.0)
    return root


def make_text(root: Path, tmp: Path) -> TextEncoder:
    # no cache, so that "deterministic on repeat" is about the model, not about the cache
    return TextEncoder(save_tiny_bert(tmp / "bert"), batch_size=2, device="cpu")


def make_behaviour(root: Path, tmp: Path) -> BehaviourEncoder:
    pairs = [("u1", "m3"), ("u1", "m7"), ("u2", "m3"), ("u2", "m2"), ("u3", "m7"), ("u3", "m2"), ("u3", "m3")]
    interactions = pl.DataFrame(
        {schema.USER_ID: [u for u, _ in pairs], schema.ITEM_ID: [i for _, i in pairs],
         schema.TIMESTAMP: list(range(len(pairs))), schema.RATING: [None] * len(pairs)},
        schema=schema.INTERACTIONS,
    )
    # m1 and m9 have no interactions; "extra" is fitted but not asked for
    return BehaviourEncoder.fit(interactions, ["extra", "m2", "m3", "m7", "m1", "m9"], dim=8, seed=0)


def make_descriptor(root: Path, tmp: Path) -> DescriptorImageEncoder:
    return DescriptorImageEncoder(root, size=32)


def make_clip(root: Path, tmp: Path) -> ClipImageEncoder:
    checkpoint, _ = save_tiny_clip(tmp / "clip")
    # batch_size 2 over three images: the reversed order puts other images in a batch together
    return ClipImageEncoder(root, TINY_CLIP, checkpoint, batch_size=2, device="cpu")


def make_audio(root: Path, tmp: Path) -> AudioEncoder:
    return AudioEncoder(root, max_seconds=1.0).fit(ITEMS)


def make_video(root: Path, tmp: Path) -> VideoEncoder:
    if not HAS_PYAV:
        pytest.skip("PyAV is not installed (the video extra)")
    return VideoEncoder(root, DescriptorImageEncoder(root, size=32), make_audio(root, tmp), max_keyframes=3)


FACTORIES: dict[str, Callable[[Path, Path], Encoder]] = {
    "text": make_text,
    "behaviour": make_behaviour,
    "image-descriptor": make_descriptor,
    "image-clip": make_clip,
    "audio": make_audio,
    "video": make_video,
}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def encoder(request, tmp_path_factory, media_root) -> Encoder:
    return FACTORIES[request.param](media_root, tmp_path_factory.mktemp(request.param))


def test_encoder_satisfies_the_protocol(encoder):
    assert isinstance(encoder, Encoder)
    assert isinstance(encoder.name, str) and encoder.name in schema.MODALITIES
    assert isinstance(encoder.dim, int) and encoder.dim > 0


def test_encode_returns_rows_in_input_order_with_the_declared_shape(encoder):
    embeddings = encoder.encode(ITEMS)
    assert isinstance(embeddings, Embeddings)
    assert embeddings.item_ids == tuple(ITEMS[schema.ITEM_ID].to_list())
    assert embeddings.vectors.dtype == np.float32
    assert embeddings.vectors.shape == (ITEMS.height, encoder.dim)
    assert embeddings.mask.dtype == np.bool_ and embeddings.mask.shape == (ITEMS.height,)


def test_rows_are_unit_norm_where_masked_in_and_zero_elsewhere(encoder):
    embeddings = encoder.encode(ITEMS)
    norms = np.linalg.norm(embeddings.vectors, axis=1)
    np.testing.assert_allclose(norms[embeddings.mask], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(norms[~embeddings.mask], 0.0)
    # every implementation here can encode some but not all of these items
    assert 0 < embeddings.mask.sum() < ITEMS.height


def test_encode_is_deterministic_and_row_order_follows_the_input(encoder):
    first = encoder.encode(ITEMS)
    again = encoder.encode(ITEMS)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    np.testing.assert_array_equal(first.mask, again.mask)
    reversed_ = encoder.encode(ITEMS.reverse())
    np.testing.assert_allclose(reversed_.vectors, first.vectors[::-1], atol=2e-5)
    np.testing.assert_array_equal(reversed_.mask, first.mask[::-1])


def test_exactly_the_items_with_usable_input_are_masked_in_and_missing_files_are_failures(encoder):
    embeddings = encoder.encode(ITEMS)
    assert embeddings.mask.tolist() == EXPECTED_MASK[encoder.name]
    if encoder.name in ("image", "audio", "video"):
        # a missing file is a failure of that item; a null path is no failure, just no media
        assert set(encoder.failures) == {"m7"}


def test_an_empty_frame_gives_empty_embeddings(encoder):
    embeddings = encoder.encode(ITEMS.head(0))
    assert embeddings.item_ids == ()
    assert embeddings.vectors.shape == (0, encoder.dim)


# The Embeddings type itself.

def test_embeddings_reject_bad_dtype_shape_duplicates_and_masked_out_non_zero_rows():
    ok = np.eye(2, dtype=np.float32)
    mask = np.array([True, True])
    Embeddings(("a", "b"), ok, mask)
    with pytest.raises(ValueError, match="float32"):
        Embeddings(("a", "b"), ok.astype(np.float64), mask)
    with pytest.raises(ValueError, match="shape"):
        Embeddings(("a",), ok, mask)
    with pytest.raises(ValueError, match="bool"):
        Embeddings(("a", "b"), ok, mask.astype(int))
    with pytest.raises(ValueError, match="unique"):
        Embeddings(("a", "a"), ok, mask)
    with pytest.raises(ValueError, match="zero"):
        Embeddings(("a", "b"), ok, np.array([True, False]))


def test_align_reorders_and_fills_unknown_ids_with_zero_rows():
    embeddings = Embeddings(("a", "b", "c"), np.eye(3, dtype=np.float32), np.array([True, True, True]))
    aligned = embeddings.align(["c", "z", "a"])
    assert aligned.item_ids == ("c", "z", "a")
    np.testing.assert_array_equal(aligned.vectors, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(aligned.mask, [True, False, True])


def test_l2_normalise_scales_rows_and_keeps_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
