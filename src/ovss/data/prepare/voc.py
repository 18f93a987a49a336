"""PASCAL VOC 2012 validation (1,449 images) in three conventions.

Raw label PNGs (``SegmentationClassAug`` if present, else the palette PNGs of
``SegmentationClass``) hold 0 = background, 1..20 = the VOC classes, 255 = boundary/void.

* ``voc20``  (PAS-20): k -> k - 1, background -> 255. An image whose map is then all 255 is
  skipped, as in the SAN/CAT-Seg scripts.
* ``voc20b`` (PAS-20b, CAT-Seg): k -> k - 1, background -> 20 (a scored class). The evaluator
  scores every predicted index >= 20 of the 59-name vocabulary as background.
* ``voc21``  (PAS-21, FC-CLIP/ODISE and the training-free papers): labels unchanged.

Any other value becomes 255. Images are linked unchanged.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ovss.data.catalog import BenchmarkSpec
from ovss.data.prepare._common import (
    DROPPED,
    PrepareReport,
    Task,
    check_found,
    find_root,
    listed_tasks,
    lookup_table,
    missing_error,
    read_id_list,
    require_dir,
    run_tasks,
    write_pair,
)
from ovss.errors import DatasetError

VOC2012_DOWNLOAD = "VOCtrainval_11-May-2012.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)"

_OBJECTS = {k: k - 1 for k in range(1, 21)}
LUTS = {
    "voc20": lookup_table(256, 255, {0: 255, **_OBJECTS}, np.uint8),
    "voc20b": lookup_table(256, 255, {0: 20, **_OBJECTS}, np.uint8),
    "voc21": lookup_table(256, 255, {k: k for k in range(21)}, np.uint8),
}
"""(256,) uint8 lookup tables: raw VOC label -> prepared label, per benchmark."""


def convert_voc(raw: np.ndarray, name: str) -> np.ndarray:
    """(H, W) uint8 raw VOC labels -> (H, W) uint8 labels of benchmark ``name``."""
    return LUTS[name][raw]


def _convert(task: Task, name: str) -> str:
    with Image.open(task.label_in) as im:
        label = convert_voc(np.asarray(im).astype(np.uint8), name)
    if name == "voc20" and bool(np.all(label == 255)):
        return DROPPED
    return write_pair(task, label)


def prepare_voc(
    spec: BenchmarkSpec, raw: Path, out: Path, split: str, workers: int, progress: bool, check_counts: bool
) -> PrepareReport:
    """Convert the ``ImageSets/Segmentation/val.txt`` images for voc20, voc20b or voc21."""
    root = find_root(raw, ("VOCdevkit/VOC2012", "VOC2012"), "JPEGImages", "VOC2012", VOC2012_DOWNLOAD)
    image_dir = require_dir(root / "JPEGImages", "VOC2012 JPEGImages", VOC2012_DOWNLOAD)
    label_dir = root / "SegmentationClassAug"
    if not label_dir.is_dir():
        label_dir = require_dir(root / "SegmentationClass", "VOC2012 SegmentationClass", VOC2012_DOWNLOAD)
    split_file = root / "ImageSets" / "Segmentation" / "val.txt"
    if not split_file.is_file():
        raise DatasetError(f"VOC2012 split list missing: expected {split_file} from {VOC2012_DOWNLOAD}")
    tasks, missing = listed_tasks(spec, split, out, read_id_list(split_file), image_dir, label_dir, ".png")
    if missing:
        fix = f"extract {VOC2012_DOWNLOAD} completely"
        raise missing_error(missing, "VOC2012 val", image_dir, f"{label_dir}/<id>.png", fix)
    check_found(spec, split, len(tasks), label_dir, check_counts)
    convert = partial(_convert, name=spec.name)  # picklable for the worker processes
    return run_tasks(spec, split, tasks, convert, out, workers, progress)
