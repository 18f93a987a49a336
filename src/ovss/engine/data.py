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
from ovss.data.io import read_image, read_label
from ovss.engine.config import DataSection
from ovss.errors import DatasetError
from ovss.vocab.vocabulary import Vocabulary, parse_vocabulary

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png", ".tif", ".tiff")


def _folders(cfg: DataSection) -> tuple[Path, Path, tuple[str, ...], tuple[str, ...]]:
    root = Path(cfg.root).expanduser()
    if not cfg.root:
        raise DatasetError("data.root is not set; pass --set data.root=DIR (prepared data or dataset folder)")
    if cfg.benchmark is None:
        return root / cfg.image_dir, root / cfg.label_dir, IMAGE_EXTS, LABEL_EXTS
    from ovss.data.catalog import get_benchmark

    spec = get_benchmark(cfg.benchmark)
    image_dir, label_dir = spec.split_dirs(cfg.split)
    return root / image_dir, root / label_dir, (spec.image_ext,), (spec.label_ext,)


def image_label_pairs(cfg: DataSection) -> list[tuple[Path, Path]]:
    """(image, label) paths paired by file stem, sorted by stem.

    Raises:
        DatasetError: a folder is missing, holds no images, or an image has no label map.
    """
    image_dir, label_dir, image_exts, label_exts = _folders(cfg)
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            hint = "run 'ovss prepare'" if cfg.benchmark else f"create {cfg.image_dir}/ and {cfg.label_dir}/"
            raise DatasetError(f"{what} folder {folder} does not exist; check data.root ({hint})")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in image_exts)
    if not images:
        raise DatasetError(f"{image_dir} holds no images ({', '.join(image_exts)})")
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() in label_exts}
    missing = [p.name for p in images if p.stem not in labels]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) in {image_dir} have no label map in {label_dir} (first: {missing[0]}); "
            "every image needs <stem>.png there"
        )
    pairs = [(p, labels[p.stem]) for p in images]
    return pairs[: cfg.max_images] if cfg.max_images else pairs


def vocabulary(cfg: DataSection) -> Vocabulary:
    """Class names of the label ids (``classes``, else the benchmark's ``class_variant`` list)."""
    if cfg.classes is not None:
        return parse_vocabulary(cfg.classes)
    if cfg.benchmark is None:
        raise DatasetError("a custom dataset needs class names: pass --set data.classes=FILE (one per line)")
    from ovss.data.catalog import get_benchmark

    return parse_vocabulary(get_benchmark(cfg.benchmark).class_names(cfg.class_variant))


class TrainDataset(torch.utils.data.Dataset):
    """Augmented training samples, keyed by ``(index, position)`` from the :class:`ResumableSampler`.

    Args:
        pairs: (image, label) paths.
        augment_cfg: the augmentation pipeline.
        seed: run seed; a sample's augmentation draws from ``default_rng([seed, position])``.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], augment_cfg: AugmentConfig, seed: int = 0) -> None:
        self.pairs, self.cfg, self.seed = pairs, augment_cfg, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, S, S) uint8 RGB image and (S, S) int64 labels of sample ``key = (index, position)``."""
        index, position = key
        image_path, label_path = self.pairs[index]
        image, label = read_image(image_path), read_label(label_path)
        image, label = augment(image, label, self.cfg, np.random.default_rng([self.seed, position]))
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(label)


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into (B, 3, S, S) uint8 images and (B, S, S) int64 labels."""
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
