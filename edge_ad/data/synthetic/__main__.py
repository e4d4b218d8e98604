"""python -m edge_ad.data.synthetic --out DIR: write synthetic categories and the conveyor video."""

from __future__ import annotations

import argparse
import sys
import time

from edge_ad.data.synthetic import CATEGORIES, Counts, make_category, write_conveyor_video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_ad.data.synthetic", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per category)")
    parser.add_argument("--categories", default=",".join(CATEGORIES),
                        help=f"comma-separated subset of: {', '.join(CATEGORIES)}")
    parser.add_argument("--train", type=int, default=Counts.train, help="normal training images")
    parser.add_argument("--test-good", type=int, default=Counts.test_good, help="normal test images")
    parser.add_argument("--test-per-defect", type=int, default=Counts.test_per_defect,
                        help="test images per defect type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video-frames", type=int, default=300, help="conveyor video length (0: none)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.categories.split(",") if n.strip()]
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        parser.error(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    counts = Counts(args.train, args.test_good, args.test_per_defect)
    for name in names:
        start = time.perf_counter()
        folder = make_category(args.out, name, counts=counts, seed=args.seed)
        print(f"{name}: {folder} ({time.perf_counter() - start:.1f} s)")
    if args.video_frames > 0:
        video = f"{args.out}/conveyor.mp4"
        labels = write_conveyor_video(video, frames=args.video_frames, seed=args.seed)
        print(f"video: {video}, labels: {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
