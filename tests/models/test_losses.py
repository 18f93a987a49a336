"""Losses against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovss.errors import DatasetError
from ovss.models.losses import (
    SetCriterion,
    class_loss,
    dice_loss,
    masks_from_labels,
    point_sample,
    semantic_bce_loss,
    sigmoid_bce_loss,
    uncertain_point_coords,
    weighted_sum,
)
from ovss.models.matcher import HungarianMatcher


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_point_sample_bilinear_align_corners_false():
    m = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    coords = torch.tensor([[[0.5, 0.5], [0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.0, 0.25]]])
    out = point_sample(m, coords)
    # centre = mean of the four; pixel centres are at 0.25 / 0.75; x=0 is the left edge, half padding.
    assert out.shape == (1, 1, 5)
    torch.testing.assert_close(out[0, 0], torch.tensor([2.5, 1.0, 2.0, 3.0, 0.5]))


def test_sigmoid_bce_and_dice_hand_values():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    bce0 = math.log(2)
    bce1 = (softplus(-2.0) + softplus(1.0)) / 2
    assert sigmoid_bce_loss(logits, targets, 2.0).item() == pytest.approx((bce0 + bce1) / 2, abs=1e-6)
    p = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))]
    dice0 = 1 - (2 * 0.5 + 1) / (1.0 + 1 + 1)
    dice1 = 1 - (2 * (p[0] + p[1]) + 1) / (p[0] + p[1] + 2 + 1)
    assert dice_loss(logits, targets, 4.0).item() == pytest.approx((dice0 + dice1) / 4, abs=1e-6)


def test_class_loss_void_weight():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    target = torch.tensor([[0, 2]])  # second query unmatched -> void (index K = 2)
    ce0 = math.log(1 + 2 * math.exp(-2.0))
    ce1 = math.log(3)
    expected = (ce0 + 0.1 * ce1) / (1 + 0.1)
    assert class_loss(logits, target, 0.1).item() == pytest.approx(expected, abs=1e-6)
    assert class_loss(logits, target, 1.0).item() == pytest.approx((ce0 + ce1) / 2, abs=1e-6)


def test_semantic_bce_hand_value_and_ignore_is_all_negative():
    # K=2 classes, 1x2 image: pixel 0 is class 0, pixel 1 is ignored (all-zero target, still averaged).
    logits = torch.tensor([[[[1.0, 2.0]], [[-1.0, 0.0]]]])
    labels = torch.tensor([[[0, 255]]])
    expected = (softplus(-1.0) + softplus(2.0) + softplus(-1.0) + softplus(0.0)) / 4
    assert semantic_bce_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_semantic_bce_equals_official_onehot_formulation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 6, generator=g)
    labels = torch.randint(0, 5, (2, 12, 12), generator=g)
    labels[:, :3] = 255
    up = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    mask = labels != 255
    target = torch.zeros_like(up)
    target[mask] = F.one_hot(labels[mask], 5).float()
    ref = F.binary_cross_entropy_with_logits(up, target)
    assert semantic_bce_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)


def test_semantic_bce_rejects_out_of_range_labels():
    with pytest.raises(DatasetError, match="not class ids 0..1"):
        semantic_bce_loss(torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 7], [1, 255]]]))


def test_masks_from_labels():
    labels = torch.tensor([[[3, 3, 255], [1, 3, 1]]])
    ((classes, masks),) = masks_from_labels(labels)
    assert classes.tolist() == [1, 3]
    assert masks.tolist() == [[[0, 0, 0], [1, 0, 1]], [[1, 1, 0], [0, 1, 0]]]


def test_uncertain_points_prefer_uncertain_region():
    torch.manual_seed(0)
    logits = torch.full((1, 1, 4, 4), 10.0)
    logits[..., :2] = 0.0  # left half uncertain (|logit| = 0)
    coords = uncertain_point_coords(logits, num_points=100, oversample_ratio=6.0, importance_sample_ratio=1.0)
    assert coords.shape == (1, 100, 2)
    assert bool((coords[0, :, 0] < 0.375 + 1e-6).all())  # x at or left of the column-1 pixel centre
    mixed = uncertain_point_coords(logits, num_points=100, oversample_ratio=6.0, importance_sample_ratio=0.75)
    assert bool((mixed[0, :75, 0] < 0.375 + 1e-6).all())
    assert mixed.shape == (1, 100, 2) and bool((mixed >= 0).all() and (mixed <= 1).all())


def test_set_criterion_hand_values_with_deep_supervision():
    torch.manual_seed(0)
    # Two queries, one ground-truth mask covering the whole image: query 0 (logit +5) must be matched.
    masks = torch.tensor([5.0, -5.0]).view(1, 2, 1, 1).expand(1, 2, 8, 8).contiguous()
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.zeros(1, 16, 16, dtype=torch.int64)
    targets = masks_from_labels(labels)
    crit = SetCriterion(HungarianMatcher(num_points=64), num_points=64)
    aux = [{"pred_logits": logits, "pred_masks": masks}]
    out = {"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}
    losses = crit(out, targets, num_masks=1.0)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    ce0 = math.log(1 + 2 * math.exp(-3.0))
    assert losses["loss_ce"].item() == pytest.approx((ce0 + 0.1 * math.log(3)) / 1.1, abs=1e-6)
    # (the class term proves query 0 was matched; exact mask terms are checked in the next test)
    assert 0 < losses["loss_mask"].item() < softplus(5.0) and 0 < losses["loss_dice"].item() < 1
    total = weighted_sum(losses, {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0})
    expected = sum((2.0 if k.startswith("loss_ce") else 5.0) * v.item() for k, v in losses.items())
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_set_criterion_mask_terms_exact_on_interior_points(monkeypatch):
    # Force the sampled points into the interior so the BCE / dice are exactly the constant-map values.
    import ovss.models.losses as losses_mod

    monkeypatch.setattr(
        losses_mod, "uncertain_point_coords", lambda logits, n, *a: torch.full((logits.shape[0], n, 2), 0.5)
    )
    masks = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4).contiguous()
    logits = torch.zeros(1, 2, 3)
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[:, :, 2:] = 1  # class 0 left half, class 1 right half; points at the centre read 0.5
    crit = SetCriterion(HungarianMatcher(class_weight=0.0, num_points=16), num_points=10)
    losses = crit({"pred_logits": logits, "pred_masks": masks}, masks_from_labels(labels), num_masks=2.0)
    bce = (0.5 * softplus(-2.0) + 0.5 * softplus(2.0)) + (0.5 * softplus(1.0) + 0.5 * softplus(-1.0))
    assert losses["loss_mask"].item() == pytest.approx(bce / 2.0, abs=1e-6)
    p0, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    dice = sum(1 - (2 * 10 * p * 0.5 + 1) / (10 * p + 10 * 0.5 + 1) for p in (p0, p1))
    assert losses["loss_dice"].item() == pytest.approx(dice / 2.0, abs=1e-6)


def test_set_criterion_no_ground_truth_gives_zero_mask_loss_with_grad():
    masks = torch.randn(1, 3, 4, 4, requires_grad=True)
    logits = torch.randn(1, 3, 4, requires_grad=True)
    labels = torch.full((1, 8, 8), 255, dtype=torch.int64)
    losses = SetCriterion(HungarianMatcher(num_points=16), num_points=16)(
        {"pred_logits": logits, "pred_masks": masks}, masks_from_labels(labels), 1.0
    )
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    ref = F.cross_entropy(logits[0], torch.full((3,), 3))
    assert losses["loss_ce"].item() == pytest.approx(ref.item(), rel=1e-6)
    sum(losses.values()).backward()
    assert masks.grad is not None and logits.grad is not None
