"""Hungarian matching of mask proposals to ground-truth masks (Mask2Former ``HungarianMatcher``).

Per image, the cost of assigning query ``q`` to ground-truth mask ``j`` is

``C[q, j] = w_class * -softmax(logits[q])[class_j] + w_mask * BCE(q, j) + w_dice * dice(q, j)``

where BCE and dice are computed on ``num_points`` uniformly random points shared by every
prediction and ground truth of the image (bilinear point sampling, ``align_corners=False``). The
assignment minimising the total cost is found with ``scipy.optimize.linear_sum_assignment`` on
the CPU. Everything runs without gradients, in float32 (autocast off), as SAN's official matcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovss.models.losses import point_sample


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (N, P) binary targets at the same points.

    Returns:
        (Q, N) mean over the P points of BCE-with-logits(logits[q], targets[j]).
    """
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every prediction against every target, ``1 - (2 p.t + 1) / (sum p + sum t + 1)``.

    Args:
        logits: (Q, P) mask logits (sigmoid is applied here).
        targets: (N, P) binary targets.

    Returns:
        (Q, N).
    """
    probs = logits.sigmoid()
    numerator = 2.0 * (probs @ targets.T)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


@torch.no_grad()
def match_cost(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    gt_classes: torch.Tensor,
    gt_masks: torch.Tensor,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    num_points: int = 12544,
    point_coords: torch.Tensor | None = None,
) -> torch.Tensor:
    """The matching cost matrix of one image.

    Args:
        pred_logits: (Q, K+1) class logits (last column = void).
        pred_masks: (Q, h, w) mask logits.
        gt_classes: (N,) int64 class ids in [0, K).
        gt_masks: (N, H, W) binary masks (any float/bool dtype).
        class_weight, mask_weight, dice_weight: cost weights (SAN: 2, 5, 5).
        num_points: random points shared by all masks (SAN: 112 * 112).
        point_coords: (P, 2) points in [0, 1] as (x, y); drawn uniformly when None.

    Returns:
        (Q, N) float32 cost.
    """
    with torch.autocast(pred_masks.device.type, enabled=False):
        pred_logits, pred_masks, gt_masks = pred_logits.float(), pred_masks.float(), gt_masks.float()
        cost_class = -pred_logits.softmax(-1)[:, gt_classes]  # (Q, N)
        if point_coords is None:
            point_coords = torch.rand(num_points, 2, device=pred_masks.device)
        coords = point_coords.to(pred_masks.device, torch.float32)
        out = point_sample(pred_masks[:, None], coords.expand(pred_masks.shape[0], -1, -1))[:, 0]
        tgt = point_sample(gt_masks[:, None], coords.expand(gt_masks.shape[0], -1, -1))[:, 0]
        cost_mask = pairwise_sigmoid_bce(out, tgt)
        cost_dice = pairwise_dice(out, tgt)
    return mask_weight * cost_mask + class_weight * cost_class + dice_weight * cost_dice


class HungarianMatcher:
    """Mask2Former's matcher (``memory_efficient_forward``), one assignment per image.

    Args:
        class_weight, mask_weight, dice_weight: cost weights (SAN: 2, 5, 5).
        num_points: random points per image for the mask costs (SAN: 12544).
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0:
            raise ValueError("HungarianMatcher needs at least one non-zero cost weight")
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = num_points

    @torch.no_grad()
    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch.

        Args:
            pred_logits: (B, Q, K+1) class logits.
            pred_masks: (B, Q, h, w) mask logits.
            targets: per image (classes (N_i,) int64, masks (N_i, H, W)).

        Returns:
            per image (query indices (M,), target indices (M,)) int64 on the CPU, M = min(Q, N_i),
            sorted by query index.
        """
        from scipy.optimize import linear_sum_assignment

        indices = []
        for b, (classes, masks) in enumerate(targets):
            cost = match_cost(
                pred_logits[b], pred_masks[b], classes, masks, self.class_weight, self.mask_weight,
                self.dice_weight, self.num_points,
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows).long(), torch.as_tensor(cols).long()))
        return indices
