"""Training tasks (per-family loss wiring): normalisation, padding, text, losses by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ovss.engine.config import LossConfig
from ovss.engine.recipes import load_config
from ovss.engine.tasks import CATSegV1Task, build_task
from ovss.errors import ConfigError
from ovss.models.build import build_model
from ovss.models.catseg_v1 import catseg_v1_tiny
from ovss.vocab.vocabulary import Vocabulary


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


def test_mmseg_cross_entropy_option_by_hand() -> None:
    torch.manual_seed(0)
    model = build_model(catseg_v1_tiny().override("resnet.depths=[1,1,1]"))
    vocab = Vocabulary.from_names(["a", "b", "c"])
    task = build_task("catseg_v1", model, vocab, LossConfig(bce_weights=(1.0,), semantic_loss="ce"))
    assert isinstance(task, CATSegV1Task) and task.text.shape == (3, 80, 32)
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    labels[0, :4] = 1
    zeros = torch.zeros(1, 3, 4, 4)  # uniform softmax: -log(1/3) on every counted pixel
    assert math.isclose(float(task.losses(zeros, labels)["loss_sem_seg"]), math.log(3), rel_tol=1e-6)
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 1] = 100.0  # right everywhere it counts; the ignored half must not count
    assert float(task.losses(logits, labels)["loss_sem_seg"]) < 1e-6
