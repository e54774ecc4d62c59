"""The synthetic multimodal catalog: format, planted media attributes, planted tastes, determinism, resume."""

from __future__ import annotations

import logging
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile
from PIL import Image

from fuserank import schema
from fuserank.data import synthetic
from fuserank.data.catalog import load_catalog
from fuserank.data.synthetic import (
    ATTRIBUTES,
    COLOUR,
    GENRE,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    PITCH,
    SHAPE,
    TASTE_KIND,
    TEMPO,
    TIMBRE,
    USERS_FILE,
    draw_interactions,
    draw_items,
    draw_users,
    generate_multimodal_catalog,
    taste_column,
    taste_matches,
)
from fuserank.data.synthetic_media import COLOURS, FPS, PITCHES, SAMPLE_RATE

TINY = {"n_items": 60, "n_users": 40, "video_share": 0.1}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The same tiny catalog generated twice with seed 0, and once with seed 1."""
    root = tmp_path_factory.mktemp("synthetic")
    first = generate_multimodal_catalog(root / "a", seed=0, **TINY)
    second = generate_multimodal_catalog(root / "b", seed=0, **TINY)
    other = generate_multimodal_catalog(root / "c", seed=1, **TINY)
    return root, first, second, other


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hue_of_saturated_pixels(rgb: np.ndarray) -> tuple[float, int]:
    """Circular mean hue (degrees) of the clearly coloured pixels, and how many there are."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=float)
    coloured = (hsv[..., 1] > 0.4 * 255) & (hsv[..., 2] > 0.25 * 255)
    angles = hsv[..., 0][coloured] / 256.0 * 2 * np.pi
    return float(np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360), int(coloured.sum())


def _hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_files_and_schema_are_the_user_catalog_format(tiny):
    root, (items, interactions), _, _ = tiny
    folder = root / "a"
    assert all((folder / name).is_file() for name in (ITEMS_FILE, INTERACTIONS_FILE, USERS_FILE))
    expected = [schema.ITEM_ID, schema.TEXT, *schema.MEDIA_PATH_COLUMNS, *ATTRIBUTES]
    assert items.columns == expected
    assert all(dtype == pl.String for dtype in items.dtypes)
    assert dict(interactions.schema) == schema.INTERACTIONS
    assert pl.read_parquet(folder / ITEMS_FILE).equals(items)
    assert pl.read_parquet(folder / INTERACTIONS_FILE).equals(interactions)
    loaded_items, loaded_interactions = load_catalog(folder / ITEMS_FILE, folder / INTERACTIONS_FILE)
    assert loaded_items.height == 60 and loaded_interactions.height == interactions.height

    assert items[schema.IMAGE_PATH].null_count() == 0 and items[schema.AUDIO_PATH].null_count() == 0
    assert items[schema.VIDEO_PATH].drop_nulls().len() == 6  # round(0.1 * 60)
    for column in schema.MEDIA_PATH_COLUMNS:
        for relative in items[column].drop_nulls():
            assert not Path(relative).is_absolute() and ".." not in Path(relative).parts
            assert (folder / relative).resolve().is_relative_to(folder.resolve())
            assert (folder / relative).is_file()
    suffixes = {Path(p).suffix for p in items[schema.AUDIO_PATH]}
    assert suffixes == {".flac", ".wav", ".ogg"}
    assert not list(folder.rglob("*.tmp")), "no temporary files left behind"


def test_images_show_the_planted_colour(tiny):
    root, (items, _), _, _ = tiny
    for row in items.iter_rows(named=True):
        image = Image.open(root / "a" / row[schema.IMAGE_PATH])
        assert image.size == (64, 64) and image.mode == "RGB"
        hue, n_coloured = _hue_of_saturated_pixels(np.asarray(image))
        assert n_coloured > 0.05 * 64 * 64, row[schema.ITEM_ID]
        assert _hue_distance(hue, COLOURS[row[COLOUR]]) < 15, (row[schema.ITEM_ID], row[COLOUR], hue)
    # jitter and noise: no two images are the same, even with equal colour, shape and texture
    images = [(root / "a" / p).read_bytes() for p in items[schema.IMAGE_PATH]]
    assert len(set(images)) == len(images)


def test_audio_has_the_planted_pitch_register(tiny):
    root, (items, _), _, _ = tiny
    for row in items.iter_rows(named=True):
        samples, rate = soundfile.read(root / "a" / row[schema.AUDIO_PATH], dtype="float32")
        assert rate == SAMPLE_RATE and samples.ndim == 1
        assert 1.5 <= samples.size / rate <= 2.05
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
        dominant = np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()]
        centre = PITCHES[row[PITCH]]
        # registers are an octave apart and an item is within 3 semitones of its centre
        assert centre * 2 ** (-3.5 / 12) < dominant < centre * 2 ** (3.5 / 12), (row[schema.AUDIO_PATH], dominant)


def test_videos_decode_with_frames_and_the_items_audio(tiny):
    av = pytest.importorskip("av")
    root, (items, _), _, _ = tiny
    videos = items.filter(pl.col(schema.VIDEO_PATH).is_not_null())
    assert videos.height == 6
    for row in videos.iter_rows(named=True):
        samples, _ = soundfile.read(root / "a" / row[schema.AUDIO_PATH])
        with av.open(str(root / "a" / row[schema.VIDEO_PATH])) as container:
            assert [s.type for s in container.streams] == ["video", "audio"]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        with av.open(str(root / "a" / row[schema.VIDEO_PATH])) as container:
            sound = [f for f in container.decode(audio=0)]
        assert len(frames) == round(samples.size / SAMPLE_RATE * FPS)
        assert frames[0].shape == (64, 64, 3)
        assert sound[0].sample_rate == SAMPLE_RATE
        assert abs(sum(f.samples for f in sound) - samples.size) <= 2048  # AAC frames of 1024 samples
        hue, _ = _hue_of_saturated_pixels(frames[len(frames) // 2])
        assert _hue_distance(hue, COLOURS[row[COLOUR]]) < 20


def test_text_names_the_genre_only_sometimes_and_never_media_attributes(tiny):
    _, (items, _), _, _ = tiny
    media_words = {w for name, values in ATTRIBUTES.items() if name != GENRE for v in values for w in v.split()}
    genres = set(ATTRIBUTES[GENRE])
    named = 0
    for text, genre in items.select(schema.TEXT, GENRE).iter_rows():
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert not words & media_words, text
        assert words & genres <= {genre}, "text never names another genre"
        named += genre in words
    assert 0.25 < named / items.height < 0.75


def test_same_seed_gives_identical_files_other_seed_differs(tiny):
    root, (items, interactions), (items_again, interactions_again), (items_other, interactions_other) = tiny
    assert items.equals(items_again) and interactions.equals(interactions_again)
    first, second = _files(root / "a"), _files(root / "b")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert any(p.endswith(".ogg") for p in first) and any(p.endswith(".mp4") for p in first)

    assert not items.equals(items_other) and not interactions.equals(interactions_other)
    other = _files(root / "c")
    assert (root / "a" / items[schema.IMAGE_PATH][0]).read_bytes() != other[items[schema.IMAGE_PATH][0]]


def test_parallel_cli_writes_the_same_bytes_as_one_process(tmp_path, capsys, monkeypatch):
    args = {"n_items": 12, "n_users": 8, "video_share": 0.25}
    generate_multimodal_catalog(tmp_path / "serial", seed=4, **args)
    argv = ["make_synthetic_catalog.py", str(tmp_path / "cli"), "--items", "12", "--users", "8", "--seed", "4",
            "--video-share", "0.25", "--workers", "2", "--quiet"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "pipelines" / "make_synthetic_catalog.py"), run_name="__main__")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "12 items, 3 with video" in out and " s" in out
    assert _files(tmp_path / "serial") == _files(tmp_path / "cli")


@pytest.mark.parametrize("kind, attribute", [("image", COLOUR), ("audio", PITCH), ("text", GENRE)])
def test_planted_taste_dominates_each_kind_of_user(kind, attribute):
    items = draw_items(600, seed=2)
    users = draw_users(300, seed=2)
    interactions = draw_interactions(items, users, seed=2, taste_share=0.8)
    joined = interactions.join(users, on=schema.USER_ID).join(items, on=schema.ITEM_ID)
    of_kind = joined.filter(pl.col(TASTE_KIND) == kind)
    share = (of_kind[attribute] == of_kind[taste_column(attribute)]).mean()
    base_rate = 1 / len(ATTRIBUTES[attribute])
    assert of_kind[schema.USER_ID].n_unique() > 60
    assert 0.7 < share < 0.85, (kind, share)
    # the other kinds' users choose this attribute at about its base rate: the taste shows in one modality
    others = joined.filter(pl.col(TASTE_KIND) != kind)
    per_value = others.group_by(schema.USER_ID, attribute).len()
    favourite = per_value.group_by(schema.USER_ID).agg(pl.col("len").max() / pl.col("len").sum())
    assert favourite["len"].mean() < 0.5 < share and share > 2.5 * base_rate


def test_taste_matches_and_fine_tastes():
    items = draw_items(800, seed=5)
    users = draw_users(200, seed=5, taste_shares=(1, 1, 0), taste_detail="fine")
    assert set(users[TASTE_KIND]) == {"image", "audio"}
    image_user = users.filter(pl.col(TASTE_KIND) == "image").row(0, named=True)
    match = taste_matches(items, users.filter(pl.col(schema.USER_ID) == image_user[schema.USER_ID]))[0]
    expected = (items[COLOUR] == image_user[taste_column(COLOUR)]) & (items[SHAPE] == image_user[taste_column(SHAPE)])
    assert match.tolist() == expected.to_list() and 0 < match.sum() < 800 / 12
    assert image_user[taste_column(PITCH)] is None
    audio_user = users.filter(pl.col(TASTE_KIND) == "audio").row(0, named=True)
    assert all(audio_user[taste_column(a)] is not None for a in (PITCH, TEMPO, TIMBRE))

    interactions = draw_interactions(items, users, seed=5, interactions_per_user=(5, 15), taste_share=0.6)
    matched = taste_matches(items, users)
    user_row = {u: i for i, u in enumerate(users[schema.USER_ID])}
    item_row = {x: i for i, x in enumerate(items[schema.ITEM_ID])}
    pairs = interactions.select(schema.USER_ID, schema.ITEM_ID).iter_rows()
    hits = [matched[user_row[u], item_row[i]] for u, i in pairs]
    assert 0.5 < np.mean(hits) < 0.7


def test_interactions_are_well_formed_and_popularity_is_skewed():
    items = draw_items(500, seed=3)
    users = draw_users(200, seed=3)
    interactions = draw_interactions(items, users, seed=3, interactions_per_user=(10, 40))
    assert interactions[schema.ITEM_ID].is_in(items[schema.ITEM_ID].implode()).all()
    assert interactions.select(schema.USER_ID, schema.ITEM_ID).is_duplicated().sum() == 0
    by_user = interactions.group_by(schema.USER_ID, maintain_order=True)
    steps = by_user.agg(pl.col(schema.TIMESTAMP).diff().drop_nulls().min())
    assert steps[schema.TIMESTAMP].min() >= 600
    counts = interactions.group_by(schema.USER_ID).len()["len"]
    assert counts.min() >= 10 and counts.max() <= 40 and interactions[schema.USER_ID].n_unique() == 200
    assert set(interactions[schema.RATING].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    per_item = np.sort(interactions.group_by(schema.ITEM_ID).len()["len"].to_numpy())[::-1]
    assert per_item[:50].sum() > 0.3 * per_item.sum()  # top 10% of items take over 30% of interactions


def test_the_written_tastes_match_the_interactions(tiny):
    root, (items, interactions), _, _ = tiny
    users = pl.read_parquet(root / "a" / USERS_FILE)
    assert users.height == 40 and set(users[TASTE_KIND]) == {"image", "audio", "text"}
    joined = interactions.join(users, on=schema.USER_ID).join(items, on=schema.ITEM_ID)
    image_users = joined.filter(pl.col(TASTE_KIND) == "image")
    # 60 items hold only ~10 of a colour, and new items are released over time, so the share
    # saturates well below 0.8 here; it must still stand well above the base rate of 1/6
    assert (image_users[COLOUR] == image_users[taste_column(COLOUR)]).mean() > 1.5 / 6


def test_rerun_resumes_an_interrupted_generation_and_regenerates_on_new_arguments(tmp_path):
    args = {"n_items": 10, "n_users": 6, "video_share": 0.2}
    folder = tmp_path / "cat"
    items, _ = generate_multimodal_catalog(folder, seed=0, **args)
    before = _files(folder)
    kept = folder / items[schema.AUDIO_PATH][1]
    kept_mtime = kept.stat().st_mtime_ns
    (folder / items[schema.IMAGE_PATH][0]).unlink()  # as if interrupted before these were written
    (folder / INTERACTIONS_FILE).unlink()
    generate_multimodal_catalog(folder, seed=0, **args)
    assert _files(folder) == before
    assert kept.stat().st_mtime_ns == kept_mtime, "complete files are not rewritten"

    generate_multimodal_catalog(folder, seed=9, **args)
    generate_multimodal_catalog(tmp_path / "fresh", seed=9, **args)
    after = _files(folder)
    assert after[items[schema.IMAGE_PATH][0]] != before[items[schema.IMAGE_PATH][0]]
    assert after == _files(tmp_path / "fresh"), "new arguments leave no stale file behind"


def test_refuses_a_folder_holding_someone_elses_catalog(tmp_path):
    (tmp_path / ITEMS_FILE).write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        generate_multimodal_catalog(tmp_path, n_items=5, n_users=3)
    assert (tmp_path / ITEMS_FILE).read_bytes() == b"not ours"


def test_without_pyav_no_item_has_a_video_and_one_warning_is_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with caplog.at_level(logging.WARNING, logger=synthetic.__name__):
        items, _ = generate_multimodal_catalog(tmp_path, n_items=10, n_users=5, video_share=0.5)
    assert items[schema.VIDEO_PATH].null_count() == 10
    assert not (tmp_path / "media" / "video").exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "av" in warnings[0].getMessage()


def test_arguments_out_of_range_are_refused(tmp_path):
    with pytest.raises(ValueError, match="taste_detail"):
        generate_multimodal_catalog(tmp_path / "x", n_items=5, n_users=3, taste_detail="medium")
    with pytest.raises(ValueError, match="video_share"):
        generate_multimodal_catalog(tmp_path / "y", n_items=5, n_users=3, video_share=1.5)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_new_items_arrive_over_time_and_are_drawn_when_fresh():
    from fuserank.data.synthetic import NOVELTY_DAYS, draw_items, draw_users, release_times

    items = draw_items(400, 0, 0.0, 0.5, (1.0, 0.0, 0.0), False)
    users = draw_users(300, 0, (1 / 3, 1 / 3, 1 / 3), "coarse")
    interactions = draw_interactions(items, users, seed=0, new_item_share=0.3, novelty_boost=8.0)
    release = release_times(400, 0, 0.3)
    row = {item: i for i, item in enumerate(items[schema.ITEM_ID])}
    rows = np.array([row[i] for i in interactions[schema.ITEM_ID]])
    age = interactions[schema.TIMESTAMP].to_numpy() - release[rows]
    assert (age >= 0).all()  # nobody meets an item before its release
    new = release > release.min()
    assert 0.2 < new.mean() < 0.4
    fresh_share = ((age < NOVELTY_DAYS * 86_400) & new[rows]).mean()
    flat = draw_interactions(items, users, seed=0, new_item_share=0.3, novelty_boost=1.0)
    rows = np.array([row[i] for i in flat[schema.ITEM_ID]])
    flat_age = flat[schema.TIMESTAMP].to_numpy() - release[rows]
    flat_share = ((flat_age < NOVELTY_DAYS * 86_400) & new[rows]).mean()
    assert fresh_share > 2.5 * flat_share  # the novelty boost sends draws to items in their first week
