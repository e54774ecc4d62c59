"""Seeded synthetic catalogs with a planted answer.

`generate_catalog` is text only: users have a favourite genre. `generate_multimodal_catalog`
writes a catalog with images, audio and video on disk, where each user's taste is of one kind
(a colour seen only in images, a pitch register heard only in audio, or a genre that the text
names only part of the time), so the worth of each modality can be measured. Both produce the
items/interactions contract a user supplies (schema.ITEMS, schema.INTERACTIONS).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from fuserank import atomic, schema
from fuserank.data.synthetic_media import (
    AUDIO_FORMATS,
    COLOURS,
    PITCHES,
    SHAPES,
    TEMPOS,
    TEXTURES,
    TIMBRES,
    write_all_media,
)

logger = logging.getLogger(__name__)

GENRES = ("comedy", "drama", "horror", "western")
GENRE = "genre"


def generate_catalog(
    n_items: int = 200,
    n_users: int = 150,
    seed: int = 0,
    interactions_per_user: tuple[int, int] = (8, 30),
    taste_strength: float = 0.85,
    text_informative: float = 0.7,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate items and timestamped interactions.

    Args:
        n_items, n_users: catalog and user-base size.
        seed: the only source of randomness; the same seed gives identical frames.
        interactions_per_user: inclusive range of each user's number of interactions.
        taste_strength: probability that an interaction is drawn from the user's favourite genre.
        text_informative: probability that an item's text names its true genre (else a random one).

    Returns:
        (items, interactions): items with item_id, text and the true `genre`; interactions with
        user_id, item_id, timestamp (seconds, increasing per user) and rating (1-5).
    """
    rng = np.random.default_rng(seed)
    genre = rng.integers(len(GENRES), size=n_items)
    shown = np.where(rng.random(n_items) < text_informative, genre, rng.integers(len(GENRES), size=n_items))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    item_ids = [f"i{i:05d}" for i in range(n_items)]
    items = pl.DataFrame(
        {
            schema.ITEM_ID: item_ids,
            schema.TEXT: [f"a {GENRES[g]} story number {i}" for i, g in enumerate(shown)],
            GENRE: [GENRES[g] for g in genre],
        }
    )

    users, chosen, times, ratings = [], [], [], []
    low, high = interactions_per_user
    for u in range(n_users):
        favourite = rng.integers(len(GENRES))
        count = min(int(rng.integers(low, high + 1)), n_items)
        in_taste = np.where(genre == favourite, taste_strength / max((genre == favourite).sum(), 1), 0.0)
        elsewhere = (1 - taste_strength) / n_items
        weights = popularity * (in_taste + elsewhere)
        picks = rng.choice(n_items, size=count, replace=False, p=weights / weights.sum())
        start = int(rng.integers(0, 30 * 86_400))
        steps = np.cumsum(rng.integers(600, 3 * 86_400, size=count))
        users += [f"u{u:05d}"] * count
        chosen += [item_ids[i] for i in picks]
        times += (start + steps).tolist()
        ratings += np.where(genre[picks] == favourite, rng.integers(3, 6, size=count), rng.integers(1, 4, size=count)).tolist()
    interactions = pl.DataFrame(
        {schema.USER_ID: users, schema.ITEM_ID: chosen, schema.TIMESTAMP: times, schema.RATING: ratings},
        schema=schema.INTERACTIONS,
    )
    return items, interactions


def write_catalog(folder: Path, items: pl.DataFrame, interactions: pl.DataFrame) -> tuple[Path, Path]:
    """Write items.parquet and interactions.parquet into `folder`; returns their paths."""
    folder = Path(folder)
    return (
        atomic.write_parquet(folder / "items.parquet", items),
        atomic.write_parquet(folder / "interactions.parquet", interactions),
    )


# ---- the multimodal catalog ------------------------------------------------------------------

MEDIA_GENRES = ("comedy", "drama", "horror", "western", "documentary")
COLOUR, SHAPE, TEXTURE, PITCH, TEMPO, TIMBRE = "colour", "shape", "texture", "pitch", "tempo", "timbre"
ATTRIBUTES = {
    GENRE: MEDIA_GENRES,
    COLOUR: tuple(COLOURS),
    SHAPE: SHAPES,
    TEXTURE: TEXTURES,
    PITCH: tuple(PITCHES),
    TEMPO: tuple(TEMPOS),
    TIMBRE: TIMBRES,
}
TASTE_KIND = "taste_kind"
TASTE_KINDS = ("image", "audio", "text")
# Which item attributes a taste of each kind fixes. "fine" tastes are narrower: an image taste
# and an audio taste each pick one of 24 combinations (6 colours x 4 shapes, 4 pitches x 2 tempos
# x 3 timbres), so neither modality is handed the easier task.
TASTES = {
    "coarse": {"image": (COLOUR,), "audio": (PITCH,), "text": (GENRE,)},
    "fine": {"image": (COLOUR, SHAPE), "audio": (PITCH, TEMPO, TIMBRE), "text": (GENRE,)},
}
TASTE_ATTRIBUTES = (GENRE, COLOUR, SHAPE, PITCH, TEMPO, TIMBRE)  # every attribute some taste fixes
ITEMS_FILE, INTERACTIONS_FILE = "items.parquet", "interactions.parquet"
USERS_FILE, MANIFEST_FILE = "users.parquet", "synthetic.json"
MEDIA_DIR = "media"
FORMAT_VERSION = 1  # bump when the drawing or rendering changes: reruns then regenerate all media

# Title words name no colour, shape, texture, pitch, tempo or timbre: text carries only the genre.
_ADJECTIVES = ("silent", "broken", "hidden", "last", "lost", "wild", "quiet", "distant", "hollow", "endless",
               "secret", "frozen", "northern", "restless", "forgotten", "little", "strange", "early", "final", "open")
_NOUNS = ("river", "city", "garden", "letter", "journey", "harbour", "mountain", "promise", "stranger", "kingdom",
          "window", "summer", "winter", "machine", "island", "bridge", "forest", "road", "station", "house")
_NAMED = ("{title}, a {genre} story", "{title} ({genre})", "A {genre} tale: {title}")
_UNNAMED = ("{title}", "{title}, a story", "A tale: {title}")
_EPOCH = 1_600_000_000  # seconds; interactions start in the 30 days after it
NOVELTY_DAYS = 7  # a new item's draw weight is boosted for this long after its release
RELEASE_SPAN_DAYS = 90  # new items are released over this many days after _EPOCH


def taste_column(attribute: str) -> str:
    """Column of the users table holding the preferred value of `attribute` (null: any)."""
    return f"taste_{attribute}"


def draw_items(
    n_items: int,
    seed: int,
    video_share: float = 0.1,
    text_informative: float = 0.5,
    audio_format_shares: tuple[float, float, float] = (0.8, 0.1, 0.1),
    with_video: bool = True,
) -> pl.DataFrame:
    """Draw the items of a multimodal catalog (no files are written).

    Args:
        n_items: number of items.
        seed: the only source of randomness.
        video_share: fraction of items (rounded to a count) that get a video.
        text_informative: probability that an item's text names its genre.
        audio_format_shares: shares of FLAC, WAV and Ogg Vorbis audio files.
        with_video: False leaves video_path null for every item (no video writer available).

    Returns:
        One row per item: item_id, text, image_path, audio_path, video_path (String; paths relative
        to the catalog folder, video_path null without a video) and the attribute columns of
        ATTRIBUTES (String), each drawn uniformly and independently.
    """
    rng = np.random.default_rng([seed, 0])
    width = max(5, len(str(n_items - 1)))
    ids = [f"i{i:0{width}d}" for i in range(n_items)]
    attributes = {
        name: [values[j] for j in rng.integers(len(values), size=n_items)] for name, values in ATTRIBUTES.items()
    }
    named = rng.random(n_items) < text_informative
    adjectives = rng.integers(len(_ADJECTIVES), size=n_items)
    nouns = rng.integers(len(_NOUNS), size=n_items)
    templates = rng.integers(len(_NAMED), size=n_items)
    texts = [
        (_NAMED if named[i] else _UNNAMED)[templates[i]].format(
            title=f"The {_ADJECTIVES[adjectives[i]]} {_NOUNS[nouns[i]]}".title(), genre=attributes[GENRE][i]
        )
        for i in range(n_items)
    ]
    shares = np.asarray(audio_format_shares, dtype=float)
    formats = rng.choice(len(AUDIO_FORMATS), size=n_items, p=shares / shares.sum())
    has_video = np.zeros(n_items, dtype=bool)
    has_video[rng.permutation(n_items)[: int(round(video_share * n_items))]] = True
    return pl.DataFrame(
        {
            schema.ITEM_ID: ids,
            schema.TEXT: texts,
            schema.IMAGE_PATH: [f"{MEDIA_DIR}/images/{i}.png" for i in ids],
            schema.AUDIO_PATH: [f"{MEDIA_DIR}/audio/{i}.{AUDIO_FORMATS[f]}" for i, f in zip(ids, formats, strict=True)],
            schema.VIDEO_PATH: [
                f"{MEDIA_DIR}/video/{i}.mp4" if v and with_video else None for i, v in zip(ids, has_video, strict=True)
            ],
            **attributes,
        },
        schema={name: pl.String for name in (schema.ITEM_ID, schema.TEXT, *schema.MEDIA_PATH_COLUMNS, *ATTRIBUTES)},
    )


def draw_users(
    n_users: int,
    seed: int,
    taste_shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    taste_detail: str = "coarse",
) -> pl.DataFrame:
    """Draw each user's latent taste: one kind (TASTE_KINDS, with `taste_shares`) and its values.

    Returns:
        One row per user: user_id, taste_kind, and taste_column(a) for every a in TASTE_ATTRIBUTES
        (String; the preferred value, null where the user's taste does not constrain a).
    """
    if taste_detail not in TASTES:
        raise ValueError(f"unknown taste_detail {taste_detail!r}; expected one of {sorted(TASTES)}")
    rng = np.random.default_rng([seed, 1])
    shares = np.asarray(taste_shares, dtype=float)
    kinds = rng.choice(len(TASTE_KINDS), size=n_users, p=shares / shares.sum())
    columns: dict[str, list[str | None]] = {taste_column(a): [None] * n_users for a in TASTE_ATTRIBUTES}
    for u, kind in enumerate(kinds):
        for attribute in TASTES[taste_detail][TASTE_KINDS[kind]]:
            values = ATTRIBUTES[attribute]
            columns[taste_column(attribute)][u] = values[rng.integers(len(values))]
    width = max(5, len(str(n_users - 1)))
    return pl.DataFrame(
        {
            schema.USER_ID: [f"u{u:0{width}d}" for u in range(n_users)],
            TASTE_KIND: [TASTE_KINDS[k] for k in kinds],
            **columns,
        },
        schema={schema.USER_ID: pl.String, TASTE_KIND: pl.String, **{c: pl.String for c in columns}},
    )


def taste_matches(items: pl.DataFrame, users: pl.DataFrame) -> np.ndarray:
    """bool (n_users, n_items): whether each item has every attribute value the user's taste fixes."""
    match = np.ones((users.height, items.height), dtype=bool)
    for attribute in TASTE_ATTRIBUTES:
        values = ATTRIBUTES[attribute]
        code = {v: k for k, v in enumerate(values)}
        item_codes = np.array([code[v] for v in items[attribute]])
        wanted = np.array([-1 if v is None else code[v] for v in users[taste_column(attribute)]])
        match &= (wanted[:, None] == -1) | (wanted[:, None] == item_codes[None, :])
    return match


def draw_interactions(
    items: pl.DataFrame,
    users: pl.DataFrame,
    seed: int,
    interactions_per_user: tuple[int, int] = (10, 40),
    taste_share: float = 0.8,
    popularity_exponent: float = 0.8,
    new_item_share: float = 0.3,
    novelty_boost: float = 8.0,
) -> pl.DataFrame:
    """Draw timestamped, rated interactions from popularity, novelty and the users' planted tastes.

    Item popularity is Zipf-like, 1 / rank**popularity_exponent over a random order of items. The
    catalog grows: `new_item_share` of the items are released during the period (the rest exist
    from the start), and an item's draw weight is multiplied by `novelty_boost` in its first
    NOVELTY_DAYS. So a user's latest interactions often go to items with little history, as in a
    real catalog, and only content can place those. A user draws items without repeats, each from
    the items released by then, with probability proportional to popularity * novelty * (1 +
    strength) for items matching their taste, where strength is solved per user so that a draw
    matches with probability about `taste_share` (never below the popularity-weighted base rate).
    Timestamps increase per user by 10 minutes to 2 days; matching items are rated 3-5, others 1-3.

    Returns:
        schema.INTERACTIONS frame, grouped by user in time order.
    """
    rng = np.random.default_rng([seed, 2])
    n_items = items.height
    popularity = (1.0 / np.arange(1, n_items + 1) ** popularity_exponent)[rng.permutation(n_items)]
    release = release_times(n_items, seed, new_item_share)
    matches = taste_matches(items, users)
    low, high = interactions_per_user
    item_ids = items[schema.ITEM_ID].to_list()
    user_col, item_col, time_col, rating_col = [], [], [], []
    for u, user_id in enumerate(users[schema.USER_ID]):
        match = matches[u]
        in_taste, elsewhere = popularity[match].sum(), popularity[~match].sum()
        boost = max(taste_share * elsewhere / ((1 - taste_share) * in_taste), 1.0) if in_taste > 0 else 1.0
        weights = popularity * np.where(match, boost, 1.0)
        count = min(int(rng.integers(low, high + 1)), n_items)
        start = _EPOCH + int(rng.integers(0, 30 * 86_400))
        times = start + np.cumsum(rng.integers(600, 2 * 86_400, size=count))
        picks = []
        available = np.ones(n_items, dtype=bool)
        for t in times:
            age = t - release
            w = weights * (age >= 0) * available * np.where(age < NOVELTY_DAYS * 86_400, novelty_boost, 1.0)
            if w.sum() <= 0:
                break
            pick = int(rng.choice(n_items, p=w / w.sum()))
            available[pick] = False
            picks.append(pick)
        picks = np.asarray(picks, dtype=np.int64)
        user_col += [user_id] * len(picks)
        item_col += [item_ids[i] for i in picks]
        time_col += times[: len(picks)].tolist()
        rating_col += np.where(match[picks], rng.integers(3, 6, size=len(picks)), rng.integers(1, 4, size=len(picks))).tolist()
    return pl.DataFrame(
        {schema.USER_ID: user_col, schema.ITEM_ID: item_col, schema.TIMESTAMP: time_col, schema.RATING: rating_col},
        schema=schema.INTERACTIONS,
    )


def release_times(n_items: int, seed: int, new_item_share: float) -> np.ndarray:
    """int64 (n_items,) release timestamps: most items exist before the period starts, the
    `new_item_share` others arrive uniformly over RELEASE_SPAN_DAYS."""
    rng = np.random.default_rng([seed, 3])
    release = np.full(n_items, _EPOCH - NOVELTY_DAYS * 86_400, dtype=np.int64)
    new = rng.random(n_items) < new_item_share
    release[new] = _EPOCH + rng.integers(0, RELEASE_SPAN_DAYS * 86_400, size=int(new.sum()))
    return release


def generate_multimodal_catalog(
    folder: Path,
    n_items: int = 200,
    n_users: int = 150,
    seed: int = 0,
    video_share: float = 0.1,
    *,
    taste_shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    taste_detail: str = "coarse",
    taste_share: float = 0.8,
    interactions_per_user: tuple[int, int] = (10, 40),
    popularity_exponent: float = 0.8,
    new_item_share: float = 0.3,
    novelty_boost: float = 8.0,
    text_informative: float = 0.5,
    audio_format_shares: tuple[float, float, float] = (0.8, 0.1, 0.1),
    workers: int = 1,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write a multimodal catalog with planted tastes into `folder`, in the format a user supplies.

    Writes `items.parquet` and `interactions.parquet` (schema.ITEMS / schema.INTERACTIONS plus the
    attribute columns of ATTRIBUTES), media under `media/` (64x64 PNGs; 1.5-2 s 16 kHz mono FLAC,
    WAV or Ogg Vorbis clips; for `video_share` of the items an 8 fps 64x64 MP4 whose audio track is
    the item's clip), the true tastes in `users.parquet` (see `draw_users`) and the arguments in
    `synthetic.json`. Every file is written atomically; the tables come last, so a folder without
    `interactions.parquet` is an unfinished generation.

    Rerunning into the same folder with the same arguments keeps the media files already there
    (each is complete, being written atomically) and writes the rest: an interrupted run resumes.
    With other arguments, the folder's earlier media and tables are deleted first. A folder that
    holds a catalog not made by this function is refused.

    Args:
        folder: output folder (created).
        n_items, n_users: sizes.
        seed: the only source of randomness; the same arguments give byte-identical files.
        video_share: fraction of items with a video; without PyAV (`av`) no item has one and a
            warning is logged.
        taste_shares: shares of users whose taste is of kind image, audio, text (TASTE_KINDS).
        taste_detail: "coarse" (colour / pitch / genre) or "fine" (colour x shape / pitch x tempo /
            genre), see TASTES.
        taste_share: expected fraction of a user's interactions on items matching their taste.
        interactions_per_user: inclusive range of each user's number of interactions.
        popularity_exponent: Zipf exponent of item popularity.
        new_item_share, novelty_boost: catalog growth, see `draw_interactions`.
        text_informative: probability that an item's text names its genre.
        audio_format_shares: shares of FLAC, WAV and Ogg audio files.
        workers: processes rendering media (spawned); 1 renders in this process.

    Returns:
        (items, interactions) exactly as written.

    Raises:
        FileExistsError: `folder` holds tables or media but no `synthetic.json`.
        ValueError: an argument out of range.
    """
    _check_arguments(n_items, n_users, video_share, taste_share, interactions_per_user, taste_detail)
    folder = Path(folder)
    with_video = video_share > 0 and _video_writer_available()
    manifest = {
        "generator": "fuserank.data.synthetic.generate_multimodal_catalog",
        "format": FORMAT_VERSION,
        "n_items": n_items,
        "n_users": n_users,
        "seed": seed,
        "video_share": video_share,
        "with_video": with_video,
        "taste_shares": list(taste_shares),
        "taste_detail": taste_detail,
        "taste_share": taste_share,
        "interactions_per_user": list(interactions_per_user),
        "popularity_exponent": popularity_exponent,
        "new_item_share": new_item_share,
        "novelty_boost": novelty_boost,
        "text_informative": text_informative,
        "audio_format_shares": list(audio_format_shares),
    }
    _prepare_folder(folder, manifest)
    items = draw_items(n_items, seed, video_share, text_informative, audio_format_shares, with_video)
    users = draw_users(n_users, seed, taste_shares, taste_detail)
    interactions = draw_interactions(
        items, users, seed, interactions_per_user, taste_share, popularity_exponent, new_item_share, novelty_boost
    )
    write_all_media(_media_jobs(items, seed, folder), workers)
    atomic.write_parquet(folder / USERS_FILE, users)
    atomic.write_parquet(folder / ITEMS_FILE, items)
    atomic.write_parquet(folder / INTERACTIONS_FILE, interactions)
    return items, interactions


def _check_arguments(
    n_items: int, n_users: int, video_share: float, taste_share: float, per_user: tuple[int, int], taste_detail: str
) -> None:
    if n_items < 1 or n_users < 1:
        raise ValueError(f"n_items and n_users must be positive, got {n_items} and {n_users}")
    if not 0.0 <= video_share <= 1.0:
        raise ValueError(f"video_share must be in [0, 1], got {video_share}")
    if not 0.0 < taste_share < 1.0:
        raise ValueError(f"taste_share must be in (0, 1), got {taste_share}")
    if not 1 <= per_user[0] <= per_user[1]:
        raise ValueError(f"interactions_per_user must be (low, high) with 1 <= low <= high, got {per_user}")
    if taste_detail not in TASTES:
        raise ValueError(f"unknown taste_detail {taste_detail!r}; expected one of {sorted(TASTES)}")


def _video_writer_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        logger.warning("PyAV (package `av`) is not installed: the synthetic catalog has no videos (video_path is null)")
        return False
    return True


def _prepare_folder(folder: Path, manifest: dict) -> None:
    """Keep the folder's media when it was made with the same arguments, else clear our files."""
    path = folder / MANIFEST_FILE
    ours = (ITEMS_FILE, INTERACTIONS_FILE, USERS_FILE, MEDIA_DIR)
    if path.exists():
        if json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(manifest)):
            return
        logger.info("%s was generated with other arguments: regenerating it", folder)
        shutil.rmtree(folder / MEDIA_DIR, ignore_errors=True)
        for name in (ITEMS_FILE, INTERACTIONS_FILE, USERS_FILE):
            (folder / name).unlink(missing_ok=True)
    elif any((folder / name).exists() for name in ours):
        raise FileExistsError(
            f"{folder} holds a catalog that generate_multimodal_catalog did not write; refusing to overwrite it"
        )
    atomic.write_json(path, manifest)


def _media_jobs(items: pl.DataFrame, seed: int, folder: Path) -> list[dict]:
    keep = [schema.IMAGE_PATH, schema.AUDIO_PATH, schema.VIDEO_PATH, COLOUR, SHAPE, TEXTURE, PITCH, TEMPO, TIMBRE]
    rows = items.select(keep).iter_rows(named=True)
    return [{"folder": folder, "seed": seed, "index": i, **row} for i, row in enumerate(rows)]
