"""Evaluation during training: mIoU & co. by hand on a known prediction, RNG and train mode kept, shards."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.engine.evaluate import evaluate
from ovss.models.base import ModelConfig, ResizeConfig, SegmentationModel
from ovss.vocab.vocabulary import Vocabulary


class _RedIsZero(SegmentationModel):
    """Class 0 where the red channel is high, class 1 elsewhere; draws from every RNG like dropout would."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(
            templates="single", synonyms="first", test_resize=ResizeConfig(mode="none"),
            pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0),
        )
        self.weight = torch.nn.Parameter(torch.ones(()))

    def encode_text(self, tokens):
        return torch.ones(tokens.shape[1], 2)

    def predict(self, images, text, image_size, output_size, **options):
        torch.rand(1)
        np.random.rand()
        random.random()
        h, w = image_size
        red = images[:, :1, :h, :w] / 255
        return torch.cat([red, 1 - red], dim=1)


def _pair(folder, name: str, red_columns: int, label: np.ndarray):
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :red_columns, 0] = 255
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(label.astype(np.uint8)).save(folder / f"{name}_label.png")
    return folder / f"{name}.png", folder / f"{name}_label.png"


def _labels() -> np.ndarray:
    """Left 3 columns 0, the rest 1; the last row unlabelled (255)."""
    label = np.ones((8, 8), np.uint8)
    label[:, :3] = 0
    label[7] = 255
    return label


def test_metrics_by_hand(tmp_path):
    """Predicted: columns 0-3 class 0, 4-7 class 1. Labelled (rows 0-6): columns 0-2 class 0.
    Class 0: TP 21, predicted 28, labelled 21 -> IoU 75%, acc 100%. Class 1: TP 28, predicted 28,
    labelled 35 -> IoU 80%, acc 80%. pACC 49/56, fwIoU 21/56 x 75 + 35/56 x 80."""
    pairs = [_pair(tmp_path, "a", 4, _labels())]
    metrics = evaluate(_RedIsZero(), pairs, Vocabulary.from_names(["red", "dark"]), torch.device("cpu"))
    assert metrics["mIoU"] == pytest.approx(77.5)
    assert metrics["mACC"] == pytest.approx(90.0)
    assert metrics["pACC"] == pytest.approx(100 * 49 / 56)
    assert metrics["fwIoU"] == pytest.approx(21 / 56 * 75 + 35 / 56 * 80)


def test_rng_state_and_train_mode_are_restored(tmp_path):
    pairs = [_pair(tmp_path, "a", 4, _labels())]
    model = _RedIsZero().train()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    evaluate(model, pairs, Vocabulary.from_names(["red", "dark"]), torch.device("cpu"))
    after = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    assert torch.equal(after[0], torch.rand(2)) and after[1:] == (np.random.rand(), random.random())
    assert model.training
    evaluate(model.eval(), pairs, Vocabulary.from_names(["red", "dark"]), torch.device("cpu"))
    assert not model.training


def test_a_rank_scores_its_share_of_the_images(tmp_path):
    """Rank r of w takes pairs[r::w] (no process group here: the sum over ranks is this rank's own)."""
    all_right = _pair(tmp_path, "a", 3, _labels())  # prediction equals the labels
    half = _pair(tmp_path, "b", 8, _labels())  # everything predicted as class 0
    pairs = [all_right, half]
    vocab = Vocabulary.from_names(["red", "dark"])
    first = evaluate(_RedIsZero(), pairs, vocab, torch.device("cpu"), rank=0, world_size=2)
    second = evaluate(_RedIsZero(), pairs, vocab, torch.device("cpu"), rank=1, world_size=2)
    assert first["mIoU"] == pytest.approx(100.0) and first["pACC"] == pytest.approx(100.0)
    # b: class 0 IoU 21/56, class 1 IoU 0 -> mIoU 18.75; pACC 21/56
    assert second["mIoU"] == pytest.approx(50 * 21 / 56) and second["pACC"] == pytest.approx(100 * 21 / 56)
