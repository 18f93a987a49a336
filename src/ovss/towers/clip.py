"""CLIP: an image tower (ViT or ConvNeXt) paired with the text tower, plus the named architectures.

Parameter names equal the open_clip ``CLIP`` module's, except that the text tower lives under
``text.`` (open_clip and OpenAI keep it at the top level; :mod:`ovss.weights.formats` maps it).

Reads: config -> model -> named configs / builder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ovss.config import Config
from ovss.errors import ConfigError, UnknownModelError
from ovss.towers.convnext import ConvNeXt, ConvNeXtConfig, convnext_base_w_320, convnext_large_d_320
from ovss.towers.text import TextConfig, TextTransformer
from ovss.towers.vit import VisionConfig, VisionTransformer

# Normalisation statistics the OpenAI CLIP weights (and open_clip's LAION ConvNeXt towers) expect,
# for images scaled to 0..1. Times 255 they are the 0..255 constants of SAN / CAT-Seg / SED.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(kw_only=True)
class ClipConfig(Config):
    """A CLIP model: exactly one image tower (``vision`` or ``convnext``), the text tower, and the
    preprocessing its weights were trained with."""

    embed_dim: int = 512  # joint embedding width E (output_dim of both towers)
    vision: VisionConfig | None = None  # ViT image tower, or None when `convnext` is set
    convnext: ConvNeXtConfig | None = None  # ConvNeXt image tower, or None when `vision` is set
    text: TextConfig = dataclasses.field(default_factory=TextConfig)  # text tower
    mean: tuple[float, float, float] = OPENAI_MEAN  # per-channel RGB mean, images in 0..1
    std: tuple[float, float, float] = OPENAI_STD  # per-channel RGB std, images in 0..1
    interpolation: str = "bicubic"  # resize filter of the pre-training preprocessing

    def __post_init__(self) -> None:
        # three values each: checked below
        self.mean = cast("tuple[float, float, float]", tuple(float(v) for v in self.mean))
        self.std = cast("tuple[float, float, float]", tuple(float(v) for v in self.std))
        if (self.vision is None) == (self.convnext is None):
            raise ConfigError(
                "ClipConfig needs exactly one image tower: set `vision` (ViT) or `convnext`, not "
                f"{'both' if self.vision is not None else 'neither'}"
            )
        if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            raise ConfigError(f"ClipConfig.embed_dim must be a positive integer, got {self.embed_dim!r}")
        image = self.vision if self.vision is not None else self.convnext
        assert image is not None
        name = "vision" if self.vision is not None else "convnext"
        dims = {f"{name}.output_dim": image.output_dim, "text.output_dim": self.text.output_dim}
        for where, dim in dims.items():
            if dim != self.embed_dim:
                raise ConfigError(
                    f"ClipConfig.{where}={dim} differs from embed_dim={self.embed_dim}; make them equal"
                )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"ClipConfig.mean/std must be 3 values (std > 0), got {self.mean} / {self.std}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(
                f"ClipConfig.interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}"
            )

    @property
    def image_size(self) -> int:
        """Native (pre-training) square image size of the image tower, in pixels."""
        if self.vision is not None:
            return self.vision.image_size
        assert self.convnext is not None  # exactly one tower (__post_init__)
        return self.convnext.image_size

    @property
    def mean_255(self) -> tuple[float, float, float]:
        """``mean`` for images on a 0..255 scale."""
        r, g, b = self.mean
        return 255.0 * r, 255.0 * g, 255.0 * b

    @property
    def std_255(self) -> tuple[float, float, float]:
        """``std`` for images on a 0..255 scale."""
        r, g, b = self.std
        return 255.0 * r, 255.0 * g, 255.0 * b


class CLIP(nn.Module):
    """Image tower ``visual``, text tower ``text`` and the learned temperature ``logit_scale`` ()."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual: VisionTransformer | ConvNeXt
        if cfg.vision is not None:
            self.visual = VisionTransformer(cfg.vision)
        else:
            assert cfg.convnext is not None  # exactly one tower (ClipConfig.__post_init__)
            self.visual = ConvNeXt(cfg.convnext)
        self.text = TextTransformer(cfg.text)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Global image embedding.

        Args:
            images: (B, 3, H, W) float, CLIP-normalised (``config.mean`` / ``config.std``).
            normalize: L2-normalise along the last axis.

        Returns:
            (B, embed_dim).
        """
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embedding at the EOT token.

        Args:
            tokens: (N, L) int64 token ids, ``L <= text.context_length``.
            normalize: L2-normalise along the last axis.

        Returns:
            (N, embed_dim).
        """
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``exp(logit_scale) * img @ txt.T``: (B, 3, H, W), (N, L) -> (B, N)."""
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(tokens, normalize=True)
        return self.logit_scale.exp() * img @ txt.T


# ----------------------------------------------------------------------------------------------
# named architectures (the published towers)


def vit_b_16() -> ClipConfig:
    """OpenAI ViT-B/16 at 224 px: 149,620,737 parameters."""
    return ClipConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512),
        text=TextConfig(width=512, heads=8, layers=12, output_dim=512),
    )


def vit_l_14() -> ClipConfig:
    """OpenAI ViT-L/14 at 224 px."""
    return ClipConfig(
        embed_dim=768,
        vision=VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
        text=TextConfig(width=768, heads=12, layers=12, output_dim=768),
    )


def vit_l_14_336() -> ClipConfig:
    """OpenAI ViT-L/14@336px."""
    cfg = vit_l_14()
    return cfg.override("vision.image_size=336")


def convnext_b_w_320() -> ClipConfig:
    """open_clip ``convnext_base_w_320`` (LAION): ConvNeXt-B image tower, 640-wide GELU text tower."""
    return ClipConfig(
        embed_dim=640,
        convnext=convnext_base_w_320(),
        text=TextConfig(width=640, heads=10, layers=12, output_dim=640, act="gelu"),
    )


def convnext_l_d_320() -> ClipConfig:
    """open_clip ``convnext_large_d_320`` (LAION): ConvNeXt-L image tower (MLP head), 16-layer text."""
    return ClipConfig(
        embed_dim=768,
        convnext=convnext_large_d_320(),
        text=TextConfig(width=768, heads=12, layers=16, output_dim=768, act="gelu"),
    )


CLIP_CONFIGS: dict[str, Callable[[], ClipConfig]] = {
    "ViT-B-16": vit_b_16,
    "ViT-L-14": vit_l_14,
    "ViT-L-14-336": vit_l_14_336,
    "ConvNeXt-B-w-320": convnext_b_w_320,
    "ConvNeXt-L-d-320": convnext_l_d_320,
}


def clip_config(name: str) -> ClipConfig:
    """The named architecture's config (a fresh object); UnknownModelError lists the valid names."""
    if name not in CLIP_CONFIGS:
        raise UnknownModelError(f"unknown CLIP architecture {name!r}; valid names: {sorted(CLIP_CONFIGS)}")
    return CLIP_CONFIGS[name]()


def build_clip(name_or_config: str | ClipConfig, split_qkv: bool | None = None) -> CLIP:
    """Build a randomly initialised CLIP from a registered name or a config.

    Args:
        name_or_config: a key of :data:`CLIP_CONFIGS` or a :class:`ClipConfig`.
        split_qkv: if given, override ``split_qkv`` of both towers' attention (CAT-Seg: True);
            ignored for the ConvNeXt image tower, which has no attention.

    Returns:
        the module (build under ``torch.device("meta")`` to get shapes without memory).
    """
    cfg = clip_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if split_qkv is not None:
        sets = [f"text.split_qkv={'true' if split_qkv else 'false'}"]
        if cfg.vision is not None:
            sets.append(f"vision.split_qkv={'true' if split_qkv else 'false'}")
        cfg = cfg.override(*sets)
    return CLIP(cfg)
