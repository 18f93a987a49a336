"""The contract between the predictor (``ovss.api``) and every segmentation model.

A model owns the maths: text embeddings for a vocabulary and the official semantic score map for a
batch of normalised images. The predictor owns reading, resizing, normalising, padding, the
vocabulary cache, dtype/device and rendering.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from ovss.config import Config
from ovss.errors import ConfigError
from ovss.models.family import family_for_config

CLIP_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD_255 = (68.5005327, 66.6321579, 70.32316305)


@dataclasses.dataclass(kw_only=True)
class ResizeConfig(Config):
    """Test-time resize of the original image before normalisation (detectron2 conventions)."""

    mode: Literal["short_side", "fixed", "none"] = "short_side"  # how the size is chosen
    size: int = 640  # short side ("short_side") or side of the square ("fixed")
    max_size: int = 2560  # cap on the long side ("short_side" only)

    def __post_init__(self) -> None:
        if self.size <= 0 or self.max_size <= 0:
            raise ConfigError(f"ResizeConfig.size/max_size must be positive, got {self.size}/{self.max_size}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Size (h, w) an image of ``height`` x ``width`` is resized to (detectron2 ResizeShortestEdge)."""
        if self.mode == "none":
            return height, width
        if self.mode == "fixed":
            return self.size, self.size
        scale = self.size / min(height, width)
        new_h, new_w = height * scale, width * scale
        if max(new_h, new_w) > self.max_size:
            scale = self.max_size / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)


@dataclasses.dataclass(kw_only=True)
class ModelConfig(Config):
    """Fields every segmentation model config has (each model adds its own, including ``clip``)."""

    templates: str = "vild"  # prompt template set name (ovss.vocab.templates)
    synonyms: Literal["verbatim", "mean", "first"] = "mean"  # how "sofa, couch" is embedded
    test_resize: ResizeConfig = dataclasses.field(default_factory=ResizeConfig)
    size_divisibility: int = 32  # pad bottom/right to a multiple of this (0 = no padding)
    pixel_mean: tuple[float, float, float] = CLIP_MEAN_255  # RGB, 0..255 scale
    pixel_std: tuple[float, float, float] = CLIP_STD_255  # RGB, 0..255 scale


# Default working set (elements) of one block of the full-resolution score map; see predict_blocks.
BLOCK_ELEMENTS = 1 << 22

Features = dict[str, Any]  # a model's image features (see SegmentationModel.image_stage)


_Model = TypeVar("_Model", bound="SegmentationModel")


class SegmentationModel(nn.Module):
    """Base class: subclasses set ``self.config`` and implement ``encode_text`` and ``image_stage`` +
    ``text_stage`` (bounded memory; ``predict_blocks`` chains them, ``predict`` assembles the blocks)
    or, for simple models, ``predict`` (one block)."""

    config: ModelConfig

    # ---------------------------------------------------------------------------------- training
    def is_trainable(self, name: str) -> bool:
        """Whether the family's recipe trains parameter ``name`` (a ``named_parameters`` name).

        The one training rule of a family; :meth:`freeze` and :meth:`trainable_parameters` read it.
        The base trains nothing (an inference-only family).
        """
        return False

    def freeze(self: _Model) -> _Model:
        """Set every parameter's ``requires_grad`` by :meth:`is_trainable`; returns ``self``."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable(name))
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the family trains (by :meth:`is_trainable`), in module order."""
        return [(n, p) for n, p in self.named_parameters() if self.is_trainable(n)]

    # ---------------------------------------------------------------------------------- options
    @property
    def label(self) -> str:
        """The family's title (``"CAT-Seg v1"``), in error messages."""
        return family_for_config(self.config).title

    @property
    def inference_modes(self) -> tuple[str, ...]:
        """The ``inference=`` modes of the family (its descriptor's); () for a family without them."""
        option = family_for_config(self.config).inference
        return option.modes if option is not None else ()

    def _mode(self, options: dict[str, Any]) -> str:
        """The ``inference=`` option of ``options`` (default ``config.inference``), checked against
        :attr:`inference_modes`; ``options`` holds no other option. Pops it from ``options``.

        Raises:
            ConfigError: another option, or a mode the family does not have.
        """
        mode = options.pop("inference", None) or getattr(self.config, "inference", None)
        modes = self.inference_modes
        if options:
            choices = " or ".join(filter(None, (", ".join(modes[:-1]), *modes[-1:])))
            raise ConfigError(
                f"unknown {self.label} option(s) {sorted(options)}; the only one is inference= ({choices})"
            )
        if mode not in modes:
            raise ConfigError(f"{self.label} inference={mode!r} is not one of {list(modes)}")
        return mode

    def preprocess_size(self, height: int, width: int, **options: Any) -> tuple[int, int]:
        """Size the predictor resizes an original ``height`` x ``width`` image to."""
        return self.config.test_resize.output_size(height, width)

    def input_protocol(self, **options: Any) -> str:
        """How the predictor prepares images: ``"detectron2"`` (PIL bilinear test resize; TTA ratios of
        the test size, score maps averaged) or ``"mmseg"`` (cv2-exact bilinear resize of the uint8
        image; TTA ratios of the original size as mmcv ``Resize(scale_factor=r)``, each map softmaxed
        over the classes before averaging, as mmseg's ``SegTTAModel``)."""
        return "detectron2"

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings of K classes.

        Args:
            tokens: (P, K, L) int64 token ids, P templates, K classes.

        Returns:
            (K, ...) float, normalised along the last axis; the layout is model specific.
        """
        raise NotImplementedError

    def predict(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
        **options: Any,
    ) -> torch.Tensor:
        """Semantic score map: the concatenation of :meth:`predict_blocks`.

        Args:
            images: (B, 3, H, W) float, normalised with pixel_mean/std, padded bottom/right.
            text: (K, ...) from ``encode_text``.
            image_size: (h, w) valid (unpadded) size inside ``images``.
            output_size: (H0, W0) size of the returned map (the original image size).
            options: model specific switches (e.g. ``inference="slide"``, ``fast=True, topk=8``).

        Returns:
            (B, K, H0, W0) scores in the dtype of ``images``; the label map is their argmax over K.
            What the scores are is model specific (see each model's ``predict_blocks``).
        """
        from ovss.layers.resize import assemble_blocks

        blocks = self.predict_blocks(images, text, image_size, output_size, BLOCK_ELEMENTS, **options)
        shape = (images.shape[0], text.shape[0], *output_size)
        return assemble_blocks(blocks, shape, images.dtype, images.device)

    @torch.no_grad()
    def predict_blocks(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
        max_elements: int = BLOCK_ELEMENTS,
        **options: Any,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The score map of :meth:`predict` in blocks of at most about ``max_elements`` elements:
        :meth:`image_stage` then :meth:`text_stage` (each model's ``text_stage`` says how it blocks).

        Yields:
            (class_start, row_start, scores (B, k, r, W0)) blocks that tile the (B, K, H0, W0) map;
            the numbers equal :meth:`predict`'s. The predictor reduces them as they come (argmax,
            maxima), so peak memory stays bounded for large vocabularies.
        """
        features = self.image_stage(images, image_size, **options)
        yield from self.text_stage(features, text, image_size, output_size, max_elements, **options)

    def image_stage(self, images: torch.Tensor, image_size: tuple[int, int], **options: Any) -> Features:
        """The image-only stage: everything of :meth:`predict_blocks` that does not see the text.

        Models that split their forward (SAN, CAT-Seg, CAT-Seg v1, SED) return their image features
        (CLIP tokens, side-adapter outputs, encoder maps); :meth:`text_stage` finishes from
        them. The default does no work and keeps the inputs.

        Args:
            images, image_size, options: as for :meth:`predict_blocks`.

        Returns:
            a dict of tensors (or lists/tuples of tensors, ints, strings) tied to these images,
            ``options`` and the model's dtype; the predictor caches it (:func:`features_nbytes`).
        """
        return {"images": images}

    def text_stage(
        self,
        features: Features,
        text: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
        max_elements: int = BLOCK_ELEMENTS,
        **options: Any,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The text stage: :meth:`predict_blocks`'s blocks from :meth:`image_stage` of the same
        images, ``image_size`` and ``options`` (bit for bit the same numbers). The default, for a
        model that implements only :meth:`predict`: its whole map as one block."""
        if type(self).predict is SegmentationModel.predict:
            raise NotImplementedError(f"{type(self).__name__} must implement text_stage or predict")
        yield 0, 0, self.predict(features["images"], text, image_size, output_size, **options)


def check_stage_mode(model: str, features: Features, mode: Any, option: str = "inference") -> None:
    """Refuse to finish ``features`` (an :meth:`SegmentationModel.image_stage` output recording its
    ``"mode"``, the value of ``option``) with another ``mode`` than the one they were computed with."""
    if features["mode"] != mode:
        raise ConfigError(
            f"{model} image features of {option}={features['mode']!r} cannot finish {option}={mode!r}; "
            "compute them with the same options"
        )


def features_nbytes(features: Any) -> int:
    """Bytes held by the tensors of ``features`` (nested dicts, lists and tuples; other values: 0)."""
    if isinstance(features, torch.Tensor):
        return features.nelement() * features.element_size()
    if isinstance(features, dict):
        return sum(features_nbytes(v) for v in features.values())
    if isinstance(features, (list, tuple)):
        return sum(features_nbytes(v) for v in features)
    return 0
