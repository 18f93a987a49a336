"""Shared machinery of the `ovss prepare` converters: raw-folder lookup, atomic writers, the
parallel runner and the report."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike
from PIL import Image
from tqdm import tqdm

from ovss.data.catalog import BenchmarkSpec
from ovss.data.io import write_label_png
from ovss.errors import DatasetError
from ovss.utils import atomic_write

WRITTEN, DROPPED = "written", "dropped"


@dataclass(frozen=True)
class Task:
    """One image to convert: raw inputs and prepared outputs (all absolute paths as strings)."""

    image_in: str  # raw image
    label_in: str  # raw annotation (PNG / .mat / *_seg.png)
    image_out: str  # prepared image
    label_out: str  # prepared label map


def make_task(spec: BenchmarkSpec, split: str, out: Path, stem: str, image_in: Path, label_in: Path) -> Task:
    """The task converting ``image_in``/``label_in`` into ``<out>/<split dirs>/<stem><ext>``."""
    image_rel, label_rel = spec.split_dirs(split)
    return Task(
        image_in=str(image_in),
        label_in=str(label_in),
        image_out=str(out / image_rel / f"{stem}{spec.image_ext}"),
        label_out=str(out / label_rel / f"{stem}{spec.label_ext}"),
    )


def listed_tasks(
    spec: BenchmarkSpec,
    split: str,
    out: Path,
    ids: Iterable[str],
    image_dir: Path,
    label_dir: Path,
    label_ext: str,
) -> tuple[list[Task], list[str]]:
    """The tasks of the listed ``ids`` that have both ``<image_dir>/<id>.jpg`` and
    ``<label_dir>/<id><label_ext>``, and the ids that miss either (both in list order)."""
    tasks, missing = [], []
    for image_id in ids:
        image, label = image_dir / f"{image_id}.jpg", label_dir / f"{image_id}{label_ext}"
        if image.is_file() and label.is_file():
            tasks.append(make_task(spec, split, out, image_id, image, label))
        else:
            missing.append(image_id)
    return tasks, missing


def missing_error(
    missing: list[str], what: str, image_dir: Path, label_pattern: str, fix: str
) -> DatasetError:
    """The one-line error for listed ``what`` ids without their raw files (``missing`` not empty)."""
    return DatasetError(
        f"{len(missing)} {what} ids have no {image_dir}/<id>.jpg or {label_pattern} "
        f"(first: {missing[0]}); {fix}"
    )


@dataclass
class PrepareReport:
    """What one `prepare(name, ...)` call did."""

    name: str  # benchmark name
    split: str  # "val" (or "train" for coco171)
    image_dir: Path  # prepared images
    label_dir: Path  # prepared label maps
    found: int  # raw images found for the split (after the official list filters)
    expected: int  # the catalog's image count for the split
    written: int = 0  # converted by this call
    existing: int = 0  # already complete before this call, left untouched
    dropped: int = 0  # skipped by the official rule (VOC-20: label map is all ignore)
    skipped_inputs: list[str] = field(default_factory=list)  # listed ids without raw files

    @property
    def complete(self) -> int:
        """Number of prepared (image, label) pairs present after the call."""
        return self.written + self.existing

    def summary(self) -> str:
        """One line for the CLI."""
        extra = f", {self.dropped} dropped (all ignore)" if self.dropped else ""
        skipped = f", {len(self.skipped_inputs)} listed ids without raw files" if self.skipped_inputs else ""
        return (
            f"{self.name}/{self.split}: {self.complete} images ready in {self.label_dir.parent.parent} "
            f"({self.written} written, {self.existing} already there{extra}{skipped}; "
            f"expected {self.expected})"
        )


def find_root(raw: Path, candidates: Sequence[str], probe: str, what: str, download: str) -> Path:
    """First ``raw/<candidate>`` holding ``probe``; ``raw`` itself may be the dataset folder.

    Raises:
        DatasetError: nothing found; names the expected path and the download to fetch.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"raw data folder {raw} does not exist; pass the folder holding {candidates[0]}/")
    for cand in (*candidates, "."):
        root = raw / cand
        if (root / probe).exists():
            return root.resolve()
    raise DatasetError(
        f"{what} not found: expected {raw / candidates[0] / probe}; download and extract {download} "
        f"there (see docs/datasets.md)"
    )


def require_dir(path: Path, what: str, download: str) -> Path:
    """``path`` if it is a directory, else a DatasetError naming what belongs there."""
    if not path.is_dir():
        raise DatasetError(f"{what} missing: expected the folder {path}; it comes from {download}")
    return path


def read_id_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a split list (``val.txt``)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def check_found(spec: BenchmarkSpec, split: str, found: int, where: Path, check_counts: bool) -> None:
    """Compare the number of raw images found with the catalog count (before converting)."""
    expected = spec.splits[split]
    if found == 0:
        raise DatasetError(f"no {split} images found for {spec.name} under {where}; check the raw folder")
    if check_counts and found != expected:
        raise DatasetError(
            f"found {found} {split} images for {spec.name} under {where}, expected {expected}; the "
            "download is incomplete or the folder is wrong (pass --no-count-check, or check_counts=False, "
            "to prepare partial data)"
        )


def _link_or_copy(src: Path, tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)


def place_image(src: str | Path, dst: str | Path) -> None:
    """Put the raw image at ``dst`` unchanged: a hard link when possible, else a copy (atomic)."""
    atomic_write(Path(dst), lambda tmp: _link_or_copy(Path(src), tmp))


def save_jpeg(array: np.ndarray, dst: str | Path) -> None:
    """Encode (H, W[, 3]) uint8 as JPEG with Pillow's defaults (quality 75), atomically."""
    image = Image.fromarray(array)
    atomic_write(Path(dst), lambda tmp: image.save(tmp, format="JPEG"))


def save_label(label: np.ndarray, dst: str | Path) -> None:
    """Write a (H, W) label map: uint8 -> palette PNG, uint16 -> uncompressed 16-bit TIFF (atomic)."""
    dst = Path(dst)
    if label.dtype == np.uint16:
        image = Image.fromarray(label)  # mode "I;16"
        atomic_write(dst, lambda tmp: image.save(tmp, format="TIFF"))
    else:
        write_label_png(dst, label.astype(np.uint8), bit_depth=8)


def write_pair(task: Task, label: np.ndarray) -> str:
    """Save the converted (H, W) ``label`` and place the raw image unchanged (both atomic); WRITTEN."""
    save_label(label, task.label_out)
    place_image(task.image_in, task.image_out)
    return WRITTEN


def read_label_u8(path: str | Path, what: str) -> np.ndarray:
    """(H, W) uint8 of a raw label PNG.

    Raises:
        DatasetError: the file is not 8-bit single-channel (``what`` names the expected annotation).
    """
    with Image.open(path) as im:
        raw = np.asarray(im)
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise DatasetError(f"{path} is not an 8-bit single-channel {what}")
    return raw


def lookup_table(size: int, fill: int, pairs: dict[int, int], dtype: DTypeLike) -> np.ndarray:
    """(size,) array: ``fill`` everywhere, ``table[src] = dst`` for the given pairs."""
    table = np.full(size, fill, dtype=dtype)
    for src, dst in pairs.items():
        table[src] = dst
    return table


def run_tasks(
    spec: BenchmarkSpec,
    split: str,
    tasks: list[Task],
    convert: Callable[[Task], str],
    out: Path,
    workers: int,
    progress: bool,
    skipped_inputs: list[str] | None = None,
) -> PrepareReport:
    """Convert every task whose outputs are not both there yet, in ``workers`` processes.

    ``convert(task)`` is a module-level function (picklable) returning WRITTEN or DROPPED. Outputs
    are written atomically, so a file that exists is complete and an interrupted run resumes.
    """
    image_rel, label_rel = spec.split_dirs(split)
    report = PrepareReport(
        name=spec.name,
        split=split,
        image_dir=out / image_rel,
        label_dir=out / label_rel,
        found=len(tasks),
        expected=spec.splits[split],
        skipped_inputs=list(skipped_inputs or ()),
    )
    todo = [t for t in tasks if not (os.path.exists(t.image_out) and os.path.exists(t.label_out))]
    report.existing = len(tasks) - len(todo)
    report.image_dir.mkdir(parents=True, exist_ok=True)
    report.label_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"prepare {spec.name}/{split}", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            _tally(report, map(convert, todo), bar)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, min(64, len(todo) // (workers * 8)))
                _tally(report, pool.map(convert, todo, chunksize=chunk), bar)
    finally:
        bar.close()
    missing = [t.label_out for t in tasks if not os.path.exists(t.label_out)]
    if len(missing) != report.dropped:
        raise DatasetError(
            f"{len(missing) - report.dropped} prepared label maps are missing after converting "
            f"{spec.name}/{split} (first: {missing[0]}); rerun `ovss prepare` to resume"
        )
    return report


def _tally(report: PrepareReport, statuses: Iterable[str], bar: tqdm) -> None:
    for status in statuses:
        if status == DROPPED:
            report.dropped += 1
        else:
            report.written += 1
        bar.update(1)
