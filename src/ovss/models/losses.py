"""Training losses of the three model families.

* SAN trains Mask2Former's set losses (:class:`SetCriterion`): Hungarian matching of the Q mask
  proposals to the ground-truth masks, class cross-entropy with a down-weighted "void" class, and
  sigmoid BCE + dice on points sampled with importance sampling (PointRend), plus the same losses
  on every deep-supervision output (own matching each).
* CAT-Seg and SED train a per-class sigmoid BCE on the whole label map
  (:func:`semantic_bce_loss`): logits are upsampled bilinearly to the label size, the targets are
  one-hot over the K classes and ignore pixels get an all-zero target **and stay in the mean**
  (that is what the official code computes). SED adds the same loss on its three early-rejection
  heads (their features are detached inside the model).

Point coordinates are (x, y) in [0, 1]; random points use the global torch generator of the
logits' device, as the official code does (so a seeded run is reproducible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ovss.errors import DatasetError

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
# (pred_logits, pred_masks, targets) -> per-image (prediction, target) indices (HungarianMatcher)
Matcher = Callable[[torch.Tensor, torch.Tensor, Pairs], Pairs]


# ------------------------------------------------------------------------------------------ sampling
def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``inputs`` at normalised points (detectron2 ``point_sample``).

    Args:
        inputs: (N, C, H, W) maps.
        coords: (N, P, 2) points (x, y) in [0, 1]; 0 and 1 are the outer edges of the map
            (``align_corners=False``); outside points read zeros.

    Returns:
        (N, C, P).
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (N, P, 1, 2) in [-1, 1]
    return F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> torch.Tensor:
    """PointRend importance sampling: most uncertain of many random points, plus fresh random ones.

    ``int(num_points * oversample_ratio)`` uniform points are drawn per mask; the
    ``int(importance_sample_ratio * num_points)`` with the highest uncertainty ``-|logit|`` are
    kept, and the rest of the ``num_points`` are new uniform points.

    Args:
        logits: (N, 1, h, w) mask logits.
        num_points: P, points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].

    Returns:
        (N, P, 2) points (x, y) in [0, 1].
    """
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()  # (N, 1, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]  # (N, U)
    coords = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(n, num_random, 2, device=logits.device)], dim=1)
    return coords


# ------------------------------------------------------------------------------------------ terms
def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """BCE-with-logits averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        logits: (M, P) point logits; targets: (M, P) in [0, 1].
        num_masks: the normaliser (ground-truth masks in the batch, averaged over ranks).

    Returns:
        () scalar.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask (p = sigmoid), summed, / ``num_masks``.

    Args:
        logits: (M, P) point logits; targets: (M, P) in [0, 1].
        num_masks: the normaliser.

    Returns:
        () scalar.
    """
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def class_loss(logits: torch.Tensor, target_classes: torch.Tensor, void_weight: float = 0.1) -> torch.Tensor:
    """Cross-entropy over K+1 classes, the last ("void") weighted ``void_weight``, weighted mean.

    Args:
        logits: (B, Q, K+1) class logits (computed in float32).
        target_classes: (B, Q) int64 in [0, K]; K = void (unmatched queries).
        void_weight: weight of the void class (Mask2Former ``eos_coef``, SAN 0.1).

    Returns:
        () scalar: ``sum_i w[t_i] * ce_i / sum_i w[t_i]``.
    """
    weight = torch.ones(logits.shape[-1], device=logits.device, dtype=torch.float32)
    weight[-1] = void_weight
    return F.cross_entropy(logits.float().transpose(1, 2), target_classes, weight=weight)


def semantic_bce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """CAT-Seg / SED loss: per-class sigmoid BCE against one-hot labels, ignore pixels all-negative.

    Equal to ``F.binary_cross_entropy_with_logits(up(logits), onehot)`` with ``onehot`` zero at ignore
    pixels (mean over B*K*H*W, ignore pixels included), computed as
    ``(sum softplus(x) - sum_{valid} x[label]) / numel`` without building the one-hot tensor.

    Args:
        logits: (B, K, h, w) class logits; upsampled bilinearly (align_corners=False) to the labels.
        labels: (B, H, W) int64 class ids in [0, K) or ``ignore_index``.
        ignore_index: label value with an all-zero target.

    Returns:
        () float32 scalar.

    Raises:
        DatasetError: a label is neither a class id nor ``ignore_index``.
    """
    k = logits.shape[1]
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits.float()
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        values = sorted({int(v) for v in labels[bad].unique()[:5]})
        raise DatasetError(
            f"label values {values} are not class ids 0..{k - 1} nor the ignore value {ignore_index}; "
            "check the dataset's labels and the class list"
        )
    positive = torch.gather(logits, 1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    total = F.softplus(logits).sum() - (positive * valid).sum()
    return total / logits.numel()


# ------------------------------------------------------------------------------------------ targets
def masks_from_labels(
    labels: torch.Tensor, ignore_index: int = 255
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-image binary masks of every class present (MaskFormer semantic mapper).

    Args:
        labels: (B, H, W) int64 label maps (padding already set to ``ignore_index``).
        ignore_index: label value that gets no mask.

    Returns:
        per image (classes (N,) int64 sorted ascending, masks (N, H, W) float32).
    """
    out = []
    for label in labels:
        classes = label.unique()
        classes = classes[classes != ignore_index]
        masks = (label.unsqueeze(0) == classes.view(-1, 1, 1)).float()
        out.append((classes, masks))
    return out


# ------------------------------------------------------------------------------------------ criterion
class SetCriterion:
    """Mask2Former's ``SetCriterion`` for SAN: matching, class CE, point-sampled BCE + dice.

    Args:
        matcher: a :class:`ovss.models.matcher.HungarianMatcher`.
        void_weight: weight of the void class in the class loss (0.1).
        num_points: P points per matched mask (12544 = 112 * 112).
        oversample_ratio: importance sampling oversampling (3.0).
        importance_sample_ratio: fraction of points chosen by uncertainty (0.75).
    """

    def __init__(
        self,
        matcher: Matcher,
        void_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        self.matcher = matcher
        self.void_weight = void_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def single(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
        num_masks: float,
    ) -> dict[str, torch.Tensor]:
        """Losses of one output.

        Args:
            pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) logits.
            targets: per image (classes (N_i,), masks (N_i, H, W)); every image the same H, W.
            num_masks: normaliser of the mask losses.

        Returns:
            ``{"loss_ce", "loss_mask", "loss_dice"}`` unweighted scalars.
        """
        indices = self.matcher(pred_logits, pred_masks, list(targets))
        b, q = pred_logits.shape[:2]
        void = pred_logits.shape[-1] - 1
        target_classes = torch.full((b, q), void, dtype=torch.int64, device=pred_logits.device)
        batch_idx, src_idx, tgt_masks = [], [], []
        for i, ((classes, masks), (src, tgt)) in enumerate(zip(targets, indices)):
            src, tgt = src.to(pred_logits.device), tgt.to(pred_logits.device)
            target_classes[i, src] = classes[tgt]
            batch_idx.append(torch.full_like(src, i))
            src_idx.append(src)
            tgt_masks.append(masks[tgt])
        losses = {"loss_ce": class_loss(pred_logits, target_classes, self.void_weight)}
        src_masks = pred_masks[torch.cat(batch_idx), torch.cat(src_idx)].unsqueeze(1).float()  # (M, 1, h, w)
        if src_masks.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {**losses, "loss_mask": zero, "loss_dice": zero}
        gt = torch.cat(tgt_masks).unsqueeze(1).to(src_masks)  # (M, 1, H, W)
        coords = uncertain_point_coords(
            src_masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )
        with torch.no_grad():
            point_labels = point_sample(gt, coords)[:, 0]
        point_logits = point_sample(src_masks, coords)[:, 0]
        losses["loss_mask"] = sigmoid_bce_loss(point_logits, point_labels, num_masks)
        losses["loss_dice"] = dice_loss(point_logits, point_labels, num_masks)
        return losses

    def __call__(
        self, outputs: dict, targets: Sequence[tuple[torch.Tensor, torch.Tensor]], num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Losses of the main output and of every ``aux_outputs`` entry (suffix ``_0``, ``_1``...).

        Args:
            outputs: ``{"pred_logits", "pred_masks", "aux_outputs": [{"pred_logits", "pred_masks"}]}``.
            targets: per image (classes, masks).
            num_masks: normaliser (see :func:`sigmoid_bce_loss`).

        Returns:
            unweighted loss terms by name.
        """
        losses = self.single(outputs["pred_logits"], outputs["pred_masks"], targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            part = self.single(aux["pred_logits"], aux["pred_masks"], targets, num_masks)
            losses.update({f"{k}_{i}": v for k, v in part.items()})
        return losses


def weighted_sum(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum_k weights[base(k)] * losses[k]``; ``base`` strips a ``_<digits>`` suffix (deep supervision).

    Raises:
        KeyError: a loss has no weight (a programming error, not user input).
    """
    total = None
    for name, value in losses.items():
        base, _, suffix = name.rpartition("_")
        key = base if suffix.isdigit() and base in weights else name
        term = weights[key] * value
        total = term if total is None else total + term
    if total is None:
        raise KeyError("no loss terms to sum")
    return total
