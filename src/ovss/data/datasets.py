"""Datasets of (image, label map) pairs: custom folders and the prepared benchmarks.

Every dataset is a sequence of items ``{"image": (H, W, 3) uint8 RGB, "label": (H, W) int64,
"name": file stem}`` read with :func:`ovss.data.io.read_image` / :func:`~ovss.data.io.read_label`,
in a fixed order (sorted by stem), so ``dataset[i]`` is the same image on every rank and every run.

* :class:`FolderDataset` -- your own data: ``root/images/<stem>.<jpg|png|...>`` next to
  ``root/labels/<stem>.<png|tif>``, plus a class-name file.
* :class:`BenchmarkDataset` -- a benchmark written by ``ovss prepare`` (layout and label facts from
  :mod:`ovss.data.catalog`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ovss.data.catalog import BenchmarkSpec, get_benchmark
from ovss.data.io import read_image, read_label
from ovss.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File endings :class:`FolderDataset` accepts as images (case-insensitive)."""

LABEL_EXTENSIONS = (".png", ".tif", ".tiff")
"""File endings :class:`FolderDataset` accepts as label maps (lossless, single channel)."""


class SegmentationDataset:
    """An ordered list of (image path, label path) pairs with the label facts needed to score them.

    Args:
        items: ``(image_path, label_path)`` pairs, in dataset order.
        class_names: class strings in label-id order (index = label id); a string may hold
            comma-separated synonyms.
        num_classes: K, the label ids of the ground truth are 0..K-1 (default: ``len(class_names)``).
        ignore_index: label value that is not scored (255, or 65535 for 16-bit labels).
        name: a short name for messages and reports.

    Raises:
        DatasetError: the ignore index is a valid class id.
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        num_classes: int | None = None,
        ignore_index: int = 255,
        name: str = "dataset",
    ) -> None:
        self.items = [(Path(image), Path(label)) for image, label in items]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names) if num_classes is None else int(num_classes)
        self.ignore_index = int(ignore_index)
        self.name = name
        if 0 <= self.ignore_index < self.num_classes:
            raise DatasetError(
                f"{name}: ignore_index {ignore_index} is a class id (there are {self.num_classes} "
                "classes); use a value >= the number of classes, e.g. 255 or 65535"
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Read item ``index``: ``{"image": (H, W, 3) uint8, "label": (H, W) int64, "name": str}``.

        Raises:
            IndexError: index out of range.
            ImageReadError: a file is missing or undecodable.
            DatasetError: image and label sizes differ.
        """
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{self.name}: image {image_path} is {image.shape[0]}x{image.shape[1]} but its label "
                f"{label_path} is {label.shape[0]}x{label.shape[1]}; re-create the label map at the "
                "image size"
            )
        return {"image": image, "label": label, "name": image_path.stem}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, items={len(self)}, classes={self.num_classes}, "
            f"ignore_index={self.ignore_index})"
        )


class FolderDataset(SegmentationDataset):
    """Custom data: images and label maps in two folders, paired by file stem.

    Layout::

        root/images/0001.jpg   root/labels/0001.png   (8-bit/palette PNG or 16-bit PNG/TIFF)
        root/images/0002.png   root/labels/0002.png
        classes.txt            one class per line ("sofa, couch" = synonyms), or a JSON list

    Args:
        root: the dataset folder.
        classes_file: class-name file (``.txt`` one class per line, ``#`` comments, or ``.json``
            list); a relative path is looked up in the working directory, then under ``root``.
        images: image sub-folder of ``root``.
        labels: label sub-folder of ``root``.
        ignore_index: label value that is not scored.

    Raises:
        DatasetError: a folder is missing or empty, an image has no label (or a label no image),
            or two files share a stem. The message lists what was expected.
        VocabularyError: the class file is missing or malformed.
    """

    def __init__(
        self,
        root: str | Path,
        classes_file: str | Path,
        images: str = "images",
        labels: str = "labels",
        ignore_index: int = 255,
    ) -> None:
        from ovss.vocab.vocabulary import parse_vocabulary

        root = Path(root)
        classes_path = Path(classes_file)
        if not classes_path.is_absolute() and not classes_path.exists() and (root / classes_path).exists():
            classes_path = root / classes_path
        inline = isinstance(classes_file, str) and ";" in classes_file and not classes_path.exists()
        # "a; b; c" inline: label value = position, as in a file (was: "class file a; b does not exist")
        vocabulary = parse_vocabulary(classes_file if inline else classes_path)
        image_dir, label_dir = root / images, root / labels
        layout = f"{image_dir}/<stem>{{{','.join(IMAGE_EXTENSIONS)}}} with {label_dir}/<stem>{{.png,.tif}}"
        for folder, what in ((image_dir, "images"), (label_dir, "label maps")):
            if not folder.is_dir():
                raise DatasetError(f"{what} folder {folder} does not exist; expected {layout}")
        items = pair_by_stem(
            list_files(image_dir, IMAGE_EXTENSIONS),
            list_files(label_dir, LABEL_EXTENSIONS),
            where=str(root),
            expected=layout,
        )
        names = [c.text for c in vocabulary.classes]
        super().__init__(items, names, ignore_index=ignore_index, name=root.name or str(root))
        self.root = root
        self.vocabulary = vocabulary


class BenchmarkDataset(SegmentationDataset):
    """A benchmark prepared by ``ovss prepare`` (layout from :mod:`ovss.data.catalog`).

    Reads ``<root>/<name>/images/<split>/*<image_ext>`` and ``<root>/<name>/labels/<split>/
    *<label_ext>`` (uint8 PNG with ignore 255, or uint16 TIFF with ignore 65535), paired by stem.

    Args:
        name: benchmark name or alias ("ade847", "A-847", "pc59", ...).
        root: the data root given to ``ovss prepare --out``.
        split: "val" (the benchmark) or another split the catalog lists.
        variant: class-name list to expose as ``class_names`` ("plain", "san", "catseg").
        strict: raise (instead of warning) when the number of prepared images differs from the
            catalog's count.

    Raises:
        DatasetError: unknown benchmark, not prepared (the message gives the ``ovss prepare``
            command), or images and labels that do not pair up.
    """

    def __init__(
        self,
        name: str,
        root: str | Path,
        split: str = "val",
        variant: str = "plain",
        strict: bool = False,
    ) -> None:
        spec = get_benchmark(name)
        root = Path(root)
        image_rel, label_rel = spec.split_dirs(split)
        image_dir, label_dir = root / image_rel, root / label_rel
        command = f"ovss prepare {spec.name} --raw <folder with {spec.raw_folder}> --out {root}"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DatasetError(
                    f"{spec.display_name} is not prepared under {root}: {folder} does not exist; "
                    f"run: {command}"
                )
        layout = f"{image_dir}/<stem>{spec.image_ext} with {label_dir}/<stem>{spec.label_ext}"
        items = pair_by_stem(
            list_files(image_dir, (spec.image_ext,)),
            list_files(label_dir, (spec.label_ext,)),
            where=f"{spec.name}/{split} under {root}",
            expected=layout,
            fix=f"re-run `{command}` (it resumes and completes missing files)",
        )
        expected = spec.splits[split]
        if len(items) != expected:
            message = (
                f"{spec.name}/{split} under {root} has {len(items)} image/label pairs, the catalog "
                f"expects {expected}; results are not comparable to published numbers until "
                f"`{command}` completes"
            )
            if strict:
                raise DatasetError(message)
            warnings.warn(message, stacklevel=2)
        super().__init__(
            items, spec.class_names(variant), num_classes=spec.num_classes,
            ignore_index=spec.ignore_index, name=spec.name,
        )
        self.spec: BenchmarkSpec = spec
        self.root = root
        self.split = split


def pair_by_stem(
    images: Iterable[Path],
    labels: Iterable[Path],
    where: str,
    expected: str,
    fix: str = "add the missing files or remove the strays",
) -> list[tuple[Path, Path]]:
    """Pair image and label files by stem, sorted by stem.

    Raises:
        DatasetError: no images, duplicate stems, or unpaired files (up to 5 listed, plus a count).
    """
    image_by_stem = _by_stem(images, "image", where)
    label_by_stem = _by_stem(labels, "label", where)
    if not image_by_stem:
        raise DatasetError(f"no images found in {where}; expected {expected}")
    unlabelled = sorted(set(image_by_stem) - set(label_by_stem))
    orphans = sorted(set(label_by_stem) - set(image_by_stem))
    problems = []
    if unlabelled:
        problems.append(f"{len(unlabelled)} images without a label map ({_sample(unlabelled)})")
    if orphans:
        problems.append(f"{len(orphans)} label maps without an image ({_sample(orphans)})")
    if problems:
        raise DatasetError(f"{where}: {' and '.join(problems)}; expected {expected}; {fix}")
    return [(image_by_stem[s], label_by_stem[s]) for s in sorted(image_by_stem)]


def list_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Plain files of ``folder`` (not recursive, hidden and temporary files skipped) by ending."""
    allowed = {e.lower() for e in extensions}
    return [
        p for p in folder.iterdir()
        if p.suffix.lower() in allowed and not p.name.startswith(".") and p.is_file()
    ]


def _by_stem(paths: Iterable[Path], what: str, where: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise DatasetError(
                f"{where}: two {what} files share the stem {path.stem!r} ({found[path.stem].name}, "
                f"{path.name}); keep one per stem"
            )
        found[path.stem] = path
    return found


def _sample(stems: list[str], n: int = 5) -> str:
    head = ", ".join(stems[:n])
    return head + (f", ... {len(stems) - n} more" if len(stems) > n else "")
