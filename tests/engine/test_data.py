"""Training data folders, the augmented dataset, the task adapters' inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.engine.config import DataSection
from ovss.engine.data import TrainDataset, collate, image_label_pairs, vocabulary
from ovss.engine.recipes import load_config
from ovss.errors import ConfigError, DatasetError

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


def test_task_normalises_and_pads_like_detectron2(tmp_path):
    from ovss.engine.build import build_training_model
    from ovss.engine.tasks import build_task
    from ovss.vocab.vocabulary import parse_vocabulary

    cfg = load_config("tiny-san")
    model, family = build_training_model(cfg.model)
    task = build_task(family, model, parse_vocabulary("a; b"), cfg.loss)
    x = torch.full((1, 3, 40, 50), 128, dtype=torch.uint8)
    out = task.normalise(x)
    assert out.shape == (1, 3, 64, 64)  # SAN pads to a multiple of 32 with 0
    mean, std = torch.tensor(model.config.pixel_mean), torch.tensor(model.config.pixel_std)
    torch.testing.assert_close(out[0, :, 0, 0], (128 - mean) / std)
    assert out[..., 40:, :].abs().max() == 0 and out[..., :, 50:].abs().max() == 0
    labels = task.pad_labels(torch.zeros(1, 40, 50, dtype=torch.int64))
    assert labels.shape == (1, 64, 64) and (labels[:, 40:] == 255).all() and (labels[:, :40, :50] == 0).all()
    assert task.text.shape == (2, model.config.clip.embed_dim)
    assert task.loss_weights() == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def test_catseg_text_is_reencoded_with_gradients_and_unused_q_is_reported():
    from ovss.engine.build import build_training_model
    from ovss.engine.tasks import build_task
    from ovss.engine.trainer import _check_all_used
    from ovss.models.losses import weighted_sum
    from ovss.vocab.vocabulary import parse_vocabulary

    cfg = load_config("tiny-catseg")
    model, family = build_training_model(cfg.model)
    task = build_task(family, model, parse_vocabulary("cat; sofa, couch"), cfg.loss)
    assert task.tokens.shape[:2] == (1, 2)  # one template, two classes
    x, y = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), torch.randint(0, 2, (1, 64, 64))
    weighted_sum(task.losses(task(x), y), task.loss_weights()).backward()
    assert model.clip.text.transformer.resblocks[0].attn.q_proj_weight.grad is not None
    # the dense last block never uses its trainable q weight: DDP must be told (find_unused_parameters)
    with pytest.raises(ConfigError, match=r"resblocks\.\d+\.attn\.q_proj_weight"):
        _check_all_used(model)
    assert load_config("catseg-vit-b16").find_unused_parameters

