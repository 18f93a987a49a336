"""Per-model training adapters: how each family turns a batch into outputs and losses.

A :class:`Task` is the module the trainer wraps in DDP. Its ``forward`` takes the uint8 crops,
normalises and pads them as the model expects, adds the text input and calls the model's training
``forward(images, text)``; :meth:`Task.losses` turns the outputs and the label maps into named,
unweighted loss terms, and :meth:`Task.loss_weights` says how they add up.

* SAN: text embeddings computed once with the frozen text tower (``encode_text``); Mask2Former set
  losses on the main and deep-supervision outputs (:class:`ovss.models.losses.SetCriterion`); the
  mask-loss normaliser is the number of ground-truth masks averaged over ranks.
* CAT-Seg: the text tower's q/v weights train, so the class prompts are re-encoded with gradients at
  every step; one per-class BCE term.
* SED: frozen text (80 templates per class); BCE on the final logits and on the three
  early-rejection heads (whose inputs the model detaches).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovss.distributed import all_reduce_sum, get_world_size
from ovss.engine.config import LossConfig
from ovss.errors import ConfigError
from ovss.models.base import SegmentationModel
from ovss.models.losses import SetCriterion, masks_from_labels, semantic_bce_loss
from ovss.models.matcher import HungarianMatcher
from ovss.vocab.vocabulary import Vocabulary


class Task(nn.Module):
    """Base adapter; subclasses implement :meth:`text_input`, :meth:`losses` and :meth:`loss_weights`.

    Args:
        model: the segmentation model (its ``freeze`` rule already applied).
        loss: loss weights and settings.
        ignore_index: label value without a class.
    """

    pixel_mean: torch.Tensor  # buffers (register_buffer)
    pixel_std: torch.Tensor

    def __init__(self, model: SegmentationModel, loss: LossConfig, ignore_index: int = 255) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss
        self.ignore_index = ignore_index
        cfg = model.config
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> float32 ``(x - mean) / std``, padded bottom/right with 0 to the
        model's ``size_divisibility`` (detectron2 ``ImageList.from_tensors``)."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        div = self.model.config.size_divisibility
        if div > 1:
            h, w = x.shape[-2:]
            x = F.pad(x, (0, (-w) % div, 0, (-h) % div))
        return x

    def pad_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels padded bottom/right with ``ignore_index`` as :meth:`normalise` pads the
        images, so that predictions and targets cover the same area (the official ground-truth masks
        are zero-padded to the padded batch)."""
        div = self.model.config.size_divisibility
        if div > 1:
            h, w = labels.shape[-2:]
            labels = F.pad(labels, (0, (-w) % div, 0, (-h) % div), value=self.ignore_index)
        return labels

    def text_input(self) -> torch.Tensor:
        """The ``text`` argument of the model's forward."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> Any:
        """Raw training outputs of the model for (B, 3, H, W) uint8 crops."""
        return self.model(self.normalise(images), self.text_input())

    def losses(self, outputs: Any, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted loss terms for (B, H, W) int64 labels."""
        raise NotImplementedError

    def loss_weights(self) -> dict[str, float]:
        """Weight of every loss term (deep-supervision terms ``name_<i>`` share ``name``'s weight)."""
        raise NotImplementedError


@torch.no_grad()
def frozen_text(model: SegmentationModel, vocabulary: Vocabulary) -> torch.Tensor:
    """(K, ...) text embeddings of the frozen text tower, on the model's device."""
    from ovss.vocab.embeddings import TextEmbedder

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    embedder = TextEmbedder(
        lambda tokens: model.encode_text(tokens.to(device)), model.config.templates, model.config.synonyms
    )
    text = embedder(vocabulary).to(device)
    model.train(was_training)
    return text


def prompt_tokens(model: SegmentationModel, vocabulary: Vocabulary) -> torch.Tensor:
    """(P, K, L) token ids of every template x class (one prompt string per class)."""
    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates

    per_class = vocabulary.prompts_for(model.config.synonyms)
    if any(len(strings) != 1 for strings in per_class):
        raise ConfigError(
            f"synonyms={model.config.synonyms!r} gives several prompts per class, which a text tower trained "
            "with gradients cannot average; use synonyms 'first' or 'verbatim'"
        )
    templates = get_templates(model.config.templates)
    prompts = [t.format(strings[0]) for t in templates for strings in per_class]
    return get_tokenizer()(prompts).view(len(templates), len(per_class), -1)


class SANTask(Task):
    """SAN: frozen text, Hungarian-matched set losses with deep supervision."""

    text: torch.Tensor  # buffer

    def __init__(
        self, model: SegmentationModel, vocabulary: Vocabulary, loss: LossConfig, ignore_index: int = 255
    ) -> None:
        super().__init__(model, loss, ignore_index)
        self.register_buffer("text", frozen_text(model, vocabulary), persistent=False)
        matcher = HungarianMatcher(loss.class_weight, loss.mask_weight, loss.dice_weight, loss.num_points)
        self.criterion = SetCriterion(
            matcher, loss.void_weight, loss.num_points, loss.oversample_ratio, loss.importance_sample_ratio
        )

    def text_input(self) -> torch.Tensor:
        return self.text

    def losses(self, outputs: dict[str, Any], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = masks_from_labels(self.pad_labels(labels), self.ignore_index)
        # Mask2Former: masks in the batch, averaged over ranks, at least 1.
        num_masks = max(all_reduce_sum(sum(len(c) for c, _ in targets)) / get_world_size(), 1.0)
        if not self.loss_cfg.deep_supervision:
            outputs = {**outputs, "aux_outputs": []}
        return self.criterion(outputs, targets, num_masks)

    def loss_weights(self) -> dict[str, float]:
        c = self.loss_cfg
        return {"loss_ce": c.class_weight, "loss_mask": c.mask_weight, "loss_dice": c.dice_weight}


class CATSegTask(Task):
    """CAT-Seg: text re-encoded with gradients every step; per-class BCE."""

    tokens: torch.Tensor  # buffer

    def __init__(
        self, model: SegmentationModel, vocabulary: Vocabulary, loss: LossConfig, ignore_index: int = 255
    ) -> None:
        super().__init__(model, loss, ignore_index)
        device = next(model.parameters()).device
        self.register_buffer("tokens", prompt_tokens(model, vocabulary).to(device), persistent=False)

    def text_input(self) -> torch.Tensor:
        return self.model.encode_text(self.tokens)

    def losses(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss_sem_seg": semantic_bce_loss(outputs, self.pad_labels(labels), self.ignore_index)}

    def loss_weights(self) -> dict[str, float]:
        return {"loss_sem_seg": self.loss_cfg.bce_weights[0]}


class SEDTask(Task):
    """SED: frozen text; BCE on the final logits and on the three early-rejection heads."""

    text: torch.Tensor  # buffer

    def __init__(
        self, model: SegmentationModel, vocabulary: Vocabulary, loss: LossConfig, ignore_index: int = 255
    ) -> None:
        super().__init__(model, loss, ignore_index)
        if len(loss.bce_weights) != 4:
            raise ConfigError(f"SED needs 4 loss.bce_weights (final, 3 CER heads), got {loss.bce_weights}")
        self.register_buffer("text", frozen_text(model, vocabulary), persistent=False)

    def text_input(self) -> torch.Tensor:
        return self.text

    def losses(self, outputs: Any, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, aux = outputs
        terms = [logits, *aux]
        labels = self.pad_labels(labels)
        bce = [semantic_bce_loss(t, labels, self.ignore_index) for t in terms]
        return {f"loss_sem_seg_{i}": value for i, value in enumerate(bce)}

    def loss_weights(self) -> dict[str, float]:
        return {f"loss_sem_seg_{i}": w for i, w in enumerate(self.loss_cfg.bce_weights)}


class CATSegV1Task(Task):
    """CAT-Seg v1 (and its mmseg port): frozen text (80 templates, computed once); per-class BCE
    (official) or, with ``loss.semantic_loss="ce"``, the mmseg port's softmax cross-entropy averaged
    over non-ignored pixels."""

    text: torch.Tensor  # buffer

    def __init__(
        self, model: SegmentationModel, vocabulary: Vocabulary, loss: LossConfig, ignore_index: int = 255
    ) -> None:
        super().__init__(model, loss, ignore_index)
        self.register_buffer("text", frozen_text(model, vocabulary), persistent=False)

    def text_input(self) -> torch.Tensor:
        return self.text

    def losses(self, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = self.pad_labels(labels)
        if self.loss_cfg.semantic_loss == "ce":
            size = labels.shape[-2:]
            logits = F.interpolate(outputs.float(), size=size, mode="bilinear", align_corners=False)
            return {"loss_sem_seg": F.cross_entropy(logits, labels, ignore_index=self.ignore_index)}
        return {"loss_sem_seg": semantic_bce_loss(outputs, labels, self.ignore_index)}

    def loss_weights(self) -> dict[str, float]:
        return {"loss_sem_seg": self.loss_cfg.bce_weights[0]}


def build_task(
    family: str, model: SegmentationModel, vocabulary: Vocabulary, loss: LossConfig, ignore_index: int = 255
) -> Task:
    """The adapter of ``family`` (its descriptor's ``task``) around ``model`` (which must already be on
    its training device).

    Raises:
        ConfigError: the family has no training task.
    """
    from ovss.models.family import families, find_family

    descriptor = find_family(family)
    task = descriptor.resolve_task() if descriptor is not None else None
    if task is None:
        known = ", ".join(f.name for f in families() if f.task)
        raise ConfigError(f"no training task for model family {family!r}; known: {known}")
    return task(model, vocabulary, loss, ignore_index)
