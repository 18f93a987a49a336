"""Hungarian matcher: hand-computed costs and optimality against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ovss.models.matcher import HungarianMatcher, match_cost, pairwise_dice, pairwise_sigmoid_bce


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pairwise_costs_hand_values():
    logits = torch.tensor([[0.0, 0.0], [3.0, -3.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    bce = pairwise_sigmoid_bce(logits, targets)
    assert bce.shape == (2, 3)
    assert bce[0, 0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert bce[1, 0].item() == pytest.approx((softplus(-3.0) + softplus(-3.0)) / 2, abs=1e-6)
    assert bce[1, 1].item() == pytest.approx((softplus(-3.0) + softplus(3.0)) / 2, abs=1e-6)
    dice = pairwise_dice(logits, targets)
    p = 1 / (1 + math.exp(-3.0))
    assert dice[0, 2].item() == pytest.approx(1 - 1 / (1.0 + 1), abs=1e-6)
    assert dice[1, 0].item() == pytest.approx(1 - (2 * p + 1) / (p + (1 - p) + 1 + 1), abs=1e-6)


def test_match_cost_hand_value():
    # Constant maps sampled at interior points: every point reads the constant.
    pred_logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    pred_masks = torch.tensor([2.0, -2.0]).view(2, 1, 1).expand(2, 4, 4)
    gt_classes = torch.tensor([1])
    gt_masks = torch.ones(1, 8, 8)
    coords = torch.full((5, 2), 0.5)
    cost = match_cost(pred_logits, pred_masks, gt_classes, gt_masks, 2.0, 5.0, 5.0, point_coords=coords)
    for q, (logit, cls_logits) in enumerate(((2.0, [1.0, 0.0, 0.0]), (-2.0, [0.0, 2.0, 0.0]))):
        prob = math.exp(cls_logits[1]) / sum(math.exp(v) for v in cls_logits)
        p = 1 / (1 + math.exp(-logit))
        dice = 1 - (2 * 5 * p + 1) / (5 * p + 5 + 1)
        expected = 5 * softplus(-logit) + 2 * -prob + 5 * dice
        assert cost[q, 0].item() == pytest.approx(expected, abs=1e-5)


def _brute_force(cost: torch.Tensor) -> float:
    q, n = cost.shape
    perms = itertools.permutations(range(q), n)
    totals = (sum(cost[r, c].item() for r, c in zip(rows, range(n))) for rows in perms)
    return min(totals)


@pytest.mark.parametrize("seed", range(6))
def test_matcher_is_optimal_vs_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, n = 5, 4, 3
    logits = torch.randn(1, q, k + 1, generator=g) * 2
    masks = torch.randn(1, q, 6, 6, generator=g) * 3
    classes = torch.randint(0, k, (n,), generator=g)
    gt = (torch.rand(n, 12, 12, generator=g) > 0.5).float()
    matcher = HungarianMatcher(num_points=50)
    torch.manual_seed(100 + seed)
    ((rows, cols),) = matcher(logits, masks, [(classes, gt)])
    torch.manual_seed(100 + seed)  # the same random points as the matcher drew
    cost = match_cost(logits[0], masks[0], classes, gt, num_points=50)
    assert len(rows) == n and sorted(cols.tolist()) == list(range(n))
    assert len(set(rows.tolist())) == n
    total = sum(cost[r, c].item() for r, c in zip(rows.tolist(), cols.tolist()))
    assert total == pytest.approx(_brute_force(cost), abs=1e-5)


def test_matcher_handles_no_targets_and_runs_without_grad():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    masks = torch.randn(2, 3, 4, 4, requires_grad=True)
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, 8, 8))
    targets = [empty, (torch.tensor([2]), torch.ones(1, 8, 8))]
    out = HungarianMatcher(num_points=10)(logits, masks, targets)
    assert out[0][0].numel() == 0 and out[0][1].numel() == 0
    assert out[1][1].tolist() == [0] and out[1][0].dtype == torch.int64


def test_matcher_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(0.0, 0.0, 0.0)
