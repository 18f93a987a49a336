"""Training data: image/label pairs of a folder, the augmented dataset and its class names.

Two layouts are read (``DataSection``):

* a prepared benchmark (``benchmark="coco171"``, ``split="train"``): ``ovss prepare`` writes
  ``ROOT/<name>/images/<split>/*.jpg`` and ``ROOT/<name>/labels/<split>/*.png``;
* a custom dataset (``benchmark=null``): ``ROOT/images/*`` (any image format Pillow reads) and
  ``ROOT/labels/<stem>.png`` (or ``.tif``), label values = class index in the ``classes`` list,
  ``ignore_index`` (255) for unlabelled pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ovss.data.augment import AugmentConfig, augment
from ovss.data.datasets import (
    IMAGE_EXTENSIONS,
    LABEL_EXTENSIONS,
    BenchmarkDataset,
    list_files,
    pair_by_stem,
)
from ovss.data.io import read_image, read_label
from ovss.engine.config import DataSection
from ovss.errors import DatasetError
from ovss.vocab.vocabulary import Vocabulary, parse_vocabulary


def image_label_pairs(cfg: DataSection) -> list[tuple[Path, Path]]:
    """(image, label) paths paired by file stem, sorted by stem (``cfg.max_images`` first ones).

    Raises:
        DatasetError: data.root unset, a folder is missing or empty, or files are unpaired.
    """
    if not cfg.root:
        raise DatasetError("data.root is not set; pass --set data.root=DIR (prepared data or dataset folder)")
    root = Path(cfg.root).expanduser()
    if cfg.benchmark is not None:
        pairs = BenchmarkDataset(cfg.benchmark, root, split=cfg.split).items
    else:
        image_dir, label_dir = root / cfg.image_dir, root / cfg.label_dir
        for folder, what in ((image_dir, "image"), (label_dir, "label")):
            if not folder.is_dir():
                raise DatasetError(
                    f"{what} folder {folder} does not exist; check data.root "
                    f"(create {cfg.image_dir}/ and {cfg.label_dir}/)"
                )
        pairs = pair_by_stem(
            list_files(image_dir, IMAGE_EXTENSIONS),
            list_files(label_dir, LABEL_EXTENSIONS),
            where=str(root),
            expected=f"{image_dir}/<stem>.jpg with {label_dir}/<stem>.png",
        )
    return pairs[: cfg.max_images] if cfg.max_images else pairs


def vocabulary(cfg: DataSection) -> Vocabulary:
    """Class names of the label ids (``classes``, else the benchmark's ``class_variant`` list)."""
    if cfg.classes is not None:
        return parse_vocabulary(cfg.classes)
    if cfg.benchmark is None:
        raise DatasetError("a custom dataset needs class names: pass --set data.classes=FILE (one per line)")
    from ovss.data.catalog import get_benchmark

    return parse_vocabulary(get_benchmark(cfg.benchmark).class_names(cfg.class_variant))


def check_label_values(label: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Raise :class:`DatasetError` naming ``path`` and the values when ``label`` (H, W) holds a value
    that is neither a class id in [0, ``num_classes``) nor ``ignore_index``."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise DatasetError(
            f"label file {path} holds values {shown}, which are not class ids 0..{num_classes - 1} (the "
            f"class list has {num_classes} names) nor the ignore value {ignore_index}; fix the labels or "
            "the class list"
        )


class TrainDataset(torch.utils.data.Dataset):
    """Augmented training samples, keyed by ``(index, position)`` from the :class:`ResumableSampler`.

    Args:
        pairs: (image, label) paths.
        augment_cfg: the augmentation pipeline.
        seed: run seed; a sample's augmentation draws from ``default_rng([seed, position])``.
        num_classes: K; when given, every label value must be in [0, K) or ``ignore_index``
            (checked per sample, before augmentation; the error names the file and the values).
        ignore_index: label value without a class.
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        augment_cfg: AugmentConfig,
        seed: int = 0,
        num_classes: int | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.pairs, self.cfg, self.seed = pairs, augment_cfg, seed
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, S, S) uint8 RGB image and (S, S) int64 labels of sample ``key = (index, position)``."""
        index, position = key
        image_path, label_path = self.pairs[index]
        image, label = read_image(image_path), read_label(label_path)
        if self.num_classes is not None:
            check_label_values(label, self.num_classes, self.ignore_index, label_path)
        image, label = augment(image, label, self.cfg, np.random.default_rng([self.seed, position]))
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(label)


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into (B, 3, S, S) uint8 images and (B, S, S) int64 labels."""
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
