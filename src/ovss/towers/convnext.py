"""ConvNeXt CLIP image tower: a timm ConvNeXt trunk plus open_clip's ``TimmModel`` head.

This is the image encoder of open_clip's ``convnext_base_w_320`` and ``convnext_large_d_320``
(the towers SED fine-tunes). Parameter names equal open_clip's ``visual.*`` names with the
``visual.`` prefix removed, so an open_clip state dict loads 1:1 after stripping that prefix:

```
trunk.stem.0 (Conv 4x4 s4), trunk.stem.1 (LayerNorm2d)
trunk.stages.{s}.downsample.{0,1}   LayerNorm2d + Conv 2x2 s2 (stages 1..3 only)
trunk.stages.{s}.blocks.{j}.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}
trunk.head.norm                     LayerNorm2d applied after pooling (or per pixel: dense)
head.proj  (proj="linear")  |  head.mlp.fc1, head.mlp.fc2  (proj="mlp")
```
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ovss.config import Config, check_positive_ints, is_positive_int
from ovss.errors import ConfigError
from ovss.utils import is_tracing

# ----------------------------------------------------------------------------------------------
# config


@dataclasses.dataclass(kw_only=True)
class ConvNeXtConfig(Config):
    """Architecture of a ConvNeXt CLIP image tower (open_clip ``vision_cfg`` with a timm trunk)."""

    # blocks per stage (timm ``depths``); base and large: (3, 3, 27, 3)
    depths: tuple[int, ...] = (3, 3, 27, 3)
    # channels per stage (timm ``dims``); base (128, 256, 512, 1024), large (192, 384, 768, 1536)
    dims: tuple[int, ...] = (128, 256, 512, 1024)
    # input image channels
    in_chans: int = 3
    # stem patchify conv kernel = stride (timm ``patch_size``)
    patch_size: int = 4
    # depthwise conv kernel size in every block (odd; padding kernel_size // 2)
    kernel_size: int = 7
    # hidden width of the block MLP as a multiple of the stage width
    mlp_ratio: float = 4.0
    # initial layer-scale value (timm ``ls_init_value``); None = no ``gamma`` parameters
    ls_init_value: float | None = 1e-6
    # epsilon of every LayerNorm / LayerNorm2d (timm default for ConvNeXt: 1e-6)
    norm_eps: float = 1e-6
    # pre-training resolution (open_clip ``image_size``); ConvNeXt accepts any size divisible by 32
    image_size: int = 320
    # CLIP joint embedding dim (open_clip ``embed_dim``): 640 for base_w, 768 for large_d
    output_dim: int = 640
    # projection head (open_clip ``timm_proj``): "linear" = Linear(C, E);
    # "mlp" = Linear(C, 2E) - GELU - Linear(2E, E)
    proj: Literal["linear", "mlp"] = "linear"
    # bias of the last projection layer (open_clip ``proj_bias``; False for both official towers)
    proj_bias: bool = False
    # global pooling before trunk.head.norm (open_clip ``timm_pool``; "" there means timm's default "avg")
    pool: Literal["avg", "max"] = "avg"
    # maximum stochastic-depth rate, linearly increased over all blocks (open_clip ``timm_drop_path``)
    drop_path: float = 0.1
    # dropout in the CLIP head (open_clip ``timm_drop``): before proj ("linear") / after GELU ("mlp")
    head_drop: float = 0.0

    def __post_init__(self) -> None:
        self.depths = tuple(self.depths)
        self.dims = tuple(self.dims)
        if not self.depths or any(not is_positive_int(d) for d in self.depths):
            raise ConfigError(f"ConvNeXtConfig.depths must be positive integers, got {self.depths}")
        if len(self.dims) != len(self.depths) or any(not is_positive_int(d) for d in self.dims):
            raise ConfigError(
                f"ConvNeXtConfig.dims must be {len(self.depths)} positive integers (one per stage "
                f"in depths), got {self.dims}"
            )
        check_positive_ints(self, ("in_chans", "patch_size", "image_size", "output_dim"))
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(
                f"ConvNeXtConfig.kernel_size must be a positive odd integer, got {self.kernel_size}"
            )
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * min(self.dims)) < 1:
            raise ConfigError(f"ConvNeXtConfig.mlp_ratio must be > 0 (e.g. 4.0), got {self.mlp_ratio}")
        if self.ls_init_value is not None and not self.ls_init_value > 0:
            raise ConfigError(
                f"ConvNeXtConfig.ls_init_value must be > 0 or null (no layer scale), got {self.ls_init_value}"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"ConvNeXtConfig.norm_eps must be > 0 (e.g. 1e-6), got {self.norm_eps}")
        if self.proj not in ("linear", "mlp"):
            raise ConfigError(f"ConvNeXtConfig.proj must be 'linear' or 'mlp', got {self.proj!r}")
        if self.pool not in ("avg", "max"):
            raise ConfigError(f"ConvNeXtConfig.pool must be 'avg' or 'max', got {self.pool!r}")
        for name in ("drop_path", "head_drop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"ConvNeXtConfig.{name} must be in [0, 1), got {value}")

    @property
    def num_features(self) -> int:
        """Channels of the last stage (input width of the CLIP head)."""
        return self.dims[-1]

    @property
    def reductions(self) -> tuple[int, ...]:
        """Output stride of every stage: patch_size * 2**i."""
        return tuple(self.patch_size * 2**i for i in range(len(self.depths)))


# ----------------------------------------------------------------------------------------------
# blocks


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (B, C, H, W) map (timm ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each pixel normalised over its C channels."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p`` (train only).

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged (timm ``scale_by_keep``).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, ...); identity in eval mode or when p == 0."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``fc2(drop(gelu(fc1(x))))`` with timm's names (``fc1``, ``fc2``); exact (erf) GELU.

    Args:
        in_dim: input width.
        hidden: hidden width.
        out_dim: output width.
        bias2: whether ``fc2`` has a bias (``fc1`` always has one).
        drop: dropout after the activation (open_clip's MLP head; 0 in the trunk blocks).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, bias2: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_dim, bias=bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma * mlp(norm(conv_dw(x))))``; norm and MLP run channels-last.

    Inference without autograd on a channels-last input runs the norm and MLP on tiles of pixels
    (``tile_elements`` hidden activations each, 32 MB in float32) written back in place over the
    depthwise-conv output: the 4C-wide hidden layer, its bias fill and GELU stay in cache instead of
    streaming a (B, H, W, 4C) tensor through memory (the same numbers; up to 8 % less CPU time for
    ConvNeXt-B at 768 px single-threaded; the tiles stay large because many small parallel regions
    cost more than they save on a busy 2-core machine).

    Args:
        dim: channels C.
        kernel_size: depthwise kernel (odd; "same" padding).
        mlp_ratio: MLP hidden width / C.
        ls_init_value: initial layer scale ``gamma``; None = no layer scale.
        eps: LayerNorm epsilon.
        drop_path: stochastic-depth rate of this block.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = 1e-6,
        eps: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), dim)
        if ls_init_value is None:
            self.register_parameter("gamma", None)
        else:
            self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value)))
        self.drop_path = DropPath(drop_path)

    tile_elements = 1 << 23

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) (channels-last in, channels-last out)."""
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        if y.is_contiguous() and not (torch.is_grad_enabled() or self.training or is_tracing()):
            rows = y.view(-1, y.shape[-1])
            step = max(1, self.tile_elements // self.mlp.fc1.out_features)
            for r0 in range(0, rows.shape[0], step):
                tile = rows[r0 : r0 + step]
                hidden = self.mlp(self.norm(tile))
                if self.gamma is None:
                    tile.copy_(hidden)
                else:
                    torch.mul(hidden, self.gamma, out=tile)
            return y.add_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.mlp(self.norm(y))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtStage(nn.Module):
    """Optional downsample (LayerNorm2d + Conv 2x2 stride 2), then ``blocks``."""

    def __init__(self, in_dim: int, dim: int, depth: int, cfg: ConvNeXtConfig, dp_rates: list[float]) -> None:
        super().__init__()
        if in_dim != dim:
            self.downsample: nn.Module = nn.Sequential(
                LayerNorm2d(in_dim, eps=cfg.norm_eps), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2)
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *(
                ConvNeXtBlock(dim, cfg.kernel_size, cfg.mlp_ratio, cfg.ls_init_value, cfg.norm_eps, rate)
                for rate in dp_rates[:depth]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, H/2, W/2) (or (B, C, H, W) without downsample)."""
        return self.blocks(self.downsample(x))


class TrunkHead(nn.Module):
    """timm's classifier head with ``num_classes=0``: global pool, then ``norm`` (LayerNorm2d).

    Flatten, dropout (0) and ``fc`` (Identity) carry no parameters and are folded in.
    """

    def __init__(self, dim: int, pool: str, eps: float) -> None:
        super().__init__()
        self.pool = pool
        self.norm = LayerNorm2d(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) last-stage map -> (B, C) pooled, normalised features."""
        reduce = x.mean if self.pool == "avg" else x.amax
        return self.norm(reduce(dim=(2, 3), keepdim=True)).flatten(1)


class ConvNeXtTrunk(nn.Module):
    """timm ConvNeXt without classifier: ``stem``, ``stages``, ``head.norm`` (``norm_pre`` = Identity)."""

    def __init__(self, cfg: ConvNeXtConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, cfg.dims[0], kernel_size=cfg.patch_size, stride=cfg.patch_size),
            LayerNorm2d(cfg.dims[0], eps=cfg.norm_eps),
        )
        # stochastic depth grows linearly from 0 to drop_path over all blocks (timm)
        rates = torch.linspace(0, cfg.drop_path, sum(cfg.depths), device="cpu").tolist()
        stages = []
        start = 0
        prev = cfg.dims[0]
        for depth, dim in zip(cfg.depths, cfg.dims):
            stages.append(ConvNeXtStage(prev, dim, depth, cfg, rates[start : start + depth]))
            start += depth
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.head = TrunkHead(cfg.dims[-1], cfg.pool, cfg.norm_eps)


# ----------------------------------------------------------------------------------------------
# model


class ConvNeXt(nn.Module):
    """ConvNeXt CLIP image tower (open_clip ``TimmModel`` around a timm ConvNeXt).

    Accepts any input size; each stride-s step floors (use sides divisible by
    ``patch_size * 2**(len(depths) - 1)``, i.e. 32, for exact stage sizes).
    """

    def __init__(self, cfg: ConvNeXtConfig) -> None:
        super().__init__()
        self.config = cfg
        self.output_dim = cfg.output_dim
        self.trunk = ConvNeXtTrunk(cfg)
        c, e = cfg.num_features, cfg.output_dim
        if cfg.proj == "linear":
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                drop=nn.Dropout(cfg.head_drop), proj=nn.Linear(c, e, bias=cfg.proj_bias)
            )
        else:
            layers = OrderedDict(mlp=Mlp(c, 2 * e, e, bias2=cfg.proj_bias, drop=cfg.head_drop))
        self.head = nn.Sequential(layers)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm ConvNeXt init for the trunk (trunc-normal std 0.02 convs/linears, zero biases,
        ``gamma = ls_init_value``); the CLIP head keeps PyTorch's default Linear init (open_clip)."""
        for m in self.trunk.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def feature_info(self) -> list[dict[str, int]]:
        """One entry per stage map of :meth:`forward_features`: index, channels and stride."""
        return [
            {"index": i, "num_chs": c, "reduction": r}
            for i, (c, r) in enumerate(zip(self.config.dims, self.config.reductions))
        ]

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stem, then every stage; the stage outputs are SED's res2..res5.

        Args:
            images: (B, 3, H, W) float, CLIP-normalised.

        Returns:
            list of (B, dims[i], H / (4 * 2**i), W / (4 * 2**i)) maps, one per stage, taken straight
            after the stage (no norm; timm's ``norm_pre`` is Identity for these towers); channels-last
            in memory (the LayerNorms and MLPs then need no permute copies).
        """
        x = self.trunk.stem(images.contiguous(memory_format=torch.channels_last))
        features = []
        for stage in self.trunk.stages:
            x = stage(x)
            features.append(x)
        return features

    def dense_embedding(self, last: torch.Tensor) -> torch.Tensor:
        """Every pixel of the last stage map through the head as a 1x1 image (SED ``clip_vis_dense``).

        Pooling a 1x1 image is the identity, so this is ``trunk.head.norm`` per pixel, then ``head``.

        Args:
            last: (B, C, h, w) last stage map (``forward_features(images)[-1]``).

        Returns:
            (B, output_dim, h, w) dense CLIP embeddings, not normalised.
        """
        norm = self.trunk.head.norm
        x = F.layer_norm(last.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return self.head(x).permute(0, 3, 1, 2)

    def forward_head(self, last: torch.Tensor) -> torch.Tensor:
        """Global pool, ``trunk.head.norm``, CLIP head: (B, C, h, w) -> (B, output_dim)."""
        return self.head(self.trunk.head(last))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image embedding as open_clip's ``encode_image`` (not normalised).

        Args:
            images: (B, 3, H, W) float, CLIP-normalised.

        Returns:
            (B, output_dim).
        """
        return self.forward_head(self.forward_features(images)[-1])


# ----------------------------------------------------------------------------------------------
# builders


def _clip_convnext_320(
    dims: tuple[int, ...], output_dim: int, proj: Literal["linear", "mlp"], head_drop: float
) -> ConvNeXtConfig:
    """An open_clip ``convnext_*_320`` image tower: depths (3, 3, 27, 3), 320 px, drop path 0.1."""
    return ConvNeXtConfig(
        depths=(3, 3, 27, 3),
        dims=dims,
        image_size=320,
        output_dim=output_dim,
        proj=proj,
        drop_path=0.1,
        head_drop=head_drop,
    )


def convnext_base_w_320() -> ConvNeXtConfig:
    """Image tower of open_clip ``convnext_base_w_320`` (timm ``convnext_base``, linear head, E=640)."""
    return _clip_convnext_320((128, 256, 512, 1024), output_dim=640, proj="linear", head_drop=0.0)


def convnext_large_d_320() -> ConvNeXtConfig:
    """Image tower of open_clip ``convnext_large_d_320`` (timm ``convnext_large``, MLP head, E=768).

    ``head_drop`` is 0.1 as in SED's vendored open_clip 2.10.1 config (upstream open_clip has 0.0);
    it only matters in training.
    """
    return _clip_convnext_320((192, 384, 768, 1536), output_dim=768, proj="mlp", head_drop=0.1)
