"""Periodic evaluation during training: mIoU of the argmax prediction, sharded over ranks.

Each rank segments every ``world_size``-th image with the unwrapped model through the normal
prediction path (:class:`ovss.api.segmenter.Segmenter`: test-time resize, normalisation, padding,
``model.predict``), accumulates an :class:`ovss.evaluation.metrics.ConfusionMatrix`, and the
matrices are summed over ranks. The RNG states are saved and restored around it, so evaluating
never changes the course of training (exact resume does not depend on when evaluations ran).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ovss.engine.checkpoint import rng_state, set_rng_state
from ovss.models.base import SegmentationModel
from ovss.vocab.vocabulary import Vocabulary

if TYPE_CHECKING:
    from ovss.evaluation.metrics import Convention


def evaluate(
    model: SegmentationModel,
    pairs: list[tuple[Path, Path]],
    vocabulary: Vocabulary,
    device: torch.device,
    ignore_index: int = 255,
    rank: int = 0,
    world_size: int = 1,
    precision: str = "fp32",
    convention: Convention = "detectron2",
    options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Collective: mIoU, fwIoU, mACC and pACC (percent) of ``model`` on ``pairs``.

    Args:
        model: the unwrapped model (put back in its previous train/eval mode afterwards).
        pairs: (image, label) paths; rank r takes ``pairs[r::world_size]``.
        vocabulary: class names of the label ids.
        device: where to run.
        ignore_index: label value that is not scored.
        rank, world_size: this rank and the number of ranks.
        precision: "fp32", "bf16" or "fp16".
        convention: "detectron2" or "mmseg" mIoU averaging.
        options: ``model.predict`` options (e.g. ``{"inference": "whole"}``).
    """
    from ovss.api.requery import ImageCache
    from ovss.api.segmenter import Segmenter
    from ovss.data.io import read_label
    from ovss.evaluation.metrics import ConfusionMatrix

    saved = rng_state()
    was_training = model.training
    try:
        segmenter = Segmenter(model, device=device, dtype=precision)
        segmenter.image_cache = ImageCache(0)  # every image once: no re-query cache, no digest per image
        segmenter.set_vocabulary(vocabulary)
        matrix = ConfusionMatrix(len(vocabulary), ignore_index)
        mine = pairs[rank::world_size]
        results = segmenter.predict_batch([image for image, _ in mine], **(options or {}))
        for (_, label_path), result in zip(mine, results):
            matrix.update(result.label_map, read_label(label_path))
        metrics = matrix.all_reduce().compute(convention)
    finally:
        model.train(was_training)
        set_rng_state(saved)
    return {k: float(metrics[k]) for k in ("mIoU", "fwIoU", "mACC", "pACC") if metrics.get(k) is not None}
