"""``ovss prepare DATASET --raw DIR --out DIR``: official downloads -> the standard layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a benchmark's official download into the layout 'ovss eval' reads",
        description="Convert a benchmark's official download (images and annotations) into the layout\n"
        "'ovss eval' and 'ovss train' read: OUT/<dataset>/{images,labels}/<split>/. Resumable: a re-run\n"
        "completes missing files. See docs/datasets.md for the files to download for each dataset.\n"
        "Pass the same folder to 'ovss eval --data-root' (or set $OVSS_DATA to it).",
        epilog="example: ovss prepare ade150 --raw ~/Downloads --out ~/data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="coco171, ade150, ade847, pc59, pc459, voc20, voc20b, voc21")
    p.add_argument("--raw", type=Path, required=True, help="folder holding the official download")
    p.add_argument("--out", type=Path, required=True, help="data root to write the prepared dataset into")
    p.add_argument("--split", default="val", help="val (the benchmark) or train (coco171, for training)")
    p.add_argument(
        "--workers", type=int, default=2, help="parallel processes (0 or 1: convert in this process)"
    )
    p.add_argument(
        "--no-count-check", action="store_true", help="accept a partial download (skip the image-count check)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.cli.common import ensure_writable_dir
    from ovss.data.prepare import prepare
    from ovss.errors import ConfigError

    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0 or 1: convert in this process), got {args.workers}")
    ensure_writable_dir(args.out)  # before reading the download

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
