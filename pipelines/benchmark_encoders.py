"""Encoder throughput on this machine: texts/s (ours against sentence-transformers on the same
model and texts, as a ratio), images/s and audio clips/s. Writes benchmarks/encoders.json.

    python pipelines/benchmark_encoders.py [--texts 2000] [--media 300] [--repeats 3]

Needs the `bench` extra (sentence-transformers). Caches are off: every item is really encoded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from fuserank import atomic, schema  # noqa: E402
from fuserank.config import RunConfig, cache_dir  # noqa: E402
from fuserank.progress import set_quiet  # noqa: E402
from fuserank.data.sources import resolve  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls (after one warm-up call) and the last result."""
    fn()
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def timed_pair(ours, theirs, repeats: int) -> tuple[list[float], list[float], object, object]:
    """Seconds of each of `repeats` calls of two functions, alternating them so that background
    load hits both alike (after one warm-up call each), and their last results."""
    ours(), theirs()
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours_out = ours()
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs_out = theirs()
        theirs_s.append(time.perf_counter() - start)
    return ours_s, theirs_s, ours_out, theirs_out


def benchmark_texts(n: int, repeats: int, batch_size: int) -> dict:
    """Our TextEncoder against SentenceTransformer.encode on all-MiniLM-L6-v2, same texts."""
    from sentence_transformers import SentenceTransformer

    from fuserank.data.movielens import load_movielens_100k
    from fuserank.encoders.text import TextEncoder

    config = RunConfig()
    root = cache_dir(config.sources)
    model_dir = resolve(config.sources.text_model, root)
    items, _ = load_movielens_100k(resolve(config.sources.movielens_100k, root))
    base = [t for t in items[schema.TEXT].to_list() if t]
    # Distinct texts (our encoder encodes each distinct text once, which would flatter it).
    texts = [f"{base[i % len(base)]} Review {i}: {'a fine film ' * (i % 7)}".strip() for i in range(n)]

    ours = TextEncoder(model_dir, batch_size=batch_size, device="cpu", cache_dir=None)
    theirs = SentenceTransformer(str(model_dir), device="cpu")
    ours_times, theirs_times, ours_vec, theirs_vec = timed_pair(
        lambda: ours.encode_texts(texts),
        lambda: theirs.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False),
        repeats,
    )
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    agreement = float(np.mean(np.sum(np.asarray(ours_vec) * np.asarray(theirs_vec), axis=1)))
    return {
        "texts": n,
        "batch_size": batch_size,
        "fuserank_texts_per_s": n / ours_s,
        "sentence_transformers_texts_per_s": n / theirs_s,
        "ratio_fuserank_over_sentence_transformers": theirs_s / ours_s,
        "mean_cosine_between_the_two": agreement,
        "fuserank_seconds": ours_times,
        "sentence_transformers_seconds": theirs_times,
    }


def synthetic_media(folder: Path, n: int) -> pl.DataFrame:
    """A catalog of `n` items with 64x64 PNGs and ~2 s FLAC clips (the benchmark catalog's media)."""
    from fuserank.data.synthetic import generate_multimodal_catalog

    items, _ = generate_multimodal_catalog(folder, n_items=n, n_users=20, seed=0, video_share=0.0,
                                           interactions_per_user=(2, 4))
    return items


def benchmark_images(items: pl.DataFrame, root: Path, repeats: int) -> dict:
    """Images/s of the weight-free descriptor and of open_clip ViT-B-32 (random weights: the speed
    of the architecture, which is what a user's checkpoint runs at)."""
    from fuserank.encoders.image import ClipImageEncoder
    from fuserank.encoders.image_descriptor import DescriptorImageEncoder

    n = items.height
    descriptor = DescriptorImageEncoder(root)
    clip = ClipImageEncoder(root, "ViT-B-32", None, batch_size=32, device="cpu")
    descriptor_s, _ = timed(lambda: descriptor.encode(items), repeats)
    clip_s, _ = timed(lambda: clip.encode(items), repeats)
    return {"images": n, "descriptor_images_per_s": n / descriptor_s, "clip_vit_b_32_images_per_s": n / clip_s}


def benchmark_audio(items: pl.DataFrame, root: Path, repeats: int) -> dict:
    """Audio clips/s: decode, resample to 22,050 Hz and compute the 156 statistics."""
    from fuserank.encoders.audio import AudioEncoder

    encoder = AudioEncoder(root)  # no cache: every clip is decoded each time
    seconds, _ = timed(lambda: encoder.raw_features(items), repeats)
    return {"clips": items.height, "clip_seconds": "1.5-2", "audio_clips_per_s": items.height / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--media", type=int, default=300, help="images and audio clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/encoders.json")
    args = parser.parse_args()
    set_quiet(True)
    import torch

    results = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "text": benchmark_texts(args.texts, args.repeats, args.batch_size),
    }
    with tempfile.TemporaryDirectory() as tmp:
        items = synthetic_media(Path(tmp), args.media)
        results["image"] = benchmark_images(items, Path(tmp), args.repeats)
        results["audio"] = benchmark_audio(items, Path(tmp), args.repeats)
    atomic.write_json(Path(args.out), results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
