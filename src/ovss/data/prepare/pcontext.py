"""PASCAL Context 59 and 459 (VOC2010 images + the Context ``trainval/*.mat`` annotations).

Each ``<id>.mat`` holds ``LabelMap`` (H, W) with the 1-based PASCAL Context label ids of
``labels.txt`` (1 = accordion ... 459 = wool).

* PC-459: ``LabelMap - 1`` as a 16-bit TIFF (a 0 in LabelMap would become 65535 = ignore; the
  official data have none, so every pixel is scored).
* PC-59: the 59 ids of the standard subset (``PC59_IDS``) become 0..58 in increasing id order;
  background and all other ids become 255. Images are linked unchanged.

The validation list is the pinned 5,104-image list of CAT-Seg/SED (``pascalcontext_val.txt``,
shipped here as ``_pcontext_val.VAL_IDS``): with it PC-59 and PC-459 score exactly the same
images. A file ``pascalcontext_val.txt`` in the VOC2010 folder overrides it. Listed ids without a
.mat or JPEG are skipped and reported (the count check then fails, naming them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovss.data.catalog import BenchmarkSpec
from ovss.data.prepare._common import (
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

VOC2010_DOWNLOAD = "VOCtrainval_03-May-2010.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2010/)"
CONTEXT_DOWNLOAD = (
    "trainval.tar.gz (PASCAL Context annotations, https://www.cs.stanford.edu/~roozbeh/pascal-context/)"
)

PC59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
    144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
    354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
"""PASCAL Context label ids (1-based, ``labels.txt``) of the 59 classes, in contiguous-label order."""

_LUT59 = lookup_table(65536, 255, {src: dst for dst, src in enumerate(PC59_IDS)}, np.uint8)


def convert_pc59(label_map: np.ndarray) -> np.ndarray:
    """(H, W) LabelMap (1..459) -> (H, W) uint8 0..58, everything else 255."""
    return _LUT59[label_map.astype(np.int64).clip(0, 65535)]


def convert_pc459(label_map: np.ndarray) -> np.ndarray:
    """(H, W) LabelMap (1..459) -> (H, W) uint16 ``LabelMap - 1``; 0 (never in the data) -> 65535."""
    out = label_map.astype(np.int64) - 1
    out[(out < 0) | (out > 65535)] = 65535
    return out.astype(np.uint16)


def load_label_map(path: str | Path) -> np.ndarray:
    """``LabelMap`` of a PASCAL Context ``.mat`` file as (H, W) int64."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "LabelMap" not in mat:
        raise DatasetError(f"{path} has no 'LabelMap' variable; is it a PASCAL Context trainval .mat?")
    return np.asarray(mat["LabelMap"]).astype(np.int64)


def _convert_59(task: Task) -> str:
    return write_pair(task, convert_pc59(load_label_map(task.label_in)))


def _convert_459(task: Task) -> str:
    return write_pair(task, convert_pc459(load_label_map(task.label_in)))


def val_ids(root: Path) -> list[str]:
    """The PASCAL Context validation ids: ``<root>/pascalcontext_val.txt`` if present, else pinned."""
    override = root / "pascalcontext_val.txt"
    if override.is_file():
        return read_id_list(override)
    from ovss.data.prepare._pcontext_val import VAL_IDS

    return list(VAL_IDS)


def prepare_pcontext(
    spec: BenchmarkSpec, raw: Path, out: Path, split: str, workers: int, progress: bool, check_counts: bool
) -> PrepareReport:
    """Convert the PASCAL Context validation images for ``pc59`` or ``pc459``."""
    root = find_root(raw, ("VOCdevkit/VOC2010", "VOC2010"), "JPEGImages", "VOC2010", VOC2010_DOWNLOAD)
    image_dir = require_dir(root / "JPEGImages", "VOC2010 JPEGImages", VOC2010_DOWNLOAD)
    mat_dir = require_dir(root / "trainval", "PASCAL Context annotations (trainval/*.mat)", CONTEXT_DOWNLOAD)
    tasks, skipped = listed_tasks(spec, split, out, val_ids(root), image_dir, mat_dir, ".mat")
    if skipped and check_counts:
        fix = f"extract {VOC2010_DOWNLOAD} and {CONTEXT_DOWNLOAD} completely"
        raise missing_error(skipped, "PASCAL Context val", image_dir, f"{mat_dir}/<id>.mat", fix)
    check_found(spec, split, len(tasks), mat_dir, check_counts)
    convert = _convert_59 if spec.name == "pc59" else _convert_459
    return run_tasks(spec, split, tasks, convert, out, workers, progress, skipped_inputs=skipped)
