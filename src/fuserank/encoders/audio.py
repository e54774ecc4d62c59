"""Audio encoder: librosa summary statistics, standardised on the training catalog.

No pretrained audio model ships in a package (see STACK.md), so a clip is described by a fixed
vector of hand-made statistics (timbre, loudness, pitch class, rhythm). Those statistics live on
very different scales (tempo in BPM, centroid in Hz, MFCCs in dB), so the vector is standardised
with a mean and std fitted on the training items only, then L2-normalised: a test item never
shifts the statistics it is scaled by. Raw vectors are cached by content hash, so re-fitting the
statistics on another split costs no decoding.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG, MP3); no worker processes are used
because a child forked after OpenMP work hangs (STACK.md).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import progress, schema
from fuserank.encoders.base import Embeddings, l2_normalise
from fuserank.encoders.cache import CacheWriter, EmbeddingCache, fill_from_cache
from fuserank.data.media import MediaError, group_media_files

logger = logging.getLogger(__name__)

# Bump when audio_features changes, so cached raw vectors of the old definition are not reused.
FEATURE_VERSION = "2"  # 2: YIN fundamental frequency

N_FFT = 2048
HOP_LENGTH = 512
N_MFCC = 20
N_MEL_BANDS = 24
N_CONTRAST_BANDS = 6  # spectral_contrast returns N_CONTRAST_BANDS + 1 rows
# delta() needs 9 frames; with centred frames that is 8 hops of samples.
MIN_SAMPLES = max(N_FFT, 8 * HOP_LENGTH)
# A standardised value beyond this many stds is clipped, so one feature far outside the
# training range cannot outweigh all the others after L2 normalisation.
Z_CLIP = 10.0
# A feature whose training std is below this (relative to its mean) is constant on the fit
# items: it carries nothing the statistics can scale, and dividing by it would blow up noise.
STD_FLOOR = 1e-6
CACHE_CHUNK = 64

_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for stat in ("mean", "std"):
        names += [f"mfcc_{stat}_{i:02d}" for i in range(N_MFCC)]
    for stat in ("mean", "std"):
        names += [f"delta_mfcc_{stat}_{i:02d}" for i in range(N_MFCC)]
    names += [f"log_mel_mean_{i:02d}" for i in range(N_MEL_BANDS)]
    for stat in ("mean", "std"):
        names += [f"chroma_{stat}_{pc}" for pc in _PITCH_CLASSES]
    for stat in ("mean", "std"):
        names += [f"contrast_{stat}_{i}" for i in range(N_CONTRAST_BANDS + 1)]
    names += ["tempo_bpm", "onset_strength_mean", "onset_strength_std", "onset_rate_per_s"]
    names += ["rms_mean", "rms_std", "zcr_mean", "zcr_std"]
    for spectral in ("centroid_hz", "bandwidth_hz", "rolloff_hz"):
        names += [f"{spectral}_mean", f"{spectral}_std"]
    names += ["f0_median_log2_hz", "f0_std_log2_hz"]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _feature_names()

F0_MIN_HZ, F0_MAX_HZ = 50.0, 2000.0

# Feature families (name prefix -> family); see AudioEncoder.embed.
FAMILIES = {
    "mfcc": "timbre", "delta_mfcc": "timbre dynamics", "log_mel": "spectral envelope", "chroma": "harmony",
    "contrast": "spectral contrast", "centroid": "spectral shape", "bandwidth": "spectral shape",
    "rolloff": "spectral shape", "rms": "energy", "zcr": "energy", "tempo": "rhythm", "onset": "rhythm",
    "f0": "pitch",
}


def _family_weights() -> np.ndarray:
    family = [next(f for prefix, f in sorted(FAMILIES.items(), key=lambda kv: -len(kv[0]))
                   if name.startswith(prefix)) for name in FEATURE_NAMES]
    size = {f: family.count(f) for f in set(family)}
    return np.array([1.0 / np.sqrt(size[f]) for f in family], dtype=np.float32)


FAMILY_WEIGHTS = _family_weights()


def load_audio(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Decode the first `max_seconds` of an audio file as mono at `sample_rate`.

    Only the frames needed are read from the file; channels are averaged, then the signal is
    resampled (soxr) when the file's rate differs.

    Args:
        path: a WAV, FLAC, OGG (Vorbis/Opus) or MP3 file, or anything else libsndfile reads.
        sample_rate: output rate in Hz.
        max_seconds: longest stretch decoded, in seconds of the file's own time.

    Returns:
        float32 array (n_samples,), n_samples <= ceil(max_seconds * sample_rate) + 1.

    Raises:
        MediaError: the file is unreadable, empty, not audio, or holds non-finite samples.
    """
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as handle:
            native_rate = int(handle.samplerate)
            if native_rate <= 0:
                raise MediaError(f"{Path(path).name}: invalid sample rate {native_rate}")
            limit = max(1, int(math.ceil(max_seconds * native_rate)))
            data = handle.read(frames=limit, dtype="float32", always_2d=True)
    except MediaError:
        raise
    except Exception as error:  # libsndfile reports every undecodable input as some error
        raise MediaError(f"{Path(path).name}: cannot decode audio: {error}") from error
    if data.shape[0] == 0:
        raise MediaError(f"{Path(path).name}: the file holds no audio samples")
    y = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(y).all():
        raise MediaError(f"{Path(path).name}: the audio holds non-finite samples")
    if native_rate != sample_rate:
        import librosa

        y = librosa.resample(y, orig_sr=native_rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def audio_features(y: np.ndarray, sr: int) -> np.ndarray:
    """The raw summary vector of a mono signal, in the order of FEATURE_NAMES.

    Frame statistics use N_FFT / HOP_LENGTH frames; a signal shorter than MIN_SAMPLES is
    zero-padded (rates per second still use the unpadded duration). Silence gives tempo 0.

    Args:
        y: float array (n_samples,), mono, any length (0 included).
        sr: sample rate of `y` in Hz.

    Returns:
        float32 array (len(FEATURE_NAMES),), finite; deterministic for the same input.
    """
    import librosa

    y = np.asarray(y, dtype=np.float32).reshape(-1)
    duration = max(y.size, 1) / sr
    if y.size < MIN_SAMPLES:
        y = np.pad(y, (0, MIN_SAMPLES - y.size))

    magnitude = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH))
    power = magnitude**2
    log_mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    delta = librosa.feature.delta(mfcc, width=9)
    bands = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MEL_BANDS))
    # a fixed tuning: estimating it warns on silence and makes chroma depend on a noisy guess
    chroma = librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0)
    # the top band edge fmin * 2**n_bands must stay below Nyquist at low sample rates
    fmin = min(200.0, 0.45 * sr / 2**N_CONTRAST_BANDS)
    contrast = librosa.feature.spectral_contrast(S=magnitude, sr=sr, fmin=fmin, n_bands=N_CONTRAST_BANDS)

    onset_env = librosa.onset.onset_strength(S=log_mel, sr=sr, hop_length=HOP_LENGTH)
    if onset_env.max(initial=0.0) > 1e-8:
        tempo = float(librosa.feature.tempo(onset_envelope=onset_env, sr=sr, hop_length=HOP_LENGTH)[0])
        n_onsets = len(librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr, hop_length=HOP_LENGTH))
    else:  # no onsets at all: librosa would report its prior (~117 BPM) for silence
        tempo, n_onsets = 0.0, 0

    # Fundamental frequency (YIN) in octaves: the register, which the spectral statistics only
    # show mixed with timbre. Frames quieter than 1% of the loudest are left out.
    f0 = librosa.yin(y, fmin=F0_MIN_HZ, fmax=min(F0_MAX_HZ, 0.45 * sr), sr=sr, frame_length=N_FFT, hop_length=HOP_LENGTH)
    loudness = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP_LENGTH)[0][: len(f0)]
    voiced = loudness > 0.01 * loudness.max(initial=0.0)
    octaves = np.log2(f0[: len(loudness)][voiced]) if voiced.any() else np.zeros(1)

    rms = librosa.feature.rms(S=magnitude, frame_length=N_FFT, hop_length=HOP_LENGTH)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP_LENGTH)
    centroid = librosa.feature.spectral_centroid(S=magnitude, sr=sr)
    bandwidth = librosa.feature.spectral_bandwidth(S=magnitude, sr=sr)
    rolloff = librosa.feature.spectral_rolloff(S=magnitude, sr=sr)

    def mean_std(x: np.ndarray) -> list[np.ndarray]:
        return [x.mean(axis=-1).reshape(-1), x.std(axis=-1).reshape(-1)]

    parts = [
        *mean_std(mfcc),
        *mean_std(delta),
        bands.mean(axis=-1),
        *mean_std(chroma),
        *mean_std(contrast),
        np.array([tempo, onset_env.mean(), onset_env.std(), n_onsets / duration]),
        *mean_std(rms),
        *mean_std(zcr),
        *mean_std(centroid),
        *mean_std(bandwidth),
        *mean_std(rolloff),
        np.array([np.median(octaves), octaves.std()]),
    ]
    out = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def media_paths(items: pl.DataFrame, column: str) -> list[str | None]:
    """The `column` values of `items` (relative media paths); all None when the column is absent."""
    if column not in items.columns:
        return [None] * items.height
    return items[column].to_list()


class AudioEncoder:
    """Standardised librosa statistics of each item's audio file (schema.AUDIO_PATH).

    Args:
        root: catalog root; audio paths are relative to it (media.safe_media_path).
        sample_rate: rate in Hz every clip is resampled to before feature extraction.
        max_seconds: only the first `max_seconds` of a file are decoded.
        cache_dir: root of the raw-feature cache; None disables caching.

    Attributes:
        name: "audio".
        dim: len(FEATURE_NAMES); encode returns (n, dim).
        mean, std: float64 arrays (dim,) fitted by `fit`, None before.
        n_fit: number of clips the statistics were fitted on.
        failures: item_id -> reason, for items of the last call whose file could not be used.
    """

    name = "audio"

    def __init__(
        self, root: Path, sample_rate: int = 22050, max_seconds: float = 30.0, cache_dir: Path | None = None
    ) -> None:
        if sample_rate <= 0 or max_seconds <= 0:
            raise ValueError(f"sample_rate and max_seconds must be positive, got {sample_rate}, {max_seconds}")
        self.root = Path(root)
        self.sample_rate = int(sample_rate)
        self.max_seconds = float(max_seconds)
        self.dim = len(FEATURE_NAMES)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.n_fit = 0
        self.failures: dict[str, str] = {}
        self.cache = None
        if cache_dir is not None:
            self.cache = EmbeddingCache(Path(cache_dir) / f"audio-raw-v{FEATURE_VERSION}", self.dim)

    @property
    def is_fitted(self) -> bool:
        return self.mean is not None

    def raw_features(self, items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Unstandardised feature vectors of the items' audio files.

        Returns:
            raw: float32 (n, dim) in the order of items[schema.ITEM_ID]; zero rows where not ok.
            ok: bool (n,); False for a null path and for a file that could not be used (those
                are listed in `self.failures` and logged once each).
        """
        item_ids = items[schema.ITEM_ID].to_list()
        self.failures = {}
        key_parts = ("audio-raw", FEATURE_VERSION, str(self.sample_rate), repr(self.max_seconds))
        rows_of_key, paths, failures = group_media_files(
            item_ids, media_paths(items, schema.AUDIO_PATH), self.root, key_parts
        )
        for item_id, reason in failures.items():
            self._fail(item_id, reason)
        raw = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        ok = np.zeros(len(item_ids), dtype=bool)
        todo = fill_from_cache(self.cache, rows_of_key, raw, ok)

        writer = CacheWriter(self.cache, CACHE_CHUNK)
        for key in progress.bar(todo, desc="audio", total=len(todo), unit="file") if todo else ():
            try:
                vector = audio_features(load_audio(paths[key], self.sample_rate, self.max_seconds), self.sample_rate)
            except Exception as error:  # one bad file degrades one item, never the run
                for row in rows_of_key[key]:
                    self._fail(item_ids[row], str(error))
                continue
            raw[rows_of_key[key]] = vector
            ok[rows_of_key[key]] = True
            writer.add([key], vector)
        writer.flush()
        return raw, ok

    def fit(self, items: pl.DataFrame) -> AudioEncoder:
        """Fit the standardisation on the encodable audio of `items` (the training catalog only)."""
        raw, ok = self.raw_features(items)
        if not ok.any():
            raise ValueError(f"none of the {items.height} fit items has a decodable audio file")
        return self.fit_raw(raw[ok])

    def fit_raw(self, raw: np.ndarray) -> AudioEncoder:
        """Fit the standardisation on raw feature rows (m, dim), m >= 1, e.g. video soundtracks."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != self.dim or raw.shape[0] == 0:
            raise ValueError(f"expected raw features of shape (m >= 1, {self.dim}), got {raw.shape}")
        self.mean = raw.mean(axis=0)
        self.std = raw.std(axis=0)
        self.n_fit = int(raw.shape[0])
        return self

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """(raw - mean) / std, clipped to +-Z_CLIP; features constant on the fit items give 0.

        Args:
            raw: array (m, dim) of audio_features rows.

        Returns:
            float32 array (m, dim), not normalised.

        Raises:
            RuntimeError: before `fit` / `with_statistics`.
        """
        if self.mean is None or self.std is None:
            raise RuntimeError(
                "AudioEncoder has no standardisation statistics: call fit(train_items) first, "
                "or build it with AudioEncoder.with_statistics(...)"
            )
        raw = np.asarray(raw, dtype=np.float64)
        varies = self.std > STD_FLOOR * np.maximum(1.0, np.abs(self.mean))
        scale = np.divide(1.0, self.std, out=np.zeros_like(self.std), where=varies)
        return np.clip((raw - self.mean) * scale, -Z_CLIP, Z_CLIP).astype(np.float32)

    def embed(self, raw: np.ndarray) -> np.ndarray:
        """Embedding rows from raw features: standardised, each feature family weighted so the
        families count equally in a cosine (else 80 MFCC values outvote 6 spectral-shape ones),
        then L2-normalised. float32 (m, dim)."""
        return l2_normalise(self.standardise(raw) * FAMILY_WEIGHTS)

    def encode(self, items: pl.DataFrame) -> Embeddings:
        """Standardised, L2-normalised vectors of the items' audio (schema.AUDIO_PATH).

        Returns:
            Embeddings in the order of items[schema.ITEM_ID], float32 (n, dim); a null path or
            an unusable file gives a zero row and mask False.

        Raises:
            RuntimeError: before `fit` / `with_statistics`.
        """
        if not self.is_fitted:
            self.standardise(np.zeros((0, self.dim)))  # raises the explanatory error
        raw, ok = self.raw_features(items)
        vectors = np.zeros_like(raw)
        if ok.any():
            vectors[ok] = self.embed(raw[ok])
        mask = ok & vectors.any(axis=1)
        return Embeddings(tuple(items[schema.ITEM_ID].to_list()), vectors, mask)

    def statistics(self) -> dict[str, Any]:
        """The fitted standardisation as plain JSON-able values (float64 round-trips exactly)."""
        if self.mean is None or self.std is None:
            raise RuntimeError("AudioEncoder.statistics() before fit")
        return {
            "feature_version": FEATURE_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "n_fit": self.n_fit,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def with_statistics(cls, root: Path, statistics: dict[str, Any], cache_dir: Path | None = None) -> AudioEncoder:
        """An encoder restored from `statistics()` output (e.g. read back from a run's JSON).

        Raises:
            ValueError: the statistics were made by another feature definition.
        """
        names = tuple(statistics.get("feature_names", ()))
        if statistics.get("feature_version") != FEATURE_VERSION or names != FEATURE_NAMES:
            raise ValueError(
                f"audio statistics of feature version {statistics.get('feature_version')!r} do not match "
                f"this fuserank (version {FEATURE_VERSION!r}, {len(FEATURE_NAMES)} features): re-fit them"
            )
        encoder = cls(root, int(statistics["sample_rate"]), float(statistics["max_seconds"]), cache_dir=cache_dir)
        encoder.mean = np.asarray(statistics["mean"], dtype=np.float64)
        encoder.std = np.asarray(statistics["std"], dtype=np.float64)
        encoder.n_fit = int(statistics["n_fit"])
        return encoder

    def _fail(self, item_id: str, reason: str) -> None:
        self.failures[item_id] = reason
        logger.warning("audio of item %s is left out: %s", item_id, reason)

    def __repr__(self) -> str:
        fitted = f"fitted on {self.n_fit}" if self.is_fitted else "not fitted"
        return f"AudioEncoder({self.root}, {self.sample_rate} Hz, {self.max_seconds:g} s, {fitted})"

