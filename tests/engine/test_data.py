"""Training data folders and the augmented dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.engine.config import DataSection
from ovss.engine.data import TrainDataset, collate, image_label_pairs, vocabulary
from ovss.engine.recipes import load_config
from ovss.errors import DatasetError

from ._synthetic import CLASSES, make_shapes


def test_custom_layout_pairs_and_classes(tmp_path):
    classes = make_shapes(tmp_path, count=3, size=32)
    cfg = DataSection(root=str(tmp_path), benchmark=None, classes=str(classes))
    pairs = image_label_pairs(cfg)
    assert [(i.name, l.name) for i, l in pairs] == [(f"img00{k}.png", f"img00{k}.png") for k in range(3)]
    assert vocabulary(cfg).names == list(CLASSES)
    assert len(image_label_pairs(DataSection(root=str(tmp_path), benchmark=None, max_images=2))) == 2


def test_benchmark_layout(tmp_path):
    images, labels = tmp_path / "coco171" / "images" / "train", tmp_path / "coco171" / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / "a.png")
    cfg = DataSection(root=str(tmp_path), benchmark="coco171", split="train", class_variant="san")
    assert [p[0].name for p in image_label_pairs(cfg)] == ["a.jpg"]
    assert len(vocabulary(cfg)) == 171


def test_data_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="data.root is not set"):
        image_label_pairs(DataSection(root="", benchmark=None))
    with pytest.raises(DatasetError, match="ovss prepare"):
        image_label_pairs(DataSection(root=str(tmp_path), benchmark="coco171"))
    make_shapes(tmp_path, count=2, size=16)
    (tmp_path / "labels" / "img001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 images without a label map \(img001\)"):
        image_label_pairs(DataSection(root=str(tmp_path), benchmark=None))
    with pytest.raises(DatasetError, match="data.classes=FILE"):
        vocabulary(DataSection(root=str(tmp_path), benchmark=None))


def test_dataset_samples_depend_only_on_seed_and_position(tmp_path):
    make_shapes(tmp_path, count=3, size=48)
    cfg = load_config("tiny-sed").augment.override("crop_size=32", "photometric=true")
    pairs = image_label_pairs(DataSection(root=str(tmp_path), benchmark=None))
    ds = TrainDataset(pairs, cfg, seed=7)
    a, b = ds[(1, 12)], TrainDataset(pairs, cfg, seed=7)[(1, 12)]
    assert a[0].shape == (3, 32, 32) and a[0].dtype == torch.uint8 and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds[(1, 13)][0], a[0])
    images, labels = collate([a, ds[(0, 3)]])
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2, 32, 32)
