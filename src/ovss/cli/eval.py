"""``ovss eval --model M --dataset ade150``: benchmark evaluation, resumable, shardable with torchrun.

    ovss eval --model san-vit-b16 --dataset all --data-root ~/data --out runs/eval
    ovss eval --model san-vit-b16 --folder my_data --classes my_data/classes.txt
    torchrun --nproc_per_node 4 -m ovss.cli.main eval --model catseg-vit-b16 --dataset ade847 \\
        --data-root ~/data --inference slide --device cuda
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ovss.cli.common import add_model_args, load_segmenter, model_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate on standard benchmarks or a folder of images + label PNGs (mIoU, both conventions)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--dataset",
        help="coco171, ade150, ade847, pc59, pc459, voc20, voc20b, voc21, or 'all' (standard five)",
    )
    which.add_argument("--folder", type=Path, help="custom data: FOLDER/images/* and FOLDER/labels/*.png")
    p.add_argument("--classes", default=None, help="with --folder: class-name file (one class per line)")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="root given to 'ovss prepare --out' (default: $OVSS_DATA or ./datasets)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each dataset")
    p.add_argument("--out", type=Path, default=Path("ovss_eval"), help="reports and resume state")
    add_model_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.data.catalog import STANDARD
    from ovss.errors import DatasetError
    from ovss.evaluation.runner import (
        benchmark,
        evaluate,
        format_table,
        init_distributed_from_env,
        rank_and_world,
        summary_rows,
    )
    from ovss.models.build import family_of

    if args.folder is not None and args.classes is None:
        raise DatasetError("--folder needs --classes FILE (one class per line, label value = line index)")
    init_distributed_from_env()
    seg = load_segmenter(args)
    jobs = []
    if args.folder is not None:
        from ovss.data.datasets import FolderDataset

        jobs.append((FolderDataset(args.folder, args.classes), None, None))
    else:
        root = args.data_root or Path(os.environ.get("OVSS_DATA", "datasets"))
        family = family_of(seg.model.config)
        for name in list(STANDARD) if args.dataset == "all" else [args.dataset]:
            jobs.append(benchmark(name, root, family))
    reports = []
    for data, classes, merge_from in jobs:
        report = evaluate(
            seg, data, args.out, classes, merge_from=merge_from, limit=args.limit, **model_options(args)
        )
        if report is not None:
            reports.append(report)
    if rank_and_world()[0] == 0:
        print(format_table(summary_rows(reports)))
        print(f"reports in {args.out}/<dataset>/ (metrics.json, metrics.csv, per_class.csv)")
    return 0
