"""AudioEncoder on synthetic clips whose answer is planted: pitch groups, click-track tempo, chords."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile

from fuserank import schema
from fuserank.encoders import audio as audio_module
from fuserank.encoders.audio import FEATURE_NAMES, AudioEncoder, audio_features, load_audio
from fuserank.encoders.base import Encoder
from fuserank.data.media import MediaError

SR = 22050
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def tone(freq: float, seconds: float = 1.0, sr: int = SR, amplitude: float = 0.3, harmonics: int = 3) -> np.ndarray:
    """A tone with decaying harmonics, float32 mono."""
    t = np.arange(int(seconds * sr)) / sr
    y = sum(amplitude / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, harmonics + 1))
    return y.astype(np.float32)


def clicks(bpm: float, seconds: float = 6.0, sr: int = SR) -> np.ndarray:
    """A click every 60/bpm seconds: 10 ms decaying 1 kHz bursts."""
    y = np.zeros(int(seconds * sr), dtype=np.float32)
    burst = tone(1000.0, 0.01, sr, amplitude=0.8, harmonics=1) * np.exp(-np.arange(int(0.01 * sr)) / (0.002 * sr))
    for start in np.arange(0.1, seconds - 0.02, 60.0 / bpm):
        i = int(start * sr)
        y[i : i + burst.size] += burst
    return y


def feature(vector: np.ndarray, name: str) -> float:
    return float(vector[FEATURE_NAMES.index(name)])


def items_frame(rows: dict[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame({schema.ITEM_ID: list(rows), schema.AUDIO_PATH: list(rows.values())},
                        schema={schema.ITEM_ID: pl.String, schema.AUDIO_PATH: pl.String})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """Three low tones and three high tones (different pitch, level and length within a group)."""
    root = tmp_path_factory.mktemp("audio-catalog")
    rows = {}
    for group, freqs in (("low", (110.0, 130.0, 150.0)), ("high", (2000.0, 2400.0, 2800.0))):
        for k, freq in enumerate(freqs):
            name = f"{group}{k}.wav"
            soundfile.write(root / name, tone(freq, 0.8 + 0.2 * k, amplitude=0.2 + 0.1 * k), SR)
            rows[f"{group}{k}"] = name
    return root, items_frame(rows)


def test_feature_vector_has_a_name_per_entry_and_is_deterministic():
    y = tone(440.0)
    first, again = audio_features(y, SR), audio_features(y.copy(), SR)
    assert first.dtype == np.float32 and first.shape == (len(FEATURE_NAMES),)
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    np.testing.assert_array_equal(first, again)
    assert np.isfinite(first).all()
    # the names point at the right entries: a 440 Hz tone has its chroma peak at A
    assert max(PITCH_CLASSES, key=lambda pc: feature(first, f"chroma_mean_{pc}")) == "A"
    assert 400 < feature(first, "centroid_hz_mean") < 1200


@pytest.mark.parametrize("n_samples", [0, 1, 100, 2047])
def test_clips_shorter_than_a_frame_do_not_crash(n_samples):
    vector = audio_features(tone(440.0)[:n_samples], SR)
    assert vector.shape == (len(FEATURE_NAMES),) and np.isfinite(vector).all()


def test_silence_is_a_valid_clip_with_zero_tempo():
    vector = audio_features(np.zeros(SR, dtype=np.float32), SR)
    assert np.isfinite(vector).all()
    assert feature(vector, "tempo_bpm") == 0.0 and feature(vector, "rms_mean") == 0.0


@pytest.mark.parametrize("bpm", [90.0, 150.0])
def test_tempo_and_onset_rate_of_a_click_track(bpm):
    vector = audio_features(clicks(bpm), SR)
    # only the true tempo is accepted (librosa finds it here; no octave error allowed)
    assert feature(vector, "tempo_bpm") == pytest.approx(bpm, rel=0.10)
    assert feature(vector, "onset_rate_per_s") == pytest.approx(bpm / 60.0, rel=0.15)


def test_a_chord_and_noise_differ_in_chroma():
    c_major = tone(261.63, 2.0) + tone(329.63, 2.0) + tone(392.00, 2.0)
    noise = np.random.default_rng(0).normal(0, 0.1, 2 * SR).astype(np.float32)
    chord, hiss = audio_features(c_major, SR), audio_features(noise, SR)
    chord_chroma = np.array([feature(chord, f"chroma_mean_{pc}") for pc in PITCH_CLASSES])
    noise_chroma = np.array([feature(hiss, f"chroma_mean_{pc}") for pc in PITCH_CLASSES])
    assert set(np.argsort(chord_chroma)[-3:]) == {0, 4, 7}  # C, E, G
    assert chord_chroma.max() / chord_chroma.min() > 5 * noise_chroma.max() / noise_chroma.min()


FORMATS = [
    ("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III"),
]


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS)
def test_load_audio_decodes_every_format_resampled_and_cut(tmp_path, ext, fmt, subtype):
    path = tmp_path / f"a.{ext}"
    try:
        soundfile.write(path, tone(440.0, 2.0, sr=44100, harmonics=1), 44100, format=fmt, subtype=subtype)
    except Exception as error:  # an older libsndfile cannot write MP3
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}: {error}")
    y = load_audio(path, SR, max_seconds=30.0)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - 2 * SR) < 0.05 * SR  # codecs pad a little
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * SR / y.size
    assert peak_hz == pytest.approx(440.0, abs=3.0)
    assert load_audio(path, SR, max_seconds=0.5).size == pytest.approx(SR / 2, abs=2)


def test_load_audio_averages_channels(tmp_path):
    stereo = np.stack([tone(440.0, harmonics=1), -tone(440.0, harmonics=1) * 0.5], axis=1)
    soundfile.write(tmp_path / "s.wav", stereo, SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav", SR, 30.0), stereo.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("content", [b"", b"this is a text file, not an mp3\n" * 40])
def test_load_audio_raises_media_error_on_garbage(tmp_path, content):
    path = tmp_path / "bad.mp3"
    path.write_bytes(content)
    with pytest.raises(MediaError, match="bad.mp3"):
        load_audio(path, SR, 30.0)


def test_encode_before_fit_is_a_clear_error(catalog):
    root, items = catalog
    with pytest.raises(RuntimeError, match="fit"):
        AudioEncoder(root).encode(items)


def test_pitch_groups_are_closer_within_than_across(catalog):
    root, items = catalog
    encoder = AudioEncoder(root).fit(items)
    embeddings = encoder.encode(items)
    assert isinstance(encoder, Encoder) and encoder.name == "audio"
    assert embeddings.mask.all()
    cos = embeddings.vectors @ embeddings.vectors.T
    low = np.arange(3)
    high = np.arange(3, 6)
    off_diagonal = ~np.eye(3, dtype=bool)
    within = np.concatenate([cos[np.ix_(low, low)][off_diagonal], cos[np.ix_(high, high)][off_diagonal]])
    across = cos[np.ix_(low, high)].ravel()
    assert within.min() > across.max(), (within, across)
    assert within.mean() > across.mean() + 0.4, (within, across)


def test_contract_order_dtype_norms_mask_and_determinism(catalog):
    root, items = catalog
    encoder = AudioEncoder(root).fit(items)
    with_gaps = pl.concat([items, items_frame({"none": None, "missing": "nope.wav"})])
    first = encoder.encode(with_gaps)
    assert first.item_ids == tuple(with_gaps[schema.ITEM_ID].to_list())
    assert first.vectors.dtype == np.float32 and first.vectors.shape == (with_gaps.height, encoder.dim)
    norms = np.linalg.norm(first.vectors, axis=1)
    np.testing.assert_allclose(norms[first.mask], 1.0, rtol=1e-5)
    assert first.mask.tolist() == [True] * items.height + [False, False]
    np.testing.assert_array_equal(norms[~first.mask], 0.0)
    again = encoder.encode(with_gaps)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    reversed_ = encoder.encode(with_gaps.reverse())
    np.testing.assert_array_equal(reversed_.vectors, first.vectors[::-1])
    empty = encoder.encode(with_gaps.head(0))
    assert empty.vectors.shape == (0, encoder.dim)
    no_column = encoder.encode(with_gaps.drop(schema.AUDIO_PATH))
    assert not no_column.mask.any()


def test_statistics_come_from_the_fit_items_only(catalog, tmp_path):
    root, items = catalog
    soundfile.write(root / "extreme.wav", np.random.default_rng(1).uniform(-1, 1, 3 * SR).astype(np.float32), SR)
    extreme = items_frame({"extreme": "extreme.wav"})
    encoder = AudioEncoder(root).fit(items)
    raw, ok = encoder.raw_features(items)
    np.testing.assert_allclose(encoder.mean, raw[ok].astype(np.float64).mean(axis=0), rtol=1e-6)
    before = encoder.statistics()
    encoder.encode(pl.concat([items, extreme]))
    assert encoder.statistics() == before
    assert AudioEncoder(root).fit(items).statistics() == before
    # the test can fail: fitting with the extreme clip does move the statistics
    assert AudioEncoder(root).fit(pl.concat([items, extreme])).statistics()["mean"] != before["mean"]


def test_statistics_round_trip_through_json(catalog):
    root, items = catalog
    encoder = AudioEncoder(root, sample_rate=16000, max_seconds=5.0).fit(items)
    restored = AudioEncoder.with_statistics(root, json.loads(json.dumps(encoder.statistics())))
    assert (restored.sample_rate, restored.max_seconds, restored.n_fit) == (16000, 5.0, 6)
    np.testing.assert_array_equal(restored.encode(items).vectors, encoder.encode(items).vectors)
    stale = {**encoder.statistics(), "feature_version": "0"}
    with pytest.raises(ValueError, match="re-fit"):
        AudioEncoder.with_statistics(root, stale)


def test_a_feature_constant_on_the_fit_items_does_not_blow_up():
    encoder = AudioEncoder(Path(".")).fit_raw(np.ones((3, len(FEATURE_NAMES))))
    z = encoder.standardise(np.full((1, len(FEATURE_NAMES)), 5.0))
    np.testing.assert_array_equal(z, 0.0)
    encoder.fit_raw(np.stack([np.zeros(len(FEATURE_NAMES)), np.full(len(FEATURE_NAMES), 2.0)]))
    np.testing.assert_allclose(encoder.standardise(np.full((1, len(FEATURE_NAMES)), 3.0)), 2.0)
    np.testing.assert_allclose(encoder.standardise(np.full((1, len(FEATURE_NAMES)), 1e6)), audio_module.Z_CLIP)


def test_bad_files_give_zero_rows_a_warning_each_and_no_exception(catalog, tmp_path, caplog):
    root, items = catalog
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.mp3").write_text("not audio at all\n" * 50)
    (tmp_path / "outside.wav").write_bytes((root / "low0.wav").read_bytes())
    broken = items_frame({"empty": "bad/empty.wav", "text": "bad/text.mp3", "missing": "bad/none.wav",
                          "outside": os.path.relpath(tmp_path / "outside.wav", root), "null": None,
                          "good": "low0.wav"})
    encoder = AudioEncoder(root).fit(items)
    with caplog.at_level(logging.WARNING, logger="fuserank.encoders.audio"):
        embeddings = encoder.encode(broken)
    assert embeddings.mask.tolist() == [False, False, False, False, False, True]
    assert not embeddings.vectors[:5].any()
    assert set(encoder.failures) == {"empty", "text", "missing", "outside"}
    assert "outside" in encoder.failures["outside"]
    warned = [r for r in caplog.records if r.name == "fuserank.encoders.audio"]
    assert len(warned) == 4


def test_second_encode_is_served_from_the_cache_without_decoding(catalog, tmp_path, monkeypatch):
    root, items = catalog
    calls: list[Path] = []
    real = audio_module.load_audio

    def counting(path, sample_rate, max_seconds):
        calls.append(path)
        return real(path, sample_rate, max_seconds)

    monkeypatch.setattr(audio_module, "load_audio", counting)
    first = AudioEncoder(root, cache_dir=tmp_path).fit(items)
    assert len(calls) == items.height
    expected = first.encode(items)
    assert len(calls) == items.height  # the fit already cached every clip

    second = AudioEncoder.with_statistics(root, first.statistics(), cache_dir=tmp_path)
    np.testing.assert_array_equal(second.encode(items).vectors, expected.vectors)
    assert len(calls) == items.height
    # another sample rate is another cache key
    AudioEncoder(root, sample_rate=16000, cache_dir=tmp_path).raw_features(items.head(1))
    assert len(calls) == items.height + 1


def test_the_same_tone_at_44k_and_16k_gives_close_vectors(catalog):
    root, items = catalog
    soundfile.write(root / "a44.wav", tone(440.0, sr=44100), 44100)
    soundfile.write(root / "a16.wav", tone(440.0, sr=16000), 16000)
    soundfile.write(root / "b22.wav", tone(1500.0), SR)
    encoder = AudioEncoder(root).fit(items)
    vectors = encoder.encode(items_frame({"a44": "a44.wav", "a16": "a16.wav", "b": "b22.wav"})).vectors
    same = float(vectors[0] @ vectors[1])
    assert same > 0.95
    assert same > float(vectors[0] @ vectors[2]) + 0.2
