"""Image encoders: a tiny open_clip model loaded from a saved checkpoint, and the weight-free descriptor."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageDraw, ImageFile

from fuserank import progress, schema
from fuserank.config import ImageConfig
from fuserank.encoders.image import (
    NO_WEIGHTS_MESSAGE,
    ClipImageEncoder,
    ClipLoadError,
    make_image_encoder,
)
from fuserank.encoders.image_descriptor import DESCRIPTOR_BLOCKS, DESCRIPTOR_DIM, DescriptorImageEncoder, describe_image
from fuserank.encoders.image_files import load_image
from fuserank.data.media import MediaError
from fuserank.data.sources import SourceError

from tiny_models import TINY_CLIP, save_tiny_clip

RED, BLUE = (220, 20, 30), (20, 40, 210)
BOXES = [(20, 20, 100, 90), (60, 30, 150, 110), (10, 10, 80, 60), (40, 40, 120, 100)]


def shape(colour: tuple[int, int, int], kind: str, box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", (160, 120), "white")
    getattr(ImageDraw.Draw(image), kind)(box, fill=colour)
    return image


def stripes(horizontal: bool, period: int) -> Image.Image:
    """Black and white stripes of `period` pixels, 160 x 120."""
    bands = np.arange(120 if horizontal else 160) // period % 2 * 255
    pixels = np.broadcast_to(bands[:, None] if horizontal else bands[None, :], (120, 160)).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def groups() -> dict[str, list[Image.Image]]:
    kinds = ["ellipse", "rectangle", "ellipse", "rectangle"]
    return {
        "red": [shape(RED, k, b) for k, b in zip(kinds, BOXES)],
        "blue": [shape(BLUE, k, b) for k, b in zip(kinds[::-1], BOXES)],
        "stripes": [stripes(True, 4), stripes(False, 6), stripes(True, 9), stripes(False, 3)],
    }


def items_frame(ids: list[str], paths: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({schema.ITEM_ID: ids, schema.IMAGE_PATH: paths},
                        schema={schema.ITEM_ID: pl.String, schema.IMAGE_PATH: pl.String})


def write_catalog(root: Path) -> pl.DataFrame:
    """Six images (two of them byte-identical) and one item without an image."""
    root.mkdir(parents=True, exist_ok=True)
    images = groups()
    images["red"][0].save(root / "r0.png")
    images["red"][0].save(root / "r0-copy.png")
    images["blue"][1].save(root / "b1.jpg", quality=95)
    images["stripes"][0].save(root / "s0.png")
    (root / "sub").mkdir(exist_ok=True)
    images["red"][2].save(root / "sub" / "r2.webp")
    Image.new("RGBA", (40, 30), (0, 0, 255, 0)).save(root / "transparent.png")
    return items_frame(["a", "b", "c", "d", "e", "f", "g"],
                       ["r0.png", "b1.jpg", None, "s0.png", "sub/r2.webp", "r0-copy.png", "transparent.png"])


def count_calls(encoder) -> list[int]:
    """Wrap the encoder's batch step (model forward / descriptor stacking); records batch sizes."""
    calls: list[int] = []
    inner = encoder._embed

    def counted(prepared):
        calls.append(len(prepared))
        return inner(prepared)

    encoder._embed = counted
    return calls


def cosine_means(vectors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cosine over pairs within a label (no self pairs) and across labels."""
    sims = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(sims[same & off_diagonal].mean()), float(sims[~same].mean())


# --- tiny open_clip model saved as a checkpoint ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, object]:
    """(checkpoint path, the in-memory model it was saved from)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def reference_embeddings(model, images: list[Image.Image]) -> np.ndarray:
    """The in-memory model, one image at a time, with open_clip's own eval transform."""
    import open_clip
    import torch

    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    with torch.no_grad():
        rows = [model.encode_image(preprocess(image).unsqueeze(0))[0] for image in images]
    out = torch.stack(rows).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_clip_encoder_loads_the_checkpoint_and_matches_the_in_memory_model(tiny_clip, tmp_path):
    import open_clip
    import torch

    checkpoint, model = tiny_clip
    images = [image for group in groups().values() for image in group[:2]]
    encoder = ClipImageEncoder(tmp_path, TINY_CLIP, checkpoint, batch_size=4, device="cpu")
    assert encoder.name == "image" and encoder.dim == 16
    vectors = encoder.encode_images(images)
    assert vectors.dtype == np.float32 and vectors.shape == (len(images), 16)
    expected = reference_embeddings(model, images)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # a model with other random weights gives other vectors, so the match above means "loaded"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        other = open_clip.create_model(TINY_CLIP, pretrained=None).eval()
    assert np.abs(reference_embeddings(other, images) - expected).max() > 0.1


def test_clip_encode_caches_by_file_content_and_skips_the_model_on_a_second_run(tiny_clip, tmp_path):
    checkpoint, _ = tiny_clip
    items = write_catalog(tmp_path / "catalog")
    first = ClipImageEncoder(tmp_path / "catalog", TINY_CLIP, checkpoint, batch_size=2, device="cpu",
                             cache_dir=tmp_path / "cache")
    calls = count_calls(first)
    embeddings = first.encode(items)
    # 6 paths, 5 distinct files: the byte-identical copy is embedded once
    assert sum(calls) == 5 and embeddings.mask.tolist() == [True, True, False, True, True, True, True]
    np.testing.assert_array_equal(embeddings.vectors[0], embeddings.vectors[5])
    np.testing.assert_allclose(np.linalg.norm(embeddings.vectors[embeddings.mask], axis=1), 1.0, rtol=1e-5)

    second = ClipImageEncoder(tmp_path / "catalog", TINY_CLIP, str(checkpoint), batch_size=2, device="cpu",
                              cache_dir=tmp_path / "cache")
    assert second.fingerprint == first.fingerprint
    again_calls = count_calls(second)
    again = second.encode(items)
    assert again_calls == []
    np.testing.assert_array_equal(again.vectors, embeddings.vectors)
    np.testing.assert_array_equal(again.mask, embeddings.mask)


def test_clip_pretrained_tag_that_cannot_be_loaded_gives_an_error_naming_it(tiny_clip, tmp_path):
    with pytest.raises(ClipLoadError, match="no-such-tag") as caught:
        ClipImageEncoder(tmp_path, TINY_CLIP, "no-such-tag", device="cpu")
    assert "model hub" in str(caught.value) and TINY_CLIP in str(caught.value)
    with pytest.raises(ClipLoadError, match="no such file"):
        ClipImageEncoder(tmp_path, TINY_CLIP, tmp_path / "missing.pt", device="cpu")


def test_make_image_encoder_builds_clip_from_a_checkpoint_path(tiny_clip, tmp_path):
    checkpoint, model = tiny_clip
    config = ImageConfig(encoder="auto", clip_model=TINY_CLIP, clip_weights=str(checkpoint), device="cpu")
    encoder = make_image_encoder(config, tmp_path, None, sources_cache=tmp_path / "sources")
    assert isinstance(encoder, ClipImageEncoder)
    image = shape(RED, "ellipse", BOXES[0])
    np.testing.assert_allclose(encoder.encode_images([image]), reference_embeddings(model, [image]), atol=1e-5)
    clip = make_image_encoder(ImageConfig(encoder="clip", clip_model=TINY_CLIP, clip_weights=f"file:{checkpoint}",
                                          device="cpu"), tmp_path, None, sources_cache=tmp_path / "sources")
    assert clip.fingerprint == encoder.fingerprint


# --- factory ---------------------------------------------------------------------------------------

def test_make_image_encoder_auto_without_weights_says_it_uses_the_descriptor(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="fuserank.encoders.image"):
        encoder = make_image_encoder(ImageConfig(), tmp_path, None)
    assert isinstance(encoder, DescriptorImageEncoder)
    assert capsys.readouterr().err.count(NO_WEIGHTS_MESSAGE) == 1
    assert [r.getMessage() for r in caplog.records] == [NO_WEIGHTS_MESSAGE]
    progress.set_quiet(True)
    try:
        make_image_encoder(ImageConfig(), tmp_path, None)
    finally:
        progress.set_quiet(False)
    assert NO_WEIGHTS_MESSAGE not in capsys.readouterr().err
    # asked for by name: no message
    assert isinstance(make_image_encoder(ImageConfig(encoder="descriptor"), tmp_path, None), DescriptorImageEncoder)
    assert capsys.readouterr().err == ""


def test_make_image_encoder_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="clip_weights"):
        make_image_encoder(ImageConfig(encoder="clip"), tmp_path, None)
    with pytest.raises(ValueError, match="'vit'"):
        make_image_encoder(ImageConfig(encoder="vit"), tmp_path, None)
    with pytest.raises(SourceError, match="missing.pt"):
        make_image_encoder(ImageConfig(clip_weights=str(tmp_path / "missing.pt")), tmp_path, None, tmp_path)


# --- descriptor ------------------------------------------------------------------------------------

def test_descriptor_of_a_flat_red_image_matches_hand_computed_blocks():
    vector = describe_image(Image.new("RGB", (50, 30), (255, 0, 0)), size=32)
    assert vector.shape == (DESCRIPTOR_DIM,) and vector.dtype == np.float32
    colour = np.zeros(52)
    colour[3] = 1.0  # hue bin 0, saturation >= 0.6, value >= 0.6
    np.testing.assert_allclose(vector[DESCRIPTOR_BLOCKS["colour"]], colour, atol=1e-6)
    np.testing.assert_allclose(vector[DESCRIPTOR_BLOCKS["hue"]], np.eye(12)[0], atol=1e-6)
    # sRGB red is CIE Lab (53.24, 80.09, 67.20); every one of the 16 cells holds it
    cell = np.array([(53.24 - 50) / 50, 0.8009, 0.6720]) / np.sqrt(48)
    np.testing.assert_allclose(vector[DESCRIPTOR_BLOCKS["layout"]], np.tile(cell, 16), atol=1e-4)
    # no edges anywhere; every pixel is a flat LBP pattern (label 0), weighted 0.5
    np.testing.assert_array_equal(vector[DESCRIPTOR_BLOCKS["orientation"]], 0.0)
    np.testing.assert_array_equal(vector[DESCRIPTOR_BLOCKS["edge_density"]], 0.0)
    np.testing.assert_allclose(vector[DESCRIPTOR_BLOCKS["texture"]], 0.5 * np.eye(10)[0], atol=1e-6)
    np.testing.assert_array_equal(vector[DESCRIPTOR_BLOCKS["outline"]], 0.0)  # no object stands out


def test_descriptor_groups_images_by_colour_and_texture():
    encoder = DescriptorImageEncoder(Path("."))
    images = groups()
    vectors = encoder.encode_images([image for group in images.values() for image in group])
    labels = np.repeat(np.arange(3), 4)
    within, across = cosine_means(vectors, labels)
    assert within > across + 0.2
    for g in range(3):  # every group, not just on average
        rows = labels == g
        assert (vectors[rows] @ vectors[rows].T).mean() > (vectors[rows] @ vectors[~rows].T).mean() + 0.1
    # red-vs-blue alone (same shapes, same white background) is still told apart
    red_blue = vectors[:8]
    within, across = cosine_means(red_blue, labels[:8])
    assert within > across + 0.2


def test_edge_orientation_block_tells_horizontal_from_vertical_stripes():
    block = DESCRIPTOR_BLOCKS["orientation"]
    h4, v6, h9, v3 = (describe_image(image)[block] for image in groups()["stripes"])
    unit = [x / np.linalg.norm(x) for x in (h4, v6, h9, v3)]
    assert unit[0] @ unit[2] > 0.95 and unit[1] @ unit[3] > 0.95  # same direction, other spacing
    assert unit[0] @ unit[1] < 0.05 and unit[2] @ unit[3] < 0.05
    # horizontal stripes: gradients point along y, i.e. orientation bin 4 (90 degrees) in each cell
    assert set(np.flatnonzero(h4 > 1e-6) % 8) == {4} and set(np.flatnonzero(v6 > 1e-6) % 8) == {0}


def drawn_shape(corners: int, rng: np.random.Generator) -> Image.Image:
    """A filled disc (corners 0) or regular polygon at a random place, size, rotation and colour."""
    image = Image.new("RGB", (120, 120), (128, 128, 128))
    cx, cy = rng.uniform(45, 75, size=2)
    radius, turn = rng.uniform(20, 38), rng.uniform(0, 2 * np.pi)
    colour = [RED, BLUE, (30, 160, 40), (240, 200, 20)][rng.integers(4)]
    if corners == 0:
        ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        angles = turn + 2 * np.pi * np.arange(corners) / corners
        ImageDraw.Draw(image).polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles], fill=colour)
    return image


def test_outline_block_tells_shapes_apart_whatever_their_place_size_rotation_and_colour():
    rng = np.random.default_rng(0)
    corners = np.repeat([0, 3, 4, 5], 6)
    block = DESCRIPTOR_BLOCKS["outline"]
    outlines = np.stack([describe_image(drawn_shape(int(c), rng))[block] for c in corners])
    assert np.all(np.linalg.norm(outlines, axis=1) > 0)
    # a square's boundary distance repeats 4 times per turn: harmonic 4 is its largest (3 for a triangle)
    assert np.argmax(outlines[corners == 4, :8].mean(axis=0)) + 1 == 4
    assert np.argmax(outlines[corners == 3, :8].mean(axis=0)) + 1 == 3
    centred = outlines - outlines.mean(axis=0)
    distance = np.linalg.norm(centred[:, None] - centred[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    assert np.array_equal(corners[distance.argmin(axis=1)], corners)  # every nearest neighbour: same shape


# --- contract, shared by both encoders --------------------------------------------------------------

@pytest.fixture(params=["descriptor", "clip"])
def make_encoder(request, tmp_path):
    def make(root: Path, cache_dir: Path | None = None, max_pixels: int = 40_000_000):
        if request.param == "descriptor":
            return DescriptorImageEncoder(root, cache_dir=cache_dir, max_pixels=max_pixels)
        checkpoint, _ = request.getfixturevalue("tiny_clip")
        return ClipImageEncoder(root, TINY_CLIP, checkpoint, batch_size=3, device="cpu", cache_dir=cache_dir,
                                max_pixels=max_pixels)

    return make


def test_encode_contract_order_dtype_norms_mask_and_determinism(make_encoder, tmp_path):
    items = write_catalog(tmp_path / "catalog")
    encoder = make_encoder(tmp_path / "catalog")
    embeddings = encoder.encode(items)
    assert embeddings.item_ids == tuple(items[schema.ITEM_ID].to_list())
    assert embeddings.vectors.dtype == np.float32 and embeddings.vectors.shape == (7, encoder.dim)
    assert embeddings.mask.tolist() == [True, True, False, True, True, True, True]
    norms = np.linalg.norm(embeddings.vectors, axis=1)
    np.testing.assert_allclose(norms[embeddings.mask], 1.0, rtol=1e-5)
    assert norms[2] == 0.0 and encoder.failures == {}
    # distinct images give distinct rows, so a permutation would be caught below
    distinct = embeddings.vectors[[0, 1, 3, 4, 6]]
    assert np.abs(distinct[:, None] - distinct[None]).sum(axis=2)[~np.eye(5, dtype=bool)].min() > 1e-3
    reversed_ = encoder.encode(items.reverse())
    np.testing.assert_allclose(reversed_.vectors, embeddings.vectors[::-1], atol=1e-6)
    again = make_encoder(tmp_path / "catalog").encode(items)
    np.testing.assert_array_equal(again.vectors, embeddings.vectors)
    assert encoder.encode(items.head(0)).vectors.shape == (0, encoder.dim)
    no_column = encoder.encode(items.select(schema.ITEM_ID))
    assert not no_column.mask.any() and not no_column.vectors.any()


def test_second_encode_is_served_from_the_cache(make_encoder, tmp_path):
    items = write_catalog(tmp_path / "catalog")
    first = make_encoder(tmp_path / "catalog", cache_dir=tmp_path / "cache")
    calls = count_calls(first)
    embeddings = first.encode(items)
    assert sum(calls) == 5
    assert first.encode(items) is not None and sum(calls) == 5  # same instance: all hits
    second = make_encoder(tmp_path / "catalog", cache_dir=tmp_path / "cache")
    second_calls = count_calls(second)
    np.testing.assert_array_equal(second.encode(items).vectors, embeddings.vectors)
    assert second_calls == []
    # a changed file is a new key: only that one image is recomputed
    stripes(False, 5).save(tmp_path / "catalog" / "s0.png")
    changed = second.encode(items)
    assert sum(second_calls) == 1 and not np.allclose(changed.vectors[3], embeddings.vectors[3])


# --- bad media ---------------------------------------------------------------------------------------

def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid 1-bit greyscale PNG of width x height (all black), built without a pixel buffer."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture
def decode_counter(monkeypatch) -> list[str]:
    """Counts every pixel decode (ImageFile.load) so a test can prove a file was never decoded."""
    loads: list[str] = []
    inner = ImageFile.ImageFile.load

    def counted(self):
        loads.append(str(getattr(self, "filename", "")))
        return inner(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    return loads


def test_huge_images_are_rejected_from_the_header_without_decoding(tmp_path, decode_counter):
    png_header_only(tmp_path / "bomb.png", 12000, 12000)  # 144 Mpx, over PIL's own bomb limit too
    png_header_only(tmp_path / "big.png", 4000, 4000)  # 16 Mpx: only our limit applies
    for name in ("bomb.png", "big.png"):
        with pytest.raises(MediaError, match="pixels|bomb"):
            load_image(tmp_path / name, max_pixels=10_000_000)
    # PIL's decompression-bomb warning (above ~89 Mpx) is a refusal too, whatever max_pixels says
    with pytest.raises(MediaError, match="bomb"):
        load_image(tmp_path / "bomb.png", max_pixels=10**9)
    assert decode_counter == []
    assert load_image(tmp_path / "big.png", max_pixels=20_000_000).size == (4000, 4000)


def test_a_large_jpeg_is_decoded_at_reduced_scale_instead_of_rejected(tmp_path):
    Image.new("RGB", (3000, 2000), (30, 160, 40)).save(tmp_path / "large.jpg", quality=80)
    Image.new("RGB", (3000, 2000), (30, 160, 40)).save(tmp_path / "large.png")
    image = load_image(tmp_path / "large.jpg", max_pixels=1_000_000)
    # 1/2 scale would still be 1.5 Mpx; 1/4 gives 750 x 500
    assert image.mode == "RGB" and image.size == (750, 500)
    assert np.abs(np.asarray(image, dtype=int).mean(axis=(0, 1)) - (30, 160, 40)).max() < 4
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(tmp_path / "large.png", max_pixels=1_000_000)
    # an encoder that downsizes anyway asks for less: 1/8 scale still leaves both sides >= 200
    assert load_image(tmp_path / "large.jpg", max_pixels=10**8, min_side=200).size == (375, 250)
    assert load_image(tmp_path / "large.jpg", max_pixels=10**8, min_side=300).size == (750, 500)
    assert load_image(tmp_path / "large.jpg", max_pixels=10**8).size == (3000, 2000)
    items = items_frame(["jpg", "png"], ["large.jpg", "large.png"])
    encoder = DescriptorImageEncoder(tmp_path, max_pixels=1_000_000)
    assert encoder.encode(items).mask.tolist() == [True, False]
    assert list(encoder.failures) == ["png"]


def test_load_image_composites_transparency_onto_white_and_converts_to_rgb(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 255, 0)).save(tmp_path / "clear.png")
    Image.new("L", (4, 4), 100).save(tmp_path / "grey.png")
    assert np.asarray(load_image(tmp_path / "clear.png", 100)).tolist() == [[[255, 255, 255]] * 4] * 4
    grey = load_image(tmp_path / "grey.png", 100)
    assert grey.mode == "RGB" and np.asarray(grey)[0, 0].tolist() == [100, 100, 100]


def test_bad_media_degrade_to_zero_rows_with_one_warning_each(make_encoder, tmp_path, caplog):
    root = tmp_path / "catalog"
    root.mkdir()
    shape(RED, "ellipse", BOXES[0]).save(root / "good.png")
    full = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "notes.png").write_text("this is not an image\n")
    shape(BLUE, "rectangle", BOXES[1]).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    png_header_only(root / "huge.png", 12000, 12000)
    png_header_only(root / "big.png", 4000, 4000)
    bad = {
        "truncated": "truncated.png",
        "missing": "missing.png",
        "text": "notes.png",
        "parent": "../outside.png",
        "absolute": str(tmp_path / "outside.png"),
        "symlink": "link.png",
        "huge": "huge.png",
        "big": "big.png",
    }
    items = items_frame(["good", *bad], ["good.png", *bad.values()])
    encoder = make_encoder(root, max_pixels=10_000_000)
    with caplog.at_level(logging.WARNING, logger="fuserank.encoders.image_files"):
        embeddings = encoder.encode(items)
    assert embeddings.mask.tolist() == [True] + [False] * len(bad)
    assert not embeddings.vectors[1:].any()
    assert sorted(encoder.failures) == sorted(bad)
    per_item = [r.getMessage() for r in caplog.records if "not encoded" in r.getMessage()]
    assert len(per_item) == len(bad)
    for item_id, path in bad.items():
        assert sum(f"item {item_id} ({path})" in message for message in per_item) == 1
    assert any(f"{len(bad)} of {len(bad) + 1} images" in r.getMessage() for r in caplog.records)
    # failures belong to the last call only
    encoder.encode(items.head(1))
    assert encoder.failures == {}
