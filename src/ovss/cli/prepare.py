"""``ovss prepare DATASET --raw DIR --out DIR``: official downloads -> the standard layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a benchmark's official download into the layout 'ovss eval' reads",
        description="See docs/datasets.md for the files to download for each dataset.",
        epilog="example: ovss prepare ade150 --raw ~/Downloads --out ~/data",
    )
    p.add_argument("dataset", help="coco171, ade150, ade847, pc59, pc459, voc20, voc20b, voc21")
    p.add_argument("--raw", type=Path, required=True, help="folder holding the official download")
    p.add_argument("--out", type=Path, required=True, help="data root to write the prepared dataset into")
    p.add_argument("--split", default="val", help="val (the benchmark) or train (coco171, for training)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default: 2)")
    p.add_argument(
        "--no-count-check", action="store_true", help="accept a partial download (skip the image-count check)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.data.prepare import prepare

    report = prepare(
        args.dataset,
        args.raw,
        args.out,
        workers=args.workers,
        progress=True,
        split=args.split,
        check_counts=not args.no_count_check,
    )
    print(report.summary())
    return 0
