"""``ovss eval --model M --dataset ade150``: benchmark evaluation, resumable, shardable with torchrun."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from ovss.api.tta import add_tta_arguments
from ovss.cli.common import add_model_args, ensure_writable_dir, load_segmenter, model_options, warn

_DESCRIPTION = """\
Evaluate a model on prepared benchmarks (mIoU, fwIoU, mACC, pACC in both the detectron2 and the
mmseg convention) or on a folder of images with label PNGs. Reports go to OUT/<dataset>/
(metrics.json, metrics.csv, per_class.csv; per_class_iou.png and confusion.png with the
`ovss[plots]` extra, docs/plots.md). An interrupted run resumes when re-run with the same
--out; a different model, weights file, class list, data, --limit or option is refused.

Benchmarks are read from --data-root, else $OVSS_DATA, else ./datasets (prepare them with
`ovss prepare`). With --dataset all, benchmarks that are not prepared are listed and skipped.
CAT-Seg models use the model's default --inference (the official sliding window for the released
CAT-Seg weights) unless --inference is given. SAN models too: d2 (MendelXu/SAN's detectron2
protocol) for the official weights, mmseg (mmsegmentation's own test protocol, the one of its
README's numbers) for the .mmseg weights.
"""

_EPILOG = """\
examples:
  ovss eval --model san-vit-b16 --dataset all --data-root ~/data
  ovss eval --model san-vit-b16 --folder my_data --classes my_data/classes.txt --out runs/mine
  torchrun --nproc_per_node 4 -m ovss.cli.main eval --model catseg-vit-b16 --dataset ade847 \\
      --data-root ~/data --device cuda
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate on standard benchmarks or a folder of images + label PNGs (mIoU, both conventions)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--dataset",
        help="coco171, ade150, ade847, pc59, pc459, voc20, voc20b, voc21, or 'all' (ade847, pc459, "
        "ade150, pc59, voc20)",
    )
    which.add_argument("--folder", type=Path, help="custom data: FOLDER/images/* and FOLDER/labels/*.png")
    p.add_argument(
        "--classes",
        default=None,
        help="with --folder (required there): class-name file, one class per line (label value = line "
        "index); benchmarks use their own class list",
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="root given to 'ovss prepare --out' (default: $OVSS_DATA, else ./datasets)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each dataset")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="reports and resume state (default: ovss_eval/MODEL[-OPTIONS], one folder per model, "
        "--weights, --dtype, inference options and --limit)",
    )
    add_model_args(p, dtype="fp32")  # evaluation is exact by default
    add_tta_arguments(p)
    p.add_argument(  # accepted only to refuse it with a reason (ovss segment has it)
        "--min-score", type=float, default=None, metavar="S", help="not available in eval (ovss segment only)"
    )
    p.set_defaults(run=run)


def _stem(value: str) -> str:
    """A registry name as is, a file path by its stem."""
    return Path(value).stem if ("/" in value or os.sep in value or Path(value).suffix) else value


def default_out(args: argparse.Namespace) -> Path:
    """``ovss_eval/<model>[-<weights>][-<dtype>][-<options>][-limit<N>]``: runs that differ get their own
    folder (a folder's resume state refuses other settings), e.g. ``ovss_eval/sed-convnext-b-fast-topk8``."""
    parts = [_stem(args.model)]
    if args.weights:
        parts.append(_stem(str(args.weights)))
    if args.dtype != "fp32":
        parts.append(args.dtype)
    for key, value in model_options(args).items():
        if key == "tta":  # -tta, or -tta-s0.5_1.0[-noflip] with --tta-scales / --no-tta-flip
            custom = value is not True
            scales = "-s" + "_".join(map(str, value["scales"])) if custom else ""
            parts.append(f"tta{scales}" + ("-noflip" if custom and not value["flip"] else ""))
            continue
        parts.append(key if value is True else f"{key}{value}" if key == "topk" else str(value))
    if getattr(args, "limit", None) is not None:  # a quick check never shares a folder with a full run
        parts.append(f"limit{args.limit}")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("._") or "model"
    return Path("ovss_eval") / name


def run(args: argparse.Namespace) -> int:
    from ovss.distributed import distributed_session

    with distributed_session(args.device):  # torchrun: one group, always left (also on errors)
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from ovss.data.catalog import STANDARD
    from ovss.distributed import rank_and_world
    from ovss.errors import ConfigError, DatasetError
    from ovss.evaluation.runner import benchmark, evaluate, format_table, summary_rows
    from ovss.models.build import family_of

    if getattr(args, "min_score", None) is not None:
        raise ConfigError(
            "--min-score is not available in ovss eval: the benchmarks label every pixel, so every pixel "
            "needs a class; remove --min-score (it is for ovss segment)"
        )
    if args.folder is not None and args.classes is None:
        raise DatasetError("--folder needs --classes FILE (one class per line, label value = line index)")
    if args.dataset is not None and args.classes is not None:
        raise ConfigError(
            "--classes applies to --folder only; a benchmark is scored with its own class list (remove "
            "--classes, or evaluate a custom folder with --folder)"
        )
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    names = list(STANDARD) if args.dataset == "all" else [args.dataset]
    options = model_options(args)
    out = ensure_writable_dir(args.out if args.out is not None else default_out(args))
    seg = load_segmenter(args)
    jobs: list[tuple[Any, list[str] | None, int | None]] = []
    skipped = []
    if args.folder is not None:
        from ovss.data.datasets import FolderDataset

        jobs.append((FolderDataset(args.folder, args.classes), None, None))
    else:
        root = args.data_root or Path(os.environ.get("OVSS_DATA", "datasets"))
        family = family_of(seg.model.config)
        for name in names:
            try:
                jobs.append(benchmark(name, root, family))
            except DatasetError as e:
                if args.dataset != "all":
                    raise
                skipped.append((name, str(e)))
                if rank_and_world()[0] == 0:
                    warn(f"skipping {name}: {e}")
        if not jobs:
            raise DatasetError(
                f"none of {', '.join(names)} is prepared under {root}; prepare them with `ovss prepare` "
                "(docs/datasets.md) or pass --data-root"
            )
    reports = []
    for data, classes, merge_from in jobs:
        report = evaluate(seg, data, out, classes, merge_from=merge_from, limit=args.limit, **options)
        if report is not None:
            reports.append(report)
    if rank_and_world()[0] == 0:
        print(format_table(summary_rows(reports)))
        folders = ", ".join(str(out / r["dataset"]) for r in reports)
        print(f"reports (metrics.json, metrics.csv, per_class.csv, plots) in {folders}")
        if skipped:
            print(f"not prepared, skipped: {', '.join(n for n, _ in skipped)}")
    return 1 if skipped else 0
