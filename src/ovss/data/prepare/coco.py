"""COCO-Stuff-171: COCO 2017 images + ``stuffthingmaps_trainval2017`` label PNGs.

The stuffthingmaps PNGs hold 0-based COCO category ids (COCO id - 1): 0..90 things (80 used),
91..181 stuff, 255 unlabeled. The 171 ids that occur are renumbered 0..170 in increasing order
(the 11 unused thing ids 11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90 are dropped); everything else
becomes 255. Images are linked unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovss.data.catalog import BenchmarkSpec
from ovss.data.prepare._common import (
    PrepareReport,
    Task,
    check_found,
    lookup_table,
    make_task,
    read_label_u8,
    run_tasks,
    write_pair,
)
from ovss.errors import DatasetError

UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
"""0-based COCO category ids absent from COCO-Stuff-171 (the gaps of the 80-thing numbering)."""

COCO_STUFF_IDS = tuple(i for i in range(182) if i not in UNUSED_IDS)
"""The 171 0-based stuffthingmaps ids, in contiguous-label order."""

_LUT = lookup_table(256, 255, {src: dst for dst, src in enumerate(COCO_STUFF_IDS)}, np.uint8)

_DOWNLOAD = "train2017.zip / val2017.zip (images) and stuffthingmaps_trainval2017.zip (labels)"
# (images, labels) relative to the dataset root: CAT-Seg's layout, then detectron2's.
_LAYOUTS = (("images/{s}", "annotations/{s}"), ("{s}", "stuffthingmaps/{s}"))


def convert_label(raw: np.ndarray) -> np.ndarray:
    """(H, W) uint8 stuffthingmaps ids -> (H, W) uint8 contiguous ids 0..170, 255 ignore."""
    return _LUT[raw]


def _convert(task: Task) -> str:
    return write_pair(task, convert_label(read_label_u8(task.label_in, "stuffthingmaps PNG")))


def _find_dirs(raw: Path, folder: str) -> tuple[Path, Path] | None:
    if not raw.is_dir():
        raise DatasetError(f"raw data folder {raw} does not exist; pass the folder holding coco-stuff/")
    for root in (raw / "coco-stuff", raw / "coco", raw):
        for image_fmt, label_fmt in _LAYOUTS:
            image_dir, label_dir = root / image_fmt.format(s=folder), root / label_fmt.format(s=folder)
            if image_dir.is_dir() and label_dir.is_dir():
                return image_dir, label_dir
    return None


def prepare_coco(
    spec: BenchmarkSpec, raw: Path, out: Path, split: str, workers: int, progress: bool, check_counts: bool
) -> PrepareReport:
    """Convert one COCO-Stuff split (``val`` = val2017, ``train`` = train2017)."""
    folder = f"{split}2017"
    found = _find_dirs(Path(raw), folder)
    if found is None:
        expected = Path(raw) / "coco-stuff"
        raise DatasetError(
            f"COCO-Stuff {folder} not found: expected {expected / 'images' / folder} (JPEGs) and "
            f"{expected / 'annotations' / folder} (stuffthingmaps PNGs) from {_DOWNLOAD}"
        )
    image_dir, label_dir = found
    labels = sorted(label_dir.glob("*.png"))
    check_found(spec, split, len(labels), label_dir, check_counts)
    tasks, missing = [], []
    for label in labels:
        image = image_dir / f"{label.stem}.jpg"
        if not image.is_file():
            missing.append(str(image))
        tasks.append(make_task(spec, split, out, label.stem, image, label))
    if missing:
        raise DatasetError(
            f"{len(missing)} COCO {folder} images are missing for their label maps (first: {missing[0]}); "
            f"extract {folder}.zip into {image_dir}"
        )
    return run_tasks(spec, split, tasks, _convert, out, workers, progress)
