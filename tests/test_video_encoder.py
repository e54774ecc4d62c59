"""VideoEncoder on tiny mp4 files written with PyAV: a hard cut, solid colours, with and without sound."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.encoders.audio import AudioEncoder
from fuserank.encoders.base import Encoder, l2_normalise
from fuserank.encoders.video import NO_PYAV_MESSAGE, VideoEncoder

SIZE = 64
FPS = 8
SECONDS = 3.0
CUT = 1.5  # seconds: red square before, blue background with a moving white square after
AUDIO_RATE = 22050


class MeanRGB:
    """Stand-in image encoder: the L2-normalised mean colour (3-d)."""

    name = "mean-rgb"
    dim = 3

    def __init__(self) -> None:
        self.calls = 0

    def encode_images(self, images: Sequence) -> np.ndarray:
        self.calls += 1
        return l2_normalise(np.stack([np.asarray(i, dtype=np.float32).reshape(-1, 3).mean(axis=0) for i in images]))


def solid(rgb: tuple[int, int, int]) -> Callable[[int], np.ndarray]:
    return lambda i: np.broadcast_to(np.array(rgb, dtype=np.uint8), (SIZE, SIZE, 3)).copy()


def cut_scene(i: int) -> np.ndarray:
    frame = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    if i / FPS < CUT:
        frame[16:48, 16:48] = (255, 0, 0)
    else:
        frame[:] = (0, 0, 255)
        x = (i * 4) % (SIZE - 12)
        frame[26:38, x : x + 12] = 255
    return frame


def late_cut_scene(i: int) -> np.ndarray:
    frame = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    if i / FPS < 2.0:
        x = (i * 4) % (SIZE - 12)
        frame[26:38, x : x + 12] = 255
    else:
        frame[:] = (0, 255, 0)
    return frame


def write_video(path: Path, frame_at: Callable[[int], np.ndarray], tone_hz: float | None) -> Path:
    """An mp4 of SECONDS at FPS (h264, else mpeg4), with an AAC sine track when tone_hz is given."""
    import av

    codec = next(c for c in ("libx264", "h264", "mpeg4") if _can_encode(av, c))
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=FPS)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = None
        if tone_hz is not None:
            audio = container.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "mono"
        for i in range(int(SECONDS * FPS)):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame_at(i), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            t = np.arange(int(SECONDS * AUDIO_RATE)) / AUDIO_RATE
            y = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            for start in range(0, y.size, 1024):
                frame = av.AudioFrame.from_ndarray(y[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate = AUDIO_RATE
                frame.pts = start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def _can_encode(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


VIDEOS = {  # item_id: (frames, soundtrack tone)
    "red": (solid((255, 0, 0)), 440.0),
    "dark_red": (solid((180, 10, 10)), 470.0),
    "blue": (solid((0, 0, 255)), 1760.0),
    "cut": (cut_scene, 880.0),
    "mute_red": (solid((255, 0, 0)), None),
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("video-catalog")
    for item_id, (frames, tone_hz) in VIDEOS.items():
        write_video(root / f"{item_id}.mp4", frames, tone_hz)
    return root, items_frame({item_id: f"{item_id}.mp4" for item_id in VIDEOS})


def items_frame(rows: dict[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame({schema.ITEM_ID: list(rows), schema.VIDEO_PATH: list(rows.values())},
                        schema={schema.ITEM_ID: pl.String, schema.VIDEO_PATH: pl.String})


def fitted_encoder(root: Path, items: pl.DataFrame, **kwargs) -> VideoEncoder:
    return VideoEncoder(root, MeanRGB(), AudioEncoder(root), **kwargs).fit_audio(items)


def mean_colour(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)


def test_keyframes_start_at_the_first_frame_and_catch_the_cut(catalog):
    root, _ = catalog
    encoder = VideoEncoder(root, MeanRGB(), AudioEncoder(root), max_keyframes=8, sample_fps=2.0)
    frames = encoder.keyframes(root / "cut.mp4")
    times = [t for t, _ in frames]
    assert times[0] == 0.0 and mean_colour(frames[0][1]).argmax() == 0  # red first frame
    assert times == sorted(times) and len(frames) <= 8
    after_cut = [(t, image) for t, image in frames if CUT - 1e-6 <= t < CUT + 1 / 2.0]
    assert len(after_cut) == 1 and mean_colour(after_cut[0][1]).argmax() == 2  # blue
    # samples at 2 fps: 0, 0.5, 1.0 are the same static frame, so none of them is kept after the first
    assert not [t for t in times if 0 < t < CUT - 1e-6]


def test_the_cut_is_the_strongest_change_and_the_limits_hold(catalog, tmp_path):
    root, _ = catalog
    audio = AudioEncoder(root)
    two = VideoEncoder(root, MeanRGB(), audio, max_keyframes=2).keyframes(root / "cut.mp4")
    assert [t for t, _ in two] == [0.0, pytest.approx(CUT)]
    assert [t for t, _ in VideoEncoder(root, MeanRGB(), audio, max_keyframes=1).keyframes(root / "cut.mp4")] == [0.0]
    # the largest difference wins, not the earliest: small motion first, a hard cut at 2.0 s
    late = write_video(tmp_path / "late_cut.mp4", late_cut_scene, None)
    assert [t for t, _ in VideoEncoder(root, MeanRGB(), audio, max_keyframes=2).keyframes(late)] == [0.0, 2.0]
    # nothing after max_seconds is decoded: before the cut the scene is static
    assert [t for t, _ in VideoEncoder(root, MeanRGB(), audio, max_seconds=1.2).keyframes(root / "cut.mp4")] == [0.0]
    # a static video has a single keyframe
    assert len(VideoEncoder(root, MeanRGB(), audio).keyframes(root / "red.mp4")) == 1


def test_red_and_blue_videos_embed_apart_and_a_silent_video_has_a_zero_audio_half(catalog):
    root, items = catalog
    encoder = fitted_encoder(root, items)
    assert isinstance(encoder, Encoder) and encoder.name == "video"
    embeddings = encoder.encode(items)
    assert embeddings.mask.all()
    v = dict(zip(embeddings.item_ids, embeddings.vectors))
    assert v["red"] @ v["dark_red"] > v["red"] @ v["blue"] + 0.3
    np.testing.assert_allclose(v["red"][:3] / np.linalg.norm(v["red"][:3]), [1, 0, 0], atol=0.05)
    np.testing.assert_array_equal(v["mute_red"][3:], 0.0)
    np.testing.assert_allclose(v["mute_red"][:3], [1, 0, 0], atol=0.05)
    # with sound, picture and sound halves weigh the same
    np.testing.assert_allclose(np.linalg.norm(v["red"][:3]), np.sqrt(0.5), rtol=1e-4)


def test_the_soundtrack_is_decoded_at_the_audio_rate(catalog):
    root, _ = catalog
    encoder = VideoEncoder(root, MeanRGB(), AudioEncoder(root, sample_rate=16000))
    y = encoder.soundtrack(root / "cut.mp4")
    assert y.dtype == np.float32 and abs(y.size - SECONDS * 16000) < 0.1 * 16000
    assert np.argmax(np.abs(np.fft.rfft(y))) * 16000 / y.size == pytest.approx(880.0, abs=5.0)
    assert encoder.soundtrack(root / "mute_red.mp4") is None


def test_contract_order_dtype_norms_mask_and_determinism(catalog):
    root, items = catalog
    encoder = fitted_encoder(root, items)
    with_gaps = pl.concat([items, items_frame({"none": None, "missing": "nope.mp4"})])
    first = encoder.encode(with_gaps)
    assert first.item_ids == tuple(with_gaps[schema.ITEM_ID].to_list())
    assert first.vectors.dtype == np.float32 and first.vectors.shape == (with_gaps.height, encoder.dim)
    assert encoder.dim == 3 + encoder.audio_encoder.dim
    norms = np.linalg.norm(first.vectors, axis=1)
    np.testing.assert_allclose(norms[first.mask], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(norms[~first.mask], 0.0)
    assert first.mask.tolist() == [True] * items.height + [False, False]
    np.testing.assert_array_equal(encoder.encode(with_gaps).vectors, first.vectors)
    np.testing.assert_array_equal(encoder.encode(with_gaps.reverse()).vectors, first.vectors[::-1])
    assert encoder.encode(with_gaps.head(0)).vectors.shape == (0, encoder.dim)


def test_corrupt_missing_and_outside_files_give_zero_rows_and_a_warning_each(catalog, tmp_path, caplog):
    root, items = catalog
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (bad / "text.mp4").write_text("not a video\n" * 100)
    (bad / "truncated.mp4").write_bytes((root / "cut.mp4").read_bytes()[:300])
    (tmp_path / "outside.mp4").write_bytes((root / "red.mp4").read_bytes())
    broken = items_frame({"garbage": "bad/garbage.mp4", "text": "bad/text.mp4", "truncated": "bad/truncated.mp4",
                          "missing": "bad/none.mp4", "outside": os.path.relpath(tmp_path / "outside.mp4", root),
                          "good": "red.mp4"})
    encoder = fitted_encoder(root, items)
    with caplog.at_level(logging.WARNING, logger="fuserank.encoders.video"):
        embeddings = encoder.encode(broken)
    assert embeddings.mask.tolist() == [False] * 5 + [True]
    assert not embeddings.vectors[:5].any()
    assert set(encoder.failures) == {"garbage", "text", "truncated", "missing", "outside"}
    assert len([r for r in caplog.records if r.name == "fuserank.encoders.video"]) == 5


def test_without_pyav_one_warning_and_every_row_zero(tmp_path, monkeypatch, caplog):
    (tmp_path / "a.mp4").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    audio = AudioEncoder(tmp_path).fit_raw(np.random.default_rng(0).normal(size=(4, AudioEncoder(tmp_path).dim)))
    encoder = VideoEncoder(tmp_path, MeanRGB(), audio)
    with caplog.at_level(logging.WARNING, logger="fuserank.encoders.video"):
        embeddings = encoder.encode(items_frame({"a": "a.mp4", "b": "a.mp4", "c": None}))
    assert not embeddings.mask.any() and not embeddings.vectors.any()
    assert embeddings.vectors.shape == (3, encoder.dim)
    assert [r.getMessage() for r in caplog.records] == [NO_PYAV_MESSAGE]
    assert set(encoder.failures) == {"a", "b"}


def test_cached_parts_skip_decoding_and_follow_new_audio_statistics(catalog, tmp_path, monkeypatch):
    root, items = catalog
    decoded: list[Path] = []
    real = VideoEncoder.keyframes

    def counting(self, path):
        decoded.append(path)
        return real(self, path)

    monkeypatch.setattr(VideoEncoder, "keyframes", counting)
    first = VideoEncoder(root, MeanRGB(), AudioEncoder(root), cache_dir=tmp_path).fit_audio(items)
    expected = first.encode(items)
    assert len(decoded) == items.height  # fit_audio decoded, encode hit the cache

    second = VideoEncoder(root, MeanRGB(), AudioEncoder(root), cache_dir=tmp_path).fit_audio(items.head(3))
    again = second.encode(items)
    assert len(decoded) == items.height
    np.testing.assert_allclose(again.vectors[:, :3], expected.vectors[:, :3], atol=1e-6)  # same picture part
    assert not np.allclose(again.vectors, expected.vectors)  # other audio statistics, other vectors
    # another keyframe setting is another cache entry
    VideoEncoder(root, MeanRGB(), AudioEncoder(root), max_keyframes=3, cache_dir=tmp_path).parts(items.head(1))
    assert len(decoded) == items.height + 1


def test_an_unfitted_audio_encoder_leaves_the_sound_out_with_a_warning(catalog, caplog):
    root, items = catalog
    encoder = VideoEncoder(root, MeanRGB(), AudioEncoder(root))
    with caplog.at_level(logging.WARNING, logger="fuserank.encoders.video"):
        embeddings = encoder.encode(items)
    assert embeddings.mask.all()
    np.testing.assert_array_equal(embeddings.vectors[:, 3:], 0.0)
    assert any("no statistics" in r.getMessage() for r in caplog.records)


def test_with_the_descriptor_image_encoder(catalog):
    image = pytest.importorskip("fuserank.encoders.image_descriptor")
    if not hasattr(image, "DescriptorImageEncoder"):
        pytest.skip("encoders/image.py has no DescriptorImageEncoder yet")
    root, items = catalog
    encoder = VideoEncoder(root, image.DescriptorImageEncoder(root), AudioEncoder(root)).fit_audio(items)
    assert encoder.dim == image.DescriptorImageEncoder.dim + encoder.audio_encoder.dim
    v = dict(zip(items[schema.ITEM_ID].to_list(), encoder.encode(items).vectors))
    d = encoder.image_dim
    assert v["red"][:d] @ v["dark_red"][:d] > v["red"][:d] @ v["blue"][:d]
    assert v["red"] @ v["mute_red"] > v["red"] @ v["blue"]
