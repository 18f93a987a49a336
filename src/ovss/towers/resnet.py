"""detectron2-layout ResNet (bottleneck blocks, basic stem) in plain torch, cut after any stage.

Parameter names follow detectron2's ``build_resnet_backbone`` (``stem.conv1.weight``,
``stem.conv1.norm.*``, ``res2.0.conv1.weight``, ``res2.0.shortcut.norm.*``, ...), so official
detectron2 checkpoints load 1:1; mmseg ``ResNet`` files are renamed by their converter.

Reads: config -> FrozenBatchNorm2d -> conv/norm unit -> bottleneck -> stem -> ResNet.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ovss.config import Config, check_positive_ints
from ovss.errors import ConfigError

STAGES = ("res2", "res3", "res4", "res5")


@dataclasses.dataclass(kw_only=True)
class ResNetConfig(Config):
    """Architecture of a detectron2 ResNet (``MODEL.RESNETS.*`` names in brackets).

    Defaults are ResNet-101 as CAT-Seg v1 configures it (res2..res4 only).
    """

    depths: tuple[int, ...] = (3, 4, 23)  # bottleneck blocks of res2, res3, ... (R-101: 3, 4, 23, 3)
    stem_channels: int = 64  # [STEM_OUT_CHANNELS]
    res2_channels: int = 256  # output channels of res2, doubled per stage [RES2_OUT_CHANNELS]
    num_groups: int = 1  # [NUM_GROUPS]
    width_per_group: int = 64  # bottleneck width of res2 = num_groups * width_per_group [WIDTH_PER_GROUP]
    stride_in_1x1: bool = True  # stride on the first 1x1 conv (MSRA) instead of the 3x3 [STRIDE_IN_1X1]
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"  # FrozenBN (detectron2) or BatchNorm2d (mmseg SyncBN)
    eps: float = 1e-5  # normalisation epsilon

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        if not 1 <= len(self.depths) <= 4 or min(self.depths) <= 0:
            raise ConfigError(f"ResNetConfig.depths={self.depths} must be 1 to 4 positive block counts")
        check_positive_ints(self, ("stem_channels", "res2_channels", "num_groups", "width_per_group"))
        if self.norm not in ("frozen_bn", "bn"):
            raise ConfigError(f"ResNetConfig.norm must be 'frozen_bn' or 'bn', got {self.norm!r}")

    @property
    def out_features(self) -> tuple[str, ...]:
        """Names of the built stages (``res2``, ``res3``, ...)."""
        return STAGES[: len(self.depths)]

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of each built stage."""
        return tuple(self.res2_channels * 2**i for i in range(len(self.depths)))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all of them buffers (never trained).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, computed as one per-channel
    scale and shift (detectron2's formula). Buffers: weight, bias, running_mean, running_var (C,).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)


class ConvNorm(nn.Conv2d):
    """Bias-free Conv2d followed by its normalisation ``.norm`` (detectron2's ``Conv2d(norm=...)``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, cfg: ResNetConfig, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.norm: nn.Module = (
            FrozenBatchNorm2d(cout, cfg.eps) if cfg.norm == "frozen_bn" else nn.BatchNorm2d(cout, eps=cfg.eps)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; a projection shortcut when the width changes.

    Args:
        cin, cout: input and output channels; mid: bottleneck channels.
        stride: spatial stride, on the 1x1 (``stride_in_1x1``) or on the 3x3 conv.
    """

    def __init__(self, cin: int, cout: int, mid: int, stride: int, cfg: ResNetConfig) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride, cfg) if cin != cout else None
        s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(cin, mid, 1, s1, cfg)
        self.conv2 = ConvNorm(mid, mid, 3, s3, cfg, groups=cfg.num_groups)
        self.conv3 = ConvNorm(mid, cout, 1, 1, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class BasicStem(nn.Module):
    """7x7/2 conv + norm + ReLU, then 3x3/2 max-pool (padding 1): stride 4 overall."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, cfg.stem_channels, 7, 2, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, stem_channels, ceil(H / 4), ceil(W / 4)) for even H, W."""
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet trunk returning every built stage: ``{"res2": (B, C2, H/4, W/4), "res3": (B, 2*C2, H/8,
    W/8), "res4": (B, 4*C2, H/16, W/16), ...}``.

    Stage ``res2`` keeps the resolution, each later stage halves it in its first block.
    """

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.config = cfg
        self.stem = BasicStem(cfg)
        cin, mid = cfg.stem_channels, cfg.num_groups * cfg.width_per_group
        for i, (name, depth, cout) in enumerate(zip(cfg.out_features, cfg.depths, cfg.channels)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Bottleneck(cin, cout, mid, stride, cfg))
                cin = cout
            self.add_module(name, nn.Sequential(*blocks))
            mid *= 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalised images (H, W multiples of 32 keep the strides exact) -> stage maps."""
        x = self.stem(x)
        out = {}
        for name in self.config.out_features:
            x = getattr(self, name)(x)
            out[name] = x
        return out


def resnet101_d2(
    stride_in_1x1: bool = False, norm: Literal["frozen_bn", "bn"] = "frozen_bn"
) -> ResNetConfig:
    """ResNet-101 stages res2..res4 (CAT-Seg v1's ``R-101.pkl`` guidance backbone: 1024/512/256 ch)."""
    return ResNetConfig(depths=(3, 4, 23), stride_in_1x1=stride_in_1x1, norm=norm)
