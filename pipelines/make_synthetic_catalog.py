"""Write a synthetic multimodal catalog (images, audio, video, planted tastes) into a folder.

    python pipelines/make_synthetic_catalog.py OUT_DIR --items 5000 --users 2000 --seed 0 [--video-share 0.1]

Rerunning with the same arguments resumes an interrupted generation (finished media are kept);
see fuserank.data.synthetic.generate_multimodal_catalog.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from fuserank import progress, schema
from fuserank.data.synthetic import INTERACTIONS_FILE, ITEMS_FILE, TASTES, USERS_FILE, generate_multimodal_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created)")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video-share", type=float, default=0.1, help="fraction of items with a video")
    parser.add_argument("--taste-detail", choices=sorted(TASTES), default="coarse")
    parser.add_argument(
        "--taste-share", type=float, default=0.8, help="expected share of a user's interactions on their taste"
    )
    parser.add_argument("--interactions", type=int, nargs=2, default=(10, 40), metavar=("MIN", "MAX"),
                        help="inclusive range of each user's number of interactions")
    parser.add_argument("--popularity-exponent", type=float, default=0.8, help="Zipf exponent of item popularity")
    parser.add_argument("--new-item-share", type=float, default=0.3, help="share of items released during the period")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="media rendering processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    progress.set_quiet(args.quiet)

    start = time.perf_counter()
    try:
        items, interactions = generate_multimodal_catalog(
            args.out_dir,
            n_items=args.items,
            n_users=args.users,
            seed=args.seed,
            video_share=args.video_share,
            taste_detail=args.taste_detail,
            taste_share=args.taste_share,
            interactions_per_user=tuple(args.interactions),
            popularity_exponent=args.popularity_exponent,
            new_item_share=args.new_item_share,
            workers=args.workers,
        )
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    n_bytes = sum(p.stat().st_size for p in args.out_dir.rglob("*") if p.is_file())
    n_videos = items[schema.VIDEO_PATH].drop_nulls().len()
    print(f"wrote {args.out_dir}: {ITEMS_FILE} ({items.height:,} items, {n_videos:,} with video),")
    print(f"  {INTERACTIONS_FILE} ({interactions.height:,} interactions), {USERS_FILE} (planted tastes), media/")
    print(f"  {n_bytes / 1e6:.1f} MB on disk, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
