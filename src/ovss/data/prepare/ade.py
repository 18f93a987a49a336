"""ADE20K-150 (ADEChallengeData2016) and ADE20K-847 (ADE20K_2021_17_01).

A-150: label PNG value v (0 = "other", 1..150 classes) becomes v - 1 with 0 -> 255 ("reduce zero
label"); images are linked unchanged.

A-847 (Mask2Former's ADE-full preparation, used by SAN, CAT-Seg and SED): the class of a pixel
in ``*_seg.png`` is ``(R // 10) * 256 + G``; the 847 frequent classes are listed by that raw value
in ``assets/classes/ade847.raw_ids.txt`` (line = contiguous id), every other value -> 65535. An
image whose short side exceeds 512 is resized so the short side is 512 (long side rounded): the
image bilinearly with OpenCV's ``INTER_LINEAR`` fixed-point arithmetic (bit-exact with OpenCV 4.10
and 5.0 in our checks), the labels with OpenCV's ``INTER_NEAREST`` (source index
``floor(x * in / out)``). Every image is re-encoded as JPEG with Pillow's defaults (quality 75),
as the official script does; labels are 16-bit TIFF.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ovss.data.catalog import BenchmarkSpec
from ovss.data.prepare._common import (
    WRITTEN,
    PrepareReport,
    Task,
    check_found,
    find_root,
    make_task,
    read_label_u8,
    require_dir,
    run_tasks,
    save_jpeg,
    save_label,
    write_pair,
)
from ovss.errors import DatasetError

ADE150_DOWNLOAD = "ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/)"
ADE847_DOWNLOAD = "ADE20K_2021_17_01.zip (https://groups.csail.mit.edu/vision/datasets/ADE20K/)"
MAX_SHORT_SIDE = 512


# ----------------------------------------------------------------------------------- ADE-150
def convert_ade150(raw: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0..150 -> (H, W) uint8: v - 1, and 0 -> 255."""
    return raw.astype(np.uint8) - np.uint8(1)  # uint8 arithmetic: 0 - 1 wraps to 255


def _convert_150(task: Task) -> str:
    return write_pair(task, convert_ade150(read_label_u8(task.label_in, "ADE20K-150 annotation")))


def prepare_ade150(
    spec: BenchmarkSpec, raw: Path, out: Path, split: str, workers: int, progress: bool, check_counts: bool
) -> PrepareReport:
    """Convert ADEChallengeData2016 ``validation``."""
    root = find_root(raw, ("ADEChallengeData2016",), "annotations", "ADEChallengeData2016", ADE150_DOWNLOAD)
    label_dir = require_dir(root / "annotations" / "validation", "ADE20K-150 annotations", ADE150_DOWNLOAD)
    image_dir = require_dir(root / "images" / "validation", "ADE20K-150 images", ADE150_DOWNLOAD)
    labels = sorted(label_dir.glob("*.png"))
    check_found(spec, split, len(labels), label_dir, check_counts)
    tasks = []
    for label in labels:
        image = image_dir / f"{label.stem}.jpg"
        if not image.is_file():
            raise DatasetError(f"ADE20K-150 image {image} is missing; re-extract {ADE150_DOWNLOAD}")
        tasks.append(make_task(spec, split, out, label.stem, image, label))
    return run_tasks(spec, split, tasks, _convert_150, out, workers, progress)


# ----------------------------------------------------------------------------------- ADE-847
@cache
def ade847_lut() -> np.ndarray:
    """(65536,) uint16: raw ADE20K class value -> contiguous id 0..846, else 65535."""
    text = (resources.files("ovss") / "assets" / "classes" / "ade847.raw_ids.txt").read_text()
    ids = [int(v) for v in text.split()]
    lut = np.full(65536, 65535, dtype=np.uint16)
    lut[ids] = np.arange(len(ids), dtype=np.uint16)
    return lut


def decode_ade_seg(seg: np.ndarray) -> np.ndarray:
    """(H, W, 3+) uint8 ``*_seg.png`` -> (H, W) int32 raw class value ``(R // 10) * 256 + G``."""
    return (seg[..., 0] // 10).astype(np.int32) * 256 + seg[..., 1].astype(np.int32)


def resized_shape(h: int, w: int, max_size: int = MAX_SHORT_SIDE) -> tuple[int, int] | None:
    """(h, w) with the short side scaled to ``max_size`` when it is larger, else None."""
    if w >= h > max_size:
        return max_size, round(w / float(h) * max_size)
    if h >= w > max_size:
        return round(h / float(w) * max_size), max_size
    return None


def resize_nearest(array: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV ``INTER_NEAREST``: output pixel x reads source ``min(floor(x * in / out), in - 1)``."""
    rows = _nearest_index(array.shape[0], h)
    cols = _nearest_index(array.shape[1], w)
    return array[rows[:, None], cols[None, :]]


def _nearest_index(src: int, dst: int) -> np.ndarray:
    scale = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst) * scale).astype(np.int64), src - 1)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit fixed-point weights of OpenCV's linear resize along one axis."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = f - i0.astype(np.float32)
    low, high = i0 < 0, i0 >= src - 1
    f[low | high] = 0.0
    i0 = np.clip(i0, 0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    return i0, i1, w0, w1


def resize_bilinear_u8(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV ``INTER_LINEAR`` for uint8 (half-pixel centres, no antialiasing, 11-bit fixed point,
    the rounding of OpenCV's vectorised path), so the prepared A-847 images match the official ones.

    Args:
        image: (H, W) or (H, W, C) uint8.

    Returns:
        (h, w[, C]) uint8.
    """
    x0, x1, a0, a1 = _linear_taps(image.shape[1], w)
    y0, y1, b0, b1 = _linear_taps(image.shape[0], h)
    src = image.astype(np.int64)
    extra = (None,) * (image.ndim - 2)
    columns, lines = (slice(None), *extra), (slice(None), None, *extra)
    rows = src[:, x0] * a0[columns] + src[:, x1] * a1[columns]
    top, bottom = rows[y0] >> 4, rows[y1] >> 4  # the SIMD path's pre-shift
    b0, b1 = b0[lines], b1[lines]
    out = (((top * b0) >> 16) + ((bottom * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def convert_ade847(image: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W[, 3]) uint8, seg (H, W, 3) uint8) -> (resized image, (h, w) uint16 labels)."""
    classes = decode_ade_seg(seg)
    shape = resized_shape(image.shape[0], image.shape[1])
    if shape is not None:
        image = resize_bilinear_u8(image, *shape)
        classes = resize_nearest(classes, *shape)
    return image, ade847_lut()[classes]


def _convert_847(task: Task) -> str:
    with Image.open(task.image_in) as im:
        image = np.asarray(im if im.mode in ("RGB", "L") else im.convert("RGB"))
    with Image.open(task.label_in) as im:
        seg = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    image, label = convert_ade847(image, seg)
    save_label(label, task.label_out)
    save_jpeg(image, task.image_out)
    return WRITTEN


def prepare_ade847(
    spec: BenchmarkSpec, raw: Path, out: Path, split: str, workers: int, progress: bool, check_counts: bool
) -> PrepareReport:
    """Convert the ``ADE_val_*.jpg`` images of ADE20K_2021_17_01 (found recursively)."""
    root = find_root(raw, ("ADE20K_2021_17_01",), "images/ADE", "ADE20K_2021_17_01", ADE847_DOWNLOAD)
    image_root = require_dir(root / "images" / "ADE" / "validation", "ADE20K-847 images", ADE847_DOWNLOAD)
    images = sorted(image_root.rglob("ADE_val_*.jpg"), key=lambda p: p.name)
    check_found(spec, split, len(images), image_root, check_counts)
    tasks = []
    for image in images:
        seg = image.with_name(f"{image.stem}_seg.png")
        if not seg.is_file():
            raise DatasetError(f"ADE20K-847 annotation {seg} is missing; re-extract {ADE847_DOWNLOAD}")
        tasks.append(make_task(spec, split, out, image.stem, image, seg))
    return run_tasks(spec, split, tasks, _convert_847, out, workers, progress)
