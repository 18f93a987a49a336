"""What the predictor keeps of a score map handed over in blocks: argmax, maxima, optional maps.

:func:`reduce_scores` reduces the blocks of the ``predict_blocks`` contract as they come, never
holding the (B, K, H0, W0) map unless asked; :func:`disk_scores` is the float16 memory-mapped file
the maps go to when they must not take RAM; :func:`check_min_score` and :func:`class_indices` check
the ``min_score`` and ``return_scores`` arguments.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ovss.api.reduction import class_maxima
from ovss.errors import OvssError


class ReducedScores(NamedTuple):
    """What the predictor keeps of a (B, K, H0, W0) score map."""

    labels: torch.Tensor  # (B, H0, W0) int64 argmax over K (the first class among ties)
    confidence: torch.Tensor  # (B, H0, W0) float32 max over K
    class_scores: torch.Tensor  # (B, K) float32 max over pixels
    scores: torch.Tensor | None  # (B, K, H0, W0) float32, only when asked for


def check_min_score(min_score: float | None) -> float | None:
    """``min_score`` as a float (None stays None); OvssError (one line) for anything not a finite number."""
    if min_score is None:
        return None
    try:
        value = float(min_score)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(min_score, bool) or not np.isfinite(value):
        raise OvssError(f"min_score must be a finite number (e.g. 0.3), got {min_score!r}")
    return value


def class_indices(classes: Sequence[int], k: int) -> list[int]:
    """``return_scores`` given as class indices -> a checked list (OvssError when out of range)."""
    try:
        indices = [operator.index(c) for c in classes]
    except TypeError:
        raise OvssError(
            f"return_scores takes True/False or a list of class indices, got {classes!r}"
        ) from None
    bad = [c for c in indices if not 0 <= c < k]
    if bad:
        raise OvssError(f"return_scores: class index {bad[0]} is out of range for {k} classes")
    return indices


def disk_scores(shape: tuple[int, ...], folder: str | Path) -> np.ndarray:
    """A zeroed float16 array of ``shape`` memory-mapped on an anonymous temporary file in ``folder``.

    The file has no name (``tempfile.TemporaryFile``): its space returns when the array and its views
    are gone, and a killed process leaves nothing behind. Pages are written to disk as the system
    needs, so the array takes disk space, not RAM.
    """
    import tempfile

    with tempfile.TemporaryFile(dir=folder, prefix=".ovss-scores-") as f:
        f.truncate(int(np.prod(shape)) * 2)
        return np.memmap(f, dtype=np.float16, mode="r+", shape=tuple(shape))  # keeps its own mapping


def reduce_scores(
    blocks: Iterable[tuple[int, int, torch.Tensor]],
    shape: tuple[int, int, int, int],
    keep_scores: bool | Sequence[int] = False,
    device: str | torch.device = "cpu",
    out: np.ndarray | None = None,
) -> ReducedScores:
    """Reduce a score map handed over in blocks (the ``predict_blocks`` contract), never holding it whole.

    Args:
        blocks: ``(class_start, row_start, scores)`` with scores (B, k, r, W0) covering the map exactly
            once, classes ascending within each band of rows; any float dtype (reduced in float32).
        shape: (B, K, H0, W0) of the whole map.
        keep_scores: also assemble the whole (B, K, H0, W0) float32 map; a list of class indices:
            only those classes' maps, (B, len(list), H0, W0) in the list's order.
        device: where the blocks are (and the results stay).
        out: a (B, K, H0, W0) float16 or float32 numpy array (e.g. :func:`disk_scores`) that receives
            the whole map block by block (cast to its dtype); independent of ``keep_scores``.

    Returns:
        the same labels / maxima as ``scores.max(dim=1)`` and ``scores.amax(dim=(2, 3))`` on the whole
        map (finite scores; among equal scores the first class wins).
    """
    b, k, h0, w0 = shape
    confidence = torch.full((b, h0, w0), float("-inf"), device=device)
    labels = torch.zeros((b, h0, w0), dtype=torch.int64, device=device)
    class_scores = torch.full((b, k), float("-inf"), device=device)
    chosen = [] if isinstance(keep_scores, bool) else list(keep_scores)  # [] : all classes or none
    scores = None
    if chosen:
        scores = torch.empty((b, len(chosen), h0, w0), device=device)
    elif keep_scores is True:
        scores = torch.empty(shape, device=device)
    for k0, r0, block in blocks:
        block = block.float()
        k1, r1 = k0 + block.shape[1], r0 + block.shape[2]
        value, label = block.max(dim=1)  # (B, r, W0), first class among ties
        if k0 == 0:  # the first class chunk of these rows (classes ascend within a band of rows)
            confidence[:, r0:r1], labels[:, r0:r1] = value, label
        else:
            best = confidence[:, r0:r1]
            better = value > best  # strictly: an earlier class chunk keeps its ties
            confidence[:, r0:r1] = torch.where(better, value, best)
            labels[:, r0:r1] = torch.where(better, label + k0, labels[:, r0:r1])
        class_scores[:, k0:k1] = torch.maximum(class_scores[:, k0:k1], class_maxima(block))
        if out is not None:
            # cast and lay out in torch (fast), then one contiguous copy per class into out
            cast = block.to(torch.float16 if out.dtype == np.float16 else torch.float32)
            out[:, k0:k1, r0:r1] = cast.contiguous().cpu().numpy()
        if scores is not None and chosen:
            for j, c in enumerate(chosen):
                if k0 <= c < k1:
                    scores[:, j, r0:r1] = block[:, c - k0]
        elif scores is not None:
            scores[:, k0:k1, r0:r1] = block
    return ReducedScores(labels, confidence, class_scores, scores)
