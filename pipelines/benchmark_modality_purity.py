"""What each media encoder sees on a synthetic catalog: among each item's k nearest neighbours
(cosine), the share that has the same planted attribute(s), against the share expected by chance.
Writes benchmarks/modality_purity.json.

    python pipelines/make_synthetic_catalog.py /tmp/synthF --items 5000 --users 2000 --taste-detail fine ...
    python pipelines/benchmark_modality_purity.py /tmp/synthF [--k 20] [--quiet]

The image rows use the weight-free descriptor, whole and without its outline block (the block
that carries shape); the audio rows use the librosa statistics standardised on all items. Both are
centred on the items' mean, as fusion centres them before retrieval (`fusion.centre`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from fuserank import atomic, progress
from fuserank.data.synthetic import COLOUR, ITEMS_FILE, PITCH, SHAPE, TEMPO, TEXTURE, TIMBRE
from fuserank.encoders.base import Embeddings, centre, l2_normalise

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "modality_purity.json"
# Attribute groups: a neighbour agrees when it has the item's value of every attribute in the group.
IMAGE_ATTRIBUTES = ((COLOUR,), (SHAPE,), (TEXTURE,), (COLOUR, SHAPE))
AUDIO_ATTRIBUTES = ((PITCH,), (TEMPO,), (TIMBRE,), (PITCH, TEMPO, TIMBRE))


def nearest_neighbours(vectors: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """int (n, k): each row's k nearest other rows by cosine, nearest first, ties by row order.

    Rows of `vectors` must be L2-normalised.
    """
    n = len(vectors)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    nearest = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        similarity = vectors[start:stop] @ vectors.T
        similarity[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        nearest[start:stop] = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return nearest


def agreement(nearest: np.ndarray, labels: Sequence[str]) -> float:
    """Mean over items of the share of their neighbours (`nearest_neighbours`) with the same label."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    return float((codes[nearest] == codes[:, None]).mean())


def neighbour_agreement(vectors: np.ndarray, labels: Sequence[str], k: int, block: int = 2048) -> float:
    """Mean over items of the share of their k nearest other items (cosine) with the same label."""
    return agreement(nearest_neighbours(vectors, k, block), labels)


def chance_agreement(labels: Sequence[str]) -> float:
    """The expected share for neighbours drawn at random from the other items."""
    n = len(labels)
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def combined_labels(items: pl.DataFrame, attributes: Sequence[str]) -> list[str]:
    """One label per item joining its values of `attributes`."""
    return [" x ".join(values) for values in zip(*(items[a].to_list() for a in attributes), strict=True)]


def purity_rows(
    view: str, vectors: np.ndarray, items: pl.DataFrame, groups: Sequence[tuple[str, ...]], k: int
) -> list[dict]:
    """One row per attribute group: the neighbour agreement of `vectors` and its chance level."""
    nearest = nearest_neighbours(vectors, k)
    rows = []
    for attributes in groups:
        labels = combined_labels(items, attributes)
        rows.append({
            "view": view,
            "attributes": " x ".join(attributes),
            "agreement": round(agreement(nearest, labels), 4),
            "chance": round(chance_agreement(labels), 4),
        })
    return rows


def measure(folder: Path, k: int) -> dict:
    from fuserank.encoders.audio import AudioEncoder
    from fuserank.encoders.image_descriptor import DESCRIPTOR_BLOCKS, DescriptorImageEncoder

    items = pl.read_parquet(folder / ITEMS_FILE)
    start = time.perf_counter()
    images = DescriptorImageEncoder(folder).encode(items)
    audio_encoder = AudioEncoder(folder)
    raw, ok = audio_encoder.raw_features(items)
    seconds = time.perf_counter() - start
    if not (images.mask.all() and ok.all()):
        raise RuntimeError(f"{(~images.mask).sum()} images and {(~ok).sum()} clips failed to encode")
    audio_vectors = audio_encoder.fit_raw(raw).embed(raw)
    no_outline = images.vectors.copy()
    no_outline[:, DESCRIPTOR_BLOCKS["outline"]] = 0.0

    def centred(vectors: np.ndarray) -> np.ndarray:
        every = np.ones(len(vectors), dtype=bool)
        return centre(Embeddings(images.item_ids, vectors, every), every).vectors

    rows = (
        purity_rows("image descriptor", centred(images.vectors), items, IMAGE_ATTRIBUTES, k)
        + purity_rows("image descriptor without outline", centred(l2_normalise(no_outline)), items, IMAGE_ATTRIBUTES, k)
        + purity_rows("audio statistics", centred(audio_vectors), items, AUDIO_ATTRIBUTES, k)
    )
    return {"catalog": str(folder.name), "items": items.height, "k": k, "encode_seconds": round(seconds, 1),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalog", type=Path, help="a folder written by make_synthetic_catalog.py")
    parser.add_argument("--k", type=int, default=20, help="neighbours per item")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    progress.set_quiet(args.quiet)
    if not (args.catalog / ITEMS_FILE).is_file():
        print(f"error: {args.catalog / ITEMS_FILE} not found (run make_synthetic_catalog.py first)", file=sys.stderr)
        return 2
    result = measure(args.catalog, args.k)
    atomic.write_json(args.out, result)
    print(f"{'view':34} {'attributes':26} {'agreement':>9} {'chance':>7}")
    for row in result["rows"]:
        print(f"{row['view']:34} {row['attributes']:26} {row['agreement']:9.4f} {row['chance']:7.4f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
