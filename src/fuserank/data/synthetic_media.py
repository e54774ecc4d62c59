"""Media of the synthetic multimodal catalog: images, audio clips and videos with planted attributes.

Each item's look (colour, shape, texture) and sound (pitch register, tempo, timbre) are drawn by
`fuserank.data.synthetic`; this module turns them into pixels and samples and writes the files.
Every function takes its randomness as a `numpy.random.Generator`, and the writers fix their
options so that the same pixels and samples give the same bytes (PNG without metadata chunks,
16-bit FLAC/WAV, Ogg Vorbis with a fixed stream serial, MPEG-4 Part 2 + AAC in MP4, bit-exact).
PIL, soundfile and PyAV are imported inside the functions that need them.
"""

from __future__ import annotations

import colorsys
import multiprocessing
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuserank import atomic, progress

# Hue in degrees; six hues 60 degrees apart so a little jitter never crosses into a neighbour.
COLOURS = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0}
SHAPES = ("circle", "square", "triangle", "star")
TEXTURES = ("plain", "stripes", "dots")
# Register centres in Hz, one octave apart; an item's pitch is within 3 semitones of its centre.
PITCHES = {"bass": 110.0, "tenor": 220.0, "alto": 440.0, "soprano": 880.0}
TEMPOS = {"slow": 2.0, "fast": 6.0}  # pulses per second
TIMBRES = ("sine", "square", "saw")
AUDIO_FORMATS = ("flac", "wav", "ogg")

IMAGE_SIZE = 64
SAMPLE_RATE = 16_000
FPS = 8
HUE_JITTER = 8.0  # degrees
PITCH_JITTER = 3.0  # semitones
NOISE_STD = 0.001  # audio noise, in full-scale units
_SOUNDFILE_FORMATS = {"flac": "FLAC", "wav": "WAV", "ogg": "OGG"}
_SOUNDFILE_SUBTYPES = {"flac": "PCM_16", "wav": "PCM_16", "ogg": "VORBIS"}
_OGG_SERIAL = 0x5EED


@dataclass(frozen=True)
class Look:
    """How one item's shape is drawn: colour as HSV in [0, 1], geometry in pixels and degrees."""

    hue: float
    saturation: float
    value: float
    shape: str
    texture: str
    centre: tuple[float, float]
    radius: float
    angle: float


def draw_look(colour: str, shape: str, texture: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Look:
    """Draw the jitter of an item's look (hue, shade, position, size, rotation)."""
    hue = ((COLOURS[colour] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360.0) / 360.0
    jitter = size / 8
    centre = (size / 2 + rng.uniform(-jitter, jitter), size / 2 + rng.uniform(-jitter, jitter))
    return Look(
        hue=hue,
        saturation=float(rng.uniform(0.65, 1.0)),
        value=float(rng.uniform(0.7, 1.0)),
        shape=shape,
        texture=texture,
        centre=centre,
        radius=float(rng.uniform(0.22, 0.34) * size),
        angle=float(rng.uniform(0.0, 360.0)),
    )


def draw_background(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A grey background with faint pixel noise, uint8 (size, size, 3); nearly unsaturated."""
    grey = rng.uniform(70.0, 200.0)
    shade = rng.normal(0.0, 5.0, size=(size, size, 1))
    tint = rng.normal(0.0, 2.0, size=(size, size, 3))
    return np.clip(grey + shade + tint, 0, 255).astype(np.uint8)


def render_scene(
    look: Look, background: np.ndarray, centre: tuple[float, float] | None = None, angle: float | None = None
) -> np.ndarray:
    """Draw `look` onto a copy of `background` (uint8 (h, w, 3)); `centre`/`angle` override the look's."""
    from PIL import Image, ImageDraw

    height, width = background.shape[:2]
    cx, cy = centre if centre is not None else look.centre
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if look.shape == "circle":
        r = look.radius
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(look.shape, cx, cy, look.radius, look.angle if angle is None else angle), fill=255)
    inside = np.asarray(mask, dtype=np.float32)[..., None] / 255.0

    bright = np.array(colorsys.hsv_to_rgb(look.hue, look.saturation, look.value)) * 255.0
    # The texture is a darker shade of the same hue, so the hue of every shape pixel stays planted.
    dark = np.array(colorsys.hsv_to_rgb(look.hue, look.saturation, look.value * 0.55)) * 255.0
    yy, xx = np.mgrid[0:height, 0:width]
    if look.texture == "stripes":
        pattern = ((xx + yy) // 4) % 2 == 1
    elif look.texture == "dots":
        pattern = ((xx % 6 - 2.5) ** 2 + (yy % 6 - 2.5) ** 2) < 3.0
    else:
        pattern = np.zeros((height, width), dtype=bool)
    fill = np.where(pattern[..., None], dark, bright)
    out = inside * fill + (1.0 - inside) * background.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        radii, corners = [radius] * 4, 4
    elif shape == "triangle":
        radii, corners = [radius * 1.15] * 3, 3
    elif shape == "star":
        radii, corners = [radius * 1.15, radius * 0.5] * 5, 10
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    theta = np.deg2rad(angle) + 2 * np.pi * np.arange(corners) / corners
    return [(cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(radii, theta, strict=True)]


def synthesize_audio(
    pitch: str, tempo: str, timbre: str, duration: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A pulsed tone in the item's register, tempo and timbre, with a little noise.

    Args:
        pitch, tempo, timbre: keys of PITCHES, TEMPOS and TIMBRES.
        duration: seconds.
        rng: source of the pitch, tempo and phase jitter and of the noise.
        sample_rate: Hz.

    Returns:
        float32 (round(duration * sample_rate),) mono samples in [-1, 1], peak about 0.5. The
        fundamental is the strongest frequency (harmonics fall off as 1/k).
    """
    n = int(round(duration * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = PITCHES[pitch] * 2.0 ** (rng.uniform(-PITCH_JITTER, PITCH_JITTER) / 12.0)
    if timbre == "sine":
        harmonics = [1]
    elif timbre == "square":
        harmonics = list(range(1, 16, 2))
    elif timbre == "saw":
        harmonics = list(range(1, 11))
    else:
        raise ValueError(f"unknown timbre {timbre!r}; expected one of {TIMBRES}")
    tone = np.zeros(n)
    for k in harmonics:
        if k * f0 < 0.45 * sample_rate:
            tone += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
    period = 1.0 / (TEMPOS[tempo] * rng.uniform(0.9, 1.1))
    since_onset = (t + rng.uniform(0, period)) % period
    envelope = np.minimum(since_onset / 0.005, 1.0) * np.exp(-since_onset / (0.35 * period))
    signal = tone * (0.15 + envelope)
    signal *= 0.5 / max(np.abs(signal).max(), 1e-9)
    signal += rng.normal(0.0, NOISE_STD, size=n)
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Write uint8 (h, w, 3) pixels as an RGB PNG (no metadata chunks), atomically."""
    from PIL import Image

    image = Image.fromarray(pixels, mode="RGB")
    return atomic.write_atomic(path, lambda tmp: image.save(tmp, format="PNG", compress_level=6))


def write_audio(path: Path, samples: np.ndarray, audio_format: str, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float32 mono samples as 16-bit FLAC or WAV, or Ogg Vorbis, atomically.

    libsndfile gives each Ogg stream a random serial number; it is replaced by a constant (and
    the page checksums recomputed) so that the same samples always give the same bytes.
    """
    import soundfile

    if audio_format not in _SOUNDFILE_FORMATS:
        raise ValueError(f"unknown audio format {audio_format!r}; expected one of {AUDIO_FORMATS}")

    def write(tmp: Path) -> None:
        file_format, subtype = _SOUNDFILE_FORMATS[audio_format], _SOUNDFILE_SUBTYPES[audio_format]
        soundfile.write(tmp, samples, sample_rate, format=file_format, subtype=subtype)
        if audio_format == "ogg":
            tmp.write_bytes(set_ogg_serial(tmp.read_bytes(), _OGG_SERIAL))

    return atomic.write_atomic(path, write)


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Give every page of a single-stream Ogg file the stream serial `serial`, fixing each page's CRC."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = out[pos + 26]
        end = pos + 27 + n_segments + sum(out[pos + 27 : pos + 27 + n_segments])
        struct.pack_into("<I", out, pos + 14, serial)
        out[pos + 22 : pos + 26] = b"\0\0\0\0"
        struct.pack_into("<I", out, pos + 22, _ogg_crc(out[pos:end]))
        pos = end
    return bytes(out)


def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        r = byte << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC_TABLE = _ogg_crc_table()


def _ogg_crc(page: bytes | bytearray) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def video_frames(look: Look, background: np.ndarray, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """The item's shape gliding across `background` and turning; uint8 (n_frames, h, w, 3)."""
    size = background.shape[0]
    direction = rng.uniform(0, 2 * np.pi)
    reach = rng.uniform(0.08, 0.16) * size
    spin = rng.uniform(-90.0, 90.0)
    frames = []
    for step in np.linspace(-1.0, 1.0, n_frames):
        cx = look.centre[0] + step * reach * np.cos(direction)
        cy = look.centre[1] + step * reach * np.sin(direction)
        frames.append(render_scene(look, background, centre=(cx, cy), angle=look.angle + step * spin))
    return np.stack(frames)


def write_video(
    path: Path, frames: np.ndarray, audio: np.ndarray, fps: int = FPS, sample_rate: int = SAMPLE_RATE
) -> Path:
    """Write frames (uint8 (n, h, w, 3)) and mono audio (float32) as MP4 (MPEG-4 Part 2 + AAC), atomically.

    Bit-exact flags keep encoder version strings out of the file. Needs PyAV.
    """
    import av

    bitexact = {"flags": "+bitexact"}

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
            video = container.add_stream("mpeg4", rate=fps)
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
            video.bit_rate = 300_000
            video.codec_context.options = bitexact
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
            sound.codec_context.options = bitexact
            for index, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))

    return atomic.write_atomic(path, write)


def write_item_media(
    folder: Path,
    seed: int,
    index: int,
    *,
    image_path: str | None,
    audio_path: str | None,
    video_path: str | None,
    colour: str,
    shape: str,
    texture: str,
    pitch: str,
    tempo: str,
    timbre: str,
) -> int:
    """Write one item's media files (paths relative to `folder`) that do not exist yet.

    Each medium has its own random stream derived from (seed, index), so a file comes out the
    same whether it is written alone or with the others, and the video shows exactly the image's
    look and plays exactly the audio file's samples.

    Returns:
        Number of files written (files already present are complete, being written atomically).
    """
    folder = Path(folder)
    todo = [p for p in (image_path, audio_path, video_path) if p is not None and not (folder / p).exists()]
    if not todo:
        return 0
    image_rng = np.random.default_rng([seed, 3, index, 0])
    look = draw_look(colour, shape, texture, image_rng)
    background = draw_background(image_rng)
    audio_rng = np.random.default_rng([seed, 3, index, 1])
    duration = float(audio_rng.uniform(1.5, 2.0))
    samples = synthesize_audio(pitch, tempo, timbre, duration, audio_rng)
    if image_path in todo:
        write_png(folder / image_path, render_scene(look, background))
    if audio_path in todo:
        write_audio(folder / audio_path, samples, Path(audio_path).suffix.lstrip("."))
    if video_path in todo:
        n_frames = int(round(duration * FPS))
        frames = video_frames(look, background, n_frames, np.random.default_rng([seed, 3, index, 2]))
        write_video(folder / video_path, frames, samples)
    return len(todo)


def write_all_media(jobs: list[dict], workers: int = 1) -> int:
    """Run `write_item_media(**job)` for every job, in `workers` spawned processes when above 1.

    Returns:
        Number of files written.
    """
    if workers <= 1:
        return sum(write_item_media(**job) for job in progress.bar(jobs, "synthetic media", unit="item"))

    # spawn, not fork: a forked child hangs if this process has already run OpenMP code.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(_write_item_media_job, jobs, chunksize=64)
        return sum(progress.bar(done, "synthetic media", total=len(jobs), unit="item"))


def _write_item_media_job(job: dict) -> int:
    return write_item_media(**job)
