"""Streaming semantic-segmentation metrics: one confusion matrix, two mIoU conventions.

The matrix is detectron2's ``SemSegEvaluator`` layout: ``(K+1, K+1)`` int64 indexed
``[pred, gt]``, where ground-truth ignore pixels are counted in the extra last column (so the
matrix is bit-identical to detectron2's) and dropped from every metric. Two conventions are
computed from it (see ``ConfusionMatrix.compute``):

* ``"detectron2"`` -- the current ``SemSegEvaluator``: a class absent from the ground truth of the
  whole split is excluded from mIoU / mACC, even when it was predicted (its false positives still
  lower the IoU of the classes whose pixels it took). SAN, CAT-Seg, SED report this.
* ``"mmseg"`` -- mmseg ``IoUMetric`` and detectron2 <= v0.6: only classes with an empty union are
  excluded; a class predicted but absent from the ground truth has IoU 0 and counts. Always
  <= the detectron2 value; the training-free papers report this.

The arithmetic follows each reference operation for operation, so the numbers are the same to the
last bit (tests/evaluation/test_metrics.py checks this against detectron2's own output).

Ground-truth values must be class ids in ``[0, K)`` or the ignore index. detectron2 does not check:
an out-of-range value silently lands in the wrong cell of the matrix, or crashes the final
``reshape`` if it is large enough. Here it raises ``DatasetError`` naming the values.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
import torch

from ovss.distributed import all_reduce_sum_tensor, is_distributed
from ovss.errors import DatasetError

Convention = Literal["detectron2", "mmseg"]
LabelArray = np.ndarray | torch.Tensor


class ConfusionMatrix:
    """Accumulates a ``(K+1, K+1)`` ``[pred, gt]`` confusion matrix over a split.

    Args:
        num_classes: K, the number of classes (847 for ADE-847, 459 for PC-459, ...).
        ignore_index: ground-truth value that is not evaluated (255, or 65535 for the 16-bit
            TIFF datasets); None when every value is a class.
        boundary_iou: also accumulate detectron2's "Boundary IoU" matrix (per image, costs one
            min-filter per image). It reproduces detectron2 exactly, including its quirk of
            eroding the *label values* (so a boundary pixel is counted under the class-id
            difference, and interior pixels under class 0); it is not a true boundary IoU and is
            only offered for complete parity. detectron2 skips it for K >= 255; so does this.

    Attributes:
        matrix: (K+1, K+1) int64 counts, ``matrix[p, g]``; column K = ground-truth ignore.
        boundary_matrix: the same for the boundary maps, or None.
        num_images: how many label maps were accumulated.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, boundary_iou: bool = False) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a valid class id (num_classes={num_classes}); "
                "use a value outside [0, num_classes), e.g. 255"
            )
        self.boundary_iou = bool(boundary_iou) and self.num_classes < 255
        size = self.num_classes + 1
        self.matrix: np.ndarray = np.zeros((size, size), dtype=np.int64)
        self.boundary_matrix: np.ndarray | None = (
            np.zeros((size, size), dtype=np.int64) if self.boundary_iou else None
        )
        self.num_images = 0

    # ------------------------------------------------------------------------------ accumulate

    def update(self, pred: LabelArray, gt: LabelArray) -> None:
        """Add one label map (or a batch) to the matrix.

        Args:
            pred: predicted class ids in [0, K), integer numpy array or tensor of any shape
                (argmax of the score map, e.g. (H, W) or (B, H, W)).
            gt: ground truth of the same shape: class ids in [0, K) or ``ignore_index``
                (uint8/uint16/int). Predictions on ignore pixels are dropped from the metrics.
                CUDA tensors are counted on the GPU (``torch.bincount``).

        Raises:
            DatasetError: the ground truth holds a value outside [0, K) that is not the ignore
                index (wrong class count, missing label shift, or wrong ignore value).
            ValueError: shapes differ, a prediction is out of range, or an input is not integer.
        """
        if tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(gt.shape)}; "
                "resize the prediction to the label size before evaluating"
            )
        for name, array in (("pred", pred), ("gt", gt)):
            if not _is_integer(array):
                raise ValueError(
                    f"{name} must hold integer class ids, got dtype {array.dtype}; take "
                    "scores.argmax(dim=0) first"
                )
        if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
            device = pred.device if isinstance(pred, torch.Tensor) else cast(torch.Tensor, gt).device
            pred_t, gt_t = torch.as_tensor(pred, device=device), torch.as_tensor(gt, device=device)
            if device.type == "cpu":  # numpy is faster than torch for bincount on CPU
                self._update_numpy(pred_t.numpy(), gt_t.numpy())
            else:
                self._update_torch(pred_t, gt_t)
        else:
            self._update_numpy(np.asarray(pred), np.asarray(gt))

    def _update_numpy(self, pred: np.ndarray, gt: np.ndarray) -> None:
        k = self.num_classes
        pred = pred.astype(np.int64, copy=False)
        gt = gt.astype(np.int64, copy=True)
        self._check_ranges(int(pred.min(initial=0)), int(pred.max(initial=0)), gt, np)
        if self.ignore_index is not None:
            gt[gt == self.ignore_index] = k
        counts = np.bincount(((k + 1) * pred + gt).reshape(-1), minlength=self.matrix.size)
        self.matrix += counts.reshape(self.matrix.shape)
        if self.boundary_iou:
            self._update_boundary(pred, gt)
        self.num_images += _num_maps(pred.shape)

    def _update_torch(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        k = self.num_classes
        pred, gt = pred.long(), gt.long()
        if pred.numel():
            self._check_ranges(int(pred.min()), int(pred.max()), gt, torch)
        if self.ignore_index is not None:
            gt = torch.where(gt == self.ignore_index, k, gt)
        counts = torch.bincount(((k + 1) * pred + gt).reshape(-1), minlength=self.matrix.size)
        self.matrix += counts.cpu().numpy().reshape(self.matrix.shape)
        if self.boundary_iou:
            self._update_boundary(pred.cpu().numpy(), gt.cpu().numpy())
        self.num_images += _num_maps(tuple(pred.shape))

    def _check_ranges(self, pred_min: int, pred_max: int, gt: Any, xp: Any) -> None:
        k = self.num_classes
        if pred_min < 0 or pred_max >= k:
            raise ValueError(
                f"predicted class ids span [{pred_min}, {pred_max}] but num_classes={k}; predictions "
                "must be in [0, num_classes)"
            )
        if (gt.numel() if xp is torch else gt.size) == 0:
            return
        if int(gt.min()) >= 0 and int(gt.max()) < k:
            return
        bad = (gt < 0) | (gt >= k)
        if self.ignore_index is not None:
            bad &= gt != self.ignore_index
        if bool(bad.any()):
            values = sorted(int(v) for v in xp.unique(gt[bad])[:5].tolist())
            raise DatasetError(
                f"ground truth holds values {values} outside [0, {k}) that are not the ignore index "
                f"{self.ignore_index}; check num_classes, the ignore index (255 / 65535) and the label "
                "shift (ADE-150 stores class+1, 0 = ignore)"
            )

    def _update_boundary(self, pred: np.ndarray, gt: np.ndarray) -> None:
        k = self.num_classes
        boundary = self.boundary_matrix
        assert boundary is not None  # only called with boundary_iou on
        if pred.ndim < 2:
            raise ValueError(f"boundary_iou needs (..., H, W) label maps, got shape {pred.shape}")
        flat_pred = pred.reshape(-1, *pred.shape[-2:])
        flat_gt = gt.reshape(-1, *gt.shape[-2:])
        for p, g in zip(flat_pred, flat_gt):
            # uint8 as detectron2 (K < 255 here, ignore already mapped to K)
            b_pred = _mask_to_boundary(p.astype(np.uint8)).astype(np.int64)
            b_gt = _mask_to_boundary(g.astype(np.uint8)).astype(np.int64)
            counts = np.bincount(((k + 1) * b_pred + b_gt).reshape(-1), minlength=self.matrix.size)
            boundary += counts.reshape(self.matrix.shape)

    # ------------------------------------------------------------------------------ combine

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (same K and ignore index); returns ``self``."""
        self._check_compatible(other.num_classes, other.ignore_index, other.boundary_matrix is not None)
        self.matrix += other.matrix
        if self.boundary_matrix is not None:
            assert other.boundary_matrix is not None  # _check_compatible: both or neither
            self.boundary_matrix += other.boundary_matrix
        self.num_images += other.num_images
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all ranks of ``torch.distributed`` (no-op when not initialised).

        Every rank calls it; afterwards every rank holds the totals. Uses the current CUDA device
        for the NCCL backend, the CPU otherwise. Returns ``self``.
        """
        if not is_distributed():
            return self
        parts = [self.matrix.reshape(-1), np.array([self.num_images], dtype=np.int64)]
        if self.boundary_matrix is not None:
            parts.append(self.boundary_matrix.reshape(-1))
        total = all_reduce_sum_tensor(torch.from_numpy(np.concatenate(parts))).numpy()
        n = self.matrix.size
        self.matrix = total[:n].reshape(self.matrix.shape).copy()
        self.num_images = int(total[n])
        if self.boundary_matrix is not None:
            self.boundary_matrix = total[n + 1 :].reshape(self.matrix.shape).copy()
        return self

    def reset(self) -> None:
        """Zero every count."""
        self.matrix[:] = 0
        if self.boundary_matrix is not None:
            self.boundary_matrix[:] = 0
        self.num_images = 0

    # ------------------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors and ints (``torch.load(weights_only=True)``-safe)."""
        state: dict[str, Any] = {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "num_images": self.num_images,
            "matrix": torch.from_numpy(self.matrix.copy()),
        }
        if self.boundary_matrix is not None:
            state["boundary_matrix"] = torch.from_numpy(self.boundary_matrix.copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counts saved by ``state_dict`` (K, ignore index and boundary option must match)."""
        missing = {"num_classes", "ignore_index", "num_images", "matrix"} - set(state)
        if missing:
            raise ValueError(
                f"confusion-matrix state is missing {sorted(missing)}; pass a state_dict() result"
            )
        self._check_compatible(int(state["num_classes"]), state["ignore_index"], "boundary_matrix" in state)
        matrix = _int64_array(state["matrix"])
        if matrix.shape != self.matrix.shape:
            raise ValueError(f"saved matrix has shape {matrix.shape}, expected {self.matrix.shape}")
        self.matrix = matrix
        if self.boundary_matrix is not None:
            self.boundary_matrix = _int64_array(state["boundary_matrix"]).reshape(matrix.shape)
        self.num_images = int(state["num_images"])

    def _check_compatible(self, num_classes: int, ignore_index: int | None, boundary: bool) -> None:
        if num_classes != self.num_classes or ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot combine a matrix for {num_classes} classes / ignore {ignore_index} with one for "
                f"{self.num_classes} classes / ignore {self.ignore_index}; evaluate with the same settings"
            )
        if boundary != (self.boundary_matrix is not None):
            raise ValueError("cannot combine matrices with and without boundary_iou; use the same setting")

    # ------------------------------------------------------------------------------ metrics

    def compute(self, convention: Convention = "detectron2") -> dict[str, Any]:
        """The metrics, in percent, as detectron2 reports them.

        Args:
            convention: "detectron2" (exclude classes absent from the ground truth) or "mmseg"
                (exclude only classes with an empty union; see the module docstring).

        Returns:
            ``{"convention", "mIoU", "fwIoU", "mACC", "pACC", "IoU", "ACC"}`` where the first
            four are floats and "IoU" / "ACC" are per-class lists (index = class id) of floats,
            None for an excluded class. With ``boundary_iou``: also "BoundaryIoU" and
            "min(IoU, B-IoU)" lists (detectron2's definitions). mmseg calls pACC "aAcc".

        Raises:
            DatasetError: no labelled pixel was accumulated (all ignore, or nothing updated).
        """
        if convention not in ("detectron2", "mmseg"):
            raise ValueError(f"convention must be 'detectron2' or 'mmseg', got {convention!r}")
        k = self.num_classes
        tp = self.matrix.diagonal()[:-1].astype(float)
        pos_gt = np.sum(self.matrix[:-1, :-1], axis=0).astype(float)
        pos_pred = np.sum(self.matrix[:-1, :-1], axis=1).astype(float)
        if np.sum(pos_gt) == 0:
            raise DatasetError(
                f"no labelled pixels after {self.num_images} label maps (all ignore {self.ignore_index}?); "
                "check the ignore index and that ground truth was passed to update()"
            )
        class_weights = pos_gt / np.sum(pos_gt)
        acc_valid = pos_gt > 0
        acc = np.full(k, np.nan, dtype=float)
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou = np.full(k, np.nan, dtype=float)
        if convention == "detectron2":
            # detectron2/evaluation/sem_seg_evaluation.py, evaluate(): same operations, same order.
            iou_valid = np.logical_and(acc_valid, union > 0)
            iou[iou_valid] = tp[iou_valid] / union[iou_valid]
            miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
            macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
            fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
            pacc = np.sum(tp) / np.sum(pos_gt)
            metrics = {"mIoU": 100 * miou, "fwIoU": 100 * fiou, "mACC": 100 * macc, "pACC": 100 * pacc}
        else:
            # mmseg IoUMetric.total_area_to_metrics: iou = intersect / union, nanmean; aAcc over
            # all labelled pixels. fwIoU as detectron2 <= v0.6 (weights are 0 for GT-absent classes).
            iou_valid = union > 0
            iou[iou_valid] = tp[iou_valid] / union[iou_valid]
            metrics = {
                "mIoU": float(np.nanmean(iou)) * 100,
                "fwIoU": 100 * np.sum(iou[acc_valid] * class_weights[acc_valid]),
                "mACC": float(np.nanmean(acc)) * 100,
                "pACC": 100 * np.sum(tp) / np.sum(pos_gt),
            }
        result: dict[str, Any] = {"convention": convention}
        result.update({name: float(value) for name, value in metrics.items()})
        result["IoU"] = _percent_list(iou)
        result["ACC"] = _percent_list(acc)
        if self.boundary_matrix is not None:
            b_iou = self._boundary_iou()
            result["BoundaryIoU"] = _percent_list(b_iou)
            # Python's min as detectron2 uses it: NaN IoU stays NaN, a NaN B-IoU keeps the IoU.
            result["min(IoU, B-IoU)"] = _percent_list(np.array([min(a, b) for a, b in zip(iou, b_iou)]))
        return result

    def _boundary_iou(self) -> np.ndarray:
        b = self.boundary_matrix
        assert b is not None
        b_tp = b.diagonal()[:-1].astype(float)
        b_pos_gt = np.sum(b[:-1, :-1], axis=0).astype(float)
        b_pos_pred = np.sum(b[:-1, :-1], axis=1).astype(float)
        b_union = b_pos_gt + b_pos_pred - b_tp
        valid = b_union > 0
        b_iou = np.full(self.num_classes, np.nan, dtype=float)
        b_iou[valid] = b_tp[valid] / b_union[valid]
        return b_iou


# ----------------------------------------------------------------------------------------------


def _percent_list(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(100 * v) for v in values]


def _int64_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.array(value, dtype=np.int64)


def _is_integer(array: LabelArray) -> bool:
    if isinstance(array, torch.Tensor):
        return not array.is_floating_point() and not array.is_complex() and array.dtype != torch.bool
    return np.issubdtype(np.asarray(array).dtype, np.integer)


def _num_maps(shape: tuple[int, ...]) -> int:
    """Label maps in a batch: (H, W) -> 1, (B, H, W) -> B; 1 for flat inputs."""
    return int(np.prod(shape[:-2])) if len(shape) > 2 else 1


def _mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """detectron2 ``SemSegEvaluator._mask_to_boundary`` without OpenCV.

    detectron2 pads with one 0 pixel and applies ``cv2.erode`` with a 3x3 kernel ``d`` times on
    the uint8 label map. ``d`` iterations of a 3x3 min filter are one (2d+1)x(2d+1) min filter,
    and the zero padding is a constant-0 border. Returns ``mask - eroded`` (>= 0).
    """
    from scipy.ndimage import minimum_filter  # scipy is a core dependency; imported lazily

    h, w = mask.shape
    dilation = max(1, round(float(dilation_ratio * np.sqrt(h**2 + w**2))))  # round half to even, as d2
    size = 2 * dilation + 1
    eroded = minimum_filter(mask, size=size, mode="constant", cval=0)
    return mask - eroded
