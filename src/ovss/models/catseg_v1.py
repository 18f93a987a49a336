"""CAT-Seg v1 (arXiv 2303.11797 v1; official code before the 2024-04-04 "CVPR version") and its
mmsegmentation port (``projects/CAT-Seg``).

Reads: config -> model (encoders, logits, inference protocols) -> builders. The dense last CLIP
block (its v1 form: a per-token residual) is :func:`ovss.models.catseg_base.dense_last_block`.
The aggregator is :mod:`ovss.models.catseg_v1_aggregator`; the guidance backbones are
:mod:`ovss.towers.resnet` (R-101, with ViT-B/16) and :mod:`ovss.towers.swin` (Swin-B, with ViT-L/14).

Pipeline for a batch of RGB images on a 0..255 scale (the model normalises them itself, since it
needs two normalisations; ``pixel_mean``/``pixel_std`` are therefore 0 / 1):

1. CLIP input: CLIP-normalised, resized to ``clip_resolution``; dense CLIP with the v1 last block
   (value path plus a PER-TOKEN residual) -> (B, E, 24, 24);
2. backbone input: ImageNet-normalised, resized to ``backbone_resolution`` (384) -> res2, res3, res4;
3. aggregator: cost volume against (K, 80, E) text; res4 guides the spatial aggregation, res3 and
   res2 the two decoder blocks -> (B, K, 96, 96) logits.

Inference protocols (``inference=``): ``whole`` (official: zero-pad to 32, stretch the padded image
to 384, sigmoid), ``slide`` (official eval.sh: 640x640 canvas, 4 crops of 384 at stride 256 + a
global view, sigmoid maps fold-averaged then averaged with the global view) and ``mmseg`` (the port:
cv2 resize to short side 512, crops of 384 at stride 384, last row/column aligned to the border, no
global view, logits averaged, no sigmoid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from ovss.errors import ConfigError
from ovss.layers.cv2_resize import cv2_resize_linear, mmcv_rescale_size
from ovss.layers.resize import bilinear_resize, paste_sum, resize_planes, sigmoid_planes
from ovss.models.base import (
    BLOCK_ELEMENTS,
    CLIP_MEAN_255,
    CLIP_STD_255,
    ModelConfig,
    ResizeConfig,
    check_stage_mode,
)
from ovss.models.catseg import INFERENCE_LABELS
from ovss.models.catseg_base import (
    CostAggregationModel,
    aggregator_dims,
    check_aggregator_fields,
    dense_last_block,
    slide_views,
)
from ovss.models.catseg_v1_aggregator import AggregatorV1
from ovss.models.family import Family, InferenceOption, register_family
from ovss.towers.clip import CLIP, ClipConfig, vit_b_16, vit_l_14_336
from ovss.towers.resnet import ResNet, ResNetConfig, resnet101_d2
from ovss.towers.swin import SwinConfig, SwinTransformer, swin_b_384
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig, VisionTransformer
from ovss.utils import is_tracing

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
INFERENCE_MODES = ("whole", "slide", "mmseg")
# post-processing of one protocol: (classes, output size) -> (B, k, H0, W0) scores of those classes
Finish = Callable[[slice, tuple[int, int]], torch.Tensor]


@dataclasses.dataclass(kw_only=True)
class CATSegV1Config(ModelConfig):
    """Architecture and inference protocol of CAT-Seg v1 (defaults: R-101 + ViT-B/16, official code).

    Official config names in brackets (``MODEL.SEM_SEG_HEAD.*`` unless stated).
    """

    clip: ClipConfig = dataclasses.field(default_factory=vit_b_16)  # packed in_proj (MHA layout)
    resnet: ResNetConfig | None = dataclasses.field(default_factory=resnet101_d2)  # guidance backbone ...
    swin: SwinConfig | None = None  # ... or Swin (exactly one of resnet / swin)
    templates: str = "imagenet"  # 80 ImageNet templates, one cost channel each [PROMPT_ENSEMBLE_TYPE]
    synonyms: Literal["verbatim", "mean", "first"] = "mean"  # synonyms averaged per template, renormalised
    clip_resolution: int = 384  # CLIP input side: 384 (ViT-B/16) or 336 (ViT-L/14@336)
    backbone_resolution: int = 384  # extra-backbone input side (always 384 officially)
    backbone_mean: tuple[float, float, float] = IMAGENET_MEAN_255  # [MODEL.PIXEL_MEAN]
    backbone_std: tuple[float, float, float] = IMAGENET_STD_255  # [MODEL.PIXEL_STD]
    clip_mean: tuple[float, float, float] = CLIP_MEAN_255  # [MODEL.CLIP_PIXEL_MEAN]
    clip_std: tuple[float, float, float] = CLIP_STD_255  # [MODEL.CLIP_PIXEL_STD]
    guidance_proj_dims: tuple[int, int] = (32, 16)  # [DECODER_GUIDANCE_PROJ_DIMS]
    decoder_dims: tuple[int, int] = (64, 32)  # [DECODER_DIMS]
    hidden_dim: int = 128  # [HIDDEN_DIMS]
    appearance_proj_dim: int = 128  # [APPEARANCE_GUIDANCE_PROJ_DIM]
    text_proj_dim: int = 128  # [TEXT_GUIDANCE_PROJ_DIM]
    num_layers: int = 2  # [NUM_LAYERS]
    num_heads: int = 4  # [NUM_HEADS]
    window_size: int = 12  # [WINDOW_SIZES]
    pooling_train: tuple[int, int] = (2, 2)  # [POOLING_SIZES] of the training yaml
    pooling_test: tuple[int, int] = (1, 1)  # eval.sh sets [1,1]; the mmseg port keeps 6x6
    attention: Literal["linear", "full"] = "linear"  # [ATTENTION_TYPE]
    prompt_channels: int = 80  # P, hard-coded 80 in the official aggregator
    class_mlp_identity: bool = False  # mmseg port: x + LN(x) + MLP(LN(x)) in class aggregation
    backbone_lr_mult: float = 0.01  # [SOLVER.BACKBONE_MULTIPLIER]; 0 freezes the backbone (Swin-B v1)
    inference: Literal["whole", "slide", "mmseg"] = "slide"  # default protocol (eval.sh: slide)
    slide_size: int = 640  # official slide: canvas side
    slide_crop: int = 384  # slide crop side (both protocols)
    slide_stride: int = 256  # official: int(384 * (1 - 0.333)); the mmseg port: 384
    mmseg_scale: tuple[int, int] = (2048, 512)  # mmseg test Resize scale (long, short), keep ratio
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the model normalises itself
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        v = self.clip.vision
        if v is None or v.split_qkv or self.clip.text.split_qkv:
            raise ConfigError(
                "CATSegV1Config.clip needs a ViT image tower with the packed in_proj layout "
                "(vision.split_qkv=false, text.split_qkv=false)"
            )
        if (self.resnet is None) == (self.swin is None):
            raise ConfigError("CATSegV1Config needs exactly one guidance backbone: set `resnet` or `swin`")
        if len(self.backbone_channels) != 3:
            raise ConfigError("CATSegV1Config's backbone must give three stages (res2, res3, res4)")
        if self.clip_resolution <= 0 or self.clip_resolution % v.patch_size:
            raise ConfigError(
                f"CATSegV1Config.clip_resolution={self.clip_resolution} must be a positive multiple of "
                f"the patch size {v.patch_size}"
            )
        grid = self.feature_resolution
        if self.backbone_resolution != 16 * grid:
            raise ConfigError(
                f"CATSegV1Config.backbone_resolution={self.backbone_resolution} must be 16 x the cost grid "
                f"{grid} (res4 has stride 16 and must match the CLIP grid)"
            )
        check_aggregator_fields(self, grid, ("slide_size", "slide_crop", "slide_stride"))
        if self.backbone_lr_mult < 0:
            raise ConfigError(f"CATSegV1Config.backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if self.inference not in INFERENCE_MODES:
            raise ConfigError(
                f"CATSegV1Config.inference={self.inference!r} is not one of {list(INFERENCE_MODES)}"
            )

    @property
    def feature_resolution(self) -> int:
        """Side of the cost grid (24)."""
        assert self.clip.vision is not None  # a ViT (__post_init__)
        return self.clip_resolution // self.clip.vision.patch_size

    @property
    def backbone_channels(self) -> tuple[int, ...]:
        """Channels of res2, res3, res4 of the guidance backbone."""
        if self.resnet is not None:
            return self.resnet.channels
        assert self.swin is not None  # exactly one backbone (__post_init__)
        return self.swin.channels


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class CATSegV1(CostAggregationModel):
    """CAT-Seg v1: dense CLIP (v1 block), a ResNet / Swin guidance backbone and the v1 aggregator.

    Parameters CAT-Seg v1 does not train are frozen at construction (see :meth:`is_trainable`).
    """

    config: CATSegV1Config

    def __init__(self, config: CATSegV1Config) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIP(config.clip)
        self.backbone: nn.Module
        if config.resnet is not None:
            self.backbone = ResNet(config.resnet)
        else:
            assert config.swin is not None  # exactly one backbone (CATSegV1Config.__post_init__)
            self.backbone = SwinTransformer(config.swin)
        c2, c3, c4 = config.backbone_channels
        dims = aggregator_dims(config, guidance_dims=(c3, c2))
        self.aggregator = AggregatorV1(dims, appearance_dim=c4, class_mlp_identity=config.class_mlp_identity)
        self.freeze()

    # ------------------------------------------------------------------ training rule
    def is_trainable(self, name: str) -> bool:
        """v1's rule: CLIP image-tower attention (in_proj, out_proj) and positional embedding; the
        backbone when ``backbone_lr_mult > 0`` (except Swin's ``norm0``); everything else not CLIP."""
        if name.startswith("clip."):
            return name.startswith("clip.visual.") and ("attn" in name or "position" in name)
        if name.startswith("backbone."):
            return self.config.backbone_lr_mult > 0 and "norm0" not in name
        return True

    def encode_image_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, R, R) CLIP-normalised -> tokens (B, 1 + h*w, E) after the v1 dense block, and (h, w)."""
        visual = self.clip.visual
        assert isinstance(visual, VisionTransformer)
        x, grid = visual.embed(images)
        blocks = visual.transformer.blocks()
        x = visual.run_blocks(x, 0, len(blocks) - 1)
        x = dense_last_block(blocks[-1], x, residual="token")
        return visual.head(x), grid

    def inputs(
        self, rgb: torch.Tensor, valid: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP and backbone inputs of RGB images on a 0..255 scale.

        Args:
            rgb: (B, 3, H, W) RGB 0..255 (padded bottom/right when ``valid`` is given).
            valid: (h, w) valid region; outside it both normalised tensors are zero (official
                zero padding after normalisation).

        Returns:
            (B, 3, R, R) CLIP-normalised at ``clip_resolution`` and (B, 3, S, S) ImageNet-normalised at
            ``backbone_resolution``.
        """
        c = self.config
        clip_x = _normalise(rgb, c.clip_mean, c.clip_std)
        bb_x = _normalise(rgb, c.backbone_mean, c.backbone_std)
        if valid is not None and tuple(valid) != tuple(rgb.shape[-2:]):
            mask = torch.zeros_like(rgb[:1, :1])
            mask[..., : valid[0], : valid[1]] = 1
            clip_x, bb_x = clip_x * mask, bb_x * mask
        r, s = c.clip_resolution, c.backbone_resolution
        return bilinear_resize(clip_x, (r, r)), bilinear_resize(bb_x, (s, s))

    def encode_pair(self, clip_x: torch.Tensor, bb_x: torch.Tensor) -> dict[str, Any]:
        """The image-only part of the network: (B, 3, R, R) CLIP input, (B, 3, S, S) backbone input ->
        ``{"image": (B, E, h, w) dense CLIP embedding, "prepared": the aggregator's image-only inputs
        (``image_guidance`` of res4, res3, res2)}``; the raw backbone maps are not kept (a re-query
        handle holds only what the text stage reads)."""
        tokens, (h, w) = self.encode_image_dense(clip_x)
        image = tokens[:, 1:].transpose(1, 2).reshape(clip_x.shape[0], -1, h, w)
        feats = self.backbone(bb_x)
        prepared = self.aggregator.image_guidance(feats["res4"], (feats["res3"], feats["res2"]))
        return {"image": image, "prepared": prepared}

    def aggregate(self, maps: dict[str, Any], text: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        """The text part: :meth:`encode_pair` maps and (K, P, E) text -> (B, K, 4h, 4w) logits."""
        image = maps["image"]
        text = self._batched_text(image, text)
        return self.aggregator(image, text, None, None, pool, maps["prepared"])

    def logits(
        self, clip_x: torch.Tensor, bb_x: torch.Tensor, text: torch.Tensor, pool: tuple[int, int]
    ) -> torch.Tensor:
        """Network: (B, 3, R, R) CLIP input, (B, 3, S, S) backbone input, (K, P, E) text -> (B, K, 4h, 4w)."""
        self._check_text(text)
        return self.aggregate(self.encode_pair(clip_x, bb_x), text, pool)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Training / raw logits.

        Args:
            images: (B, 3, H, W) RGB 0..255 (384 x 384 training crops).
            text: (K, P, E) from :meth:`encode_text`.

        Returns:
            (B, K, 96, 96) logits; pooling ``pooling_train`` in training mode, else ``pooling_test``.
        """
        pool = self.config.pooling_train if self.training else self.config.pooling_test
        return self.logits(*self.inputs(images), text, pool)

    # ------------------------------------------------------------------ inference
    def preprocess_size(self, height: int, width: int, **options: Any) -> tuple[int, int]:
        """whole / slide: the detectron2 test resize (short side 640); mmseg: none (the model resizes
        with cv2's arithmetic itself)."""
        if self._mode(dict(options)) == "mmseg":
            return height, width
        return self.config.test_resize.output_size(height, width)

    def image_stage(
        self, images: torch.Tensor, image_size: tuple[int, int], **options: Any
    ) -> dict[str, Any]:
        """The image-only stage of :meth:`predict_blocks`: :meth:`encode_pair` of the protocol's
        views (``nets``: one batch for whole and slide, one per crop size for mmseg) and their geometry."""
        mode = self._mode(dict(options))
        c, b = self.config, images.shape[0]
        valid = images[..., : image_size[0], : image_size[1]]
        if mode == "whole":
            return {"mode": mode, "batch": b, "nets": [self.encode_pair(*self.inputs(images, image_size))]}
        if mode == "slide":
            size, crop = c.slide_size, c.slide_crop
            corners = self.slide_corners(size, size, crop, c.slide_stride)
            batch = slide_views(valid, size, crop, corners)  # (B * V, 3, crop, crop), image-major
            return {"mode": mode, "batch": b, "nets": [self.encode_pair(*self.inputs(batch))]}
        hr, wr = mmcv_rescale_size(image_size[0], image_size[1], c.mmseg_scale)
        canvas = cv2_resize_linear(valid, (hr, wr)).to(images.dtype)
        crop = c.slide_crop
        boxes = [
            (y, x, min(y + crop, hr), min(x + crop, wr))
            for y, x in self.slide_corners(hr, wr, crop, c.slide_stride)
        ]
        groups, nets = [], []
        for shape in sorted({(y2 - y1, x2 - x1) for y1, x1, y2, x2 in boxes}):  # one batch per crop size
            idx = [i for i, (y1, x1, y2, x2) in enumerate(boxes) if (y2 - y1, x2 - x1) == shape]
            batch = torch.cat(
                [canvas[..., boxes[i][0] : boxes[i][2], boxes[i][1] : boxes[i][3]] for i in idx]
            )
            # the port feeds the 384 crop to the backbone unresized; inputs() resizes only other sizes
            groups.append(idx)
            nets.append(self.encode_pair(*self.inputs(batch)))
        return {"mode": mode, "batch": b, "nets": nets, "groups": groups, "boxes": boxes, "canvas": (hr, wr)}

    def text_stage(
        self,
        features: dict[str, Any],
        text: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
        max_elements: int = BLOCK_ELEMENTS,
        **options: Any,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The text stage of :meth:`predict_blocks` from :meth:`image_stage` (same numbers): the score
        map in blocks of classes ``(class_start, 0, (B, k, H0, W0))``.

        Args:
            features: :meth:`image_stage` of (B, 3, H, W) RGB 0..255 images, padded bottom/right (whole:
                to 32).
            text: (K, P, E) from :meth:`encode_text`.
            image_size: (h, w) valid region inside the images.
            output_size: (H0, W0) of the score map.
            options: ``inference="whole"|"slide"|"mmseg"`` (default ``config.inference``).

        Yields:
            whole / slide: sigmoid probabilities in [0, 1]; mmseg: averaged logits (argmax = label).
        """
        mode = self._mode(dict(options))
        check_stage_mode(self.label, features, mode)
        per_class = features["batch"] * output_size[0] * output_size[1]
        step = max(1, int(max_elements) // max(per_class, 1))
        run = {"whole": self._whole, "slide": self._slide, "mmseg": self._mmseg}[mode]
        k, finish = run(features, text, image_size)
        if is_tracing():  # export: every class in one block (a chunk bound from K would freeze K)
            yield 0, 0, finish(slice(None), (output_size[0], output_size[1]))
            return
        # post-processing per chunk of classes (bounded memory); resizes and sigmoids per class plane
        # (resize_planes, sigmoid_planes), so a class's values never depend on the chunk
        for start in range(0, k, step):
            yield start, 0, finish(slice(start, min(start + step, k)), (output_size[0], output_size[1]))

    def _whole(
        self, features: dict[str, Any], text: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[int, Finish]:
        """Pad-to-32 image stretched to 384 -> sigmoid -> crop to the valid size (a no-op above 96 px)
        -> bilinear resize (detectron2 ``sem_seg_postprocess``)."""
        logits = self.aggregate(features["nets"][0], text, self.config.pooling_test)
        logits = logits[..., : image_size[0], : image_size[1]]

        def finish(classes: slice, size: tuple[int, int]) -> torch.Tensor:
            return resize_planes(sigmoid_planes(logits[:, classes]), size)

        return logits.shape[1], finish

    def slide_corners(self, height: int, width: int, crop: int, stride: int) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of the crops, row-major; the last row/column is aligned to the
        border (mmseg ``slide_inference``; for the official 640/384/256 grid it is [0, 256]^2)."""

        def starts(size: int) -> list[int]:
            n = max(size - crop + stride - 1, 0) // stride + 1
            return [max(min(i * stride + crop, size) - crop, 0) for i in range(n)]

        return [(y, x) for y in starts(height) for x in starts(width)]

    def _slide(
        self, features: dict[str, Any], text: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[int, Finish]:
        """Official v1 sliding window: canvas 640x640, 4 crops of 384 at stride 256 + a global view;
        per-view logits resized to 384 and passed through a sigmoid, crops fold-averaged on the
        canvas, averaged with the global view resized to the canvas, resized to the output."""
        c = self.config
        b = features["batch"]
        size, crop = c.slide_size, c.slide_crop
        corners = self.slide_corners(size, size, crop, c.slide_stride)
        n_views = len(corners) + 1
        boxes = [(y, x, y + crop, x + crop) for y, x in corners]
        logits = self.aggregate(features["nets"][0], text, c.pooling_test)  # (B * V, K, h, w)
        count = logits.new_zeros(1, 1, size, size, dtype=torch.float32)
        for y, x in corners:
            count[..., y : y + crop, x : x + crop] += 1

        def finish(classes: slice, out: tuple[int, int]) -> torch.Tensor:
            probs = sigmoid_planes(resize_planes(logits[:, classes].float(), (crop, crop)))
            probs = probs.unflatten(0, (b, n_views))
            total = paste_sum((probs[:, i] for i in range(len(corners))), boxes, (size, size))
            return resize_planes((total / count + resize_planes(probs[:, -1], (size, size))) / 2.0, out)

        return logits.shape[1], finish

    def _mmseg(
        self, features: dict[str, Any], text: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[int, Finish]:
        """mmseg port: cv2 resize to short side 512 -> crops of 384 at stride 384 (last row/column
        aligned to the border) -> per-crop logits resized to the crop -> averaged where crops overlap
        -> bilinear resize to the output; no sigmoid."""
        b, (hr, wr), boxes = features["batch"], features["canvas"], features["boxes"]
        views: dict[int, torch.Tensor] = {}
        for idx, net in zip(features["groups"], features["nets"]):
            out = self.aggregate(net, text, self.config.pooling_test).unflatten(0, (len(idx), b))
            views.update(zip(idx, out.unbind(0)))
        count = torch.zeros(1, 1, hr, wr, dtype=torch.float32, device=views[0].device)
        for y1, x1, y2, x2 in boxes:
            count[..., y1:y2, x1:x2] += 1

        def finish(classes: slice, out: tuple[int, int]) -> torch.Tensor:
            logits = (
                resize_planes(views[i][:, classes].float(), (y2 - y1, x2 - x1))
                for i, (y1, x1, y2, x2) in enumerate(boxes)
            )
            return resize_planes(paste_sum(logits, boxes, (hr, wr)) / count, out)

        return views[0].shape[1], finish


# ---------------------------------------------------------------------------------------- builders
def catseg_v1_r101_vit_b16() -> CATSegV1Config:
    """CAT-Seg v1 (B): CLIP ViT-B/16 at 384 + detectron2 ResNet-101 (``configs/vitb_r101_384.yaml``)."""
    return CATSegV1Config(clip=vit_b_16(), resnet=resnet101_d2(), clip_resolution=384)


def catseg_v1_swinb_vit_l14() -> CATSegV1Config:
    """CAT-Seg v1 (L): OpenAI CLIP ViT-L/14@336px at 336 + frozen Swin-B/12 at 384
    (``configs/vitl_swinb_384.yaml``)."""
    return CATSegV1Config(
        clip=vit_l_14_336(), resnet=None, swin=swin_b_384(), clip_resolution=336, backbone_lr_mult=0.0
    )


def _mmseg(cfg: CATSegV1Config, **changes: Any) -> CATSegV1Config:
    """The mmseg port's differences: BN backbone (SyncBN keys), 6x6 test pooling, MLP identity,
    cv2 short-side-512 slide protocol without a global view, no detectron2 test resize / padding."""
    return dataclasses.replace(
        cfg,
        pooling_test=(6, 6),
        class_mlp_identity=True,
        inference="mmseg",
        slide_stride=384,
        size_divisibility=0,
        test_resize=ResizeConfig(mode="none"),
        **changes,
    )


def catseg_v1_r101_vit_b16_mmseg() -> CATSegV1Config:
    """mmseg ``catseg_vitb-r101_4xb2-warmcoslr2e-4-adamw-80k_coco-stuff164k-384x384.py``."""
    cfg = catseg_v1_r101_vit_b16()
    assert cfg.resnet is not None
    return _mmseg(cfg, resnet=dataclasses.replace(cfg.resnet, norm="bn"))


def catseg_v1_swinb_vit_l14_mmseg() -> CATSegV1Config:
    """mmseg ``catseg_vitl-swin-b_4xb1-warmcoslr2e-4_adamw-80k_coco-stuff164k_384x384.py`` (the Swin-B
    feature extractor trains at lr x 0.01 there)."""
    return _mmseg(catseg_v1_swinb_vit_l14(), backbone_lr_mult=0.01)


def catseg_v1_tiny() -> CATSegV1Config:
    """Tiny CAT-Seg v1 shaped like the ``catsegv1_a`` fixture (R-101 depths, small widths); whole-image
    inference by default (one view: fast tests and demos; ``inference="slide"`` still works)."""
    clip = ClipConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=224, patch_size=16, width=128, layers=3, heads=2, output_dim=32),
        text=TextConfig(width=32, heads=4, layers=2, output_dim=32),
    )
    resnet = ResNetConfig(
        depths=(3, 4, 23), stem_channels=16, res2_channels=32, width_per_group=8, stride_in_1x1=False
    )
    return CATSegV1Config(
        clip=clip,
        resnet=resnet,
        clip_resolution=384,
        guidance_proj_dims=(8, 8),
        decoder_dims=(32, 16),
        hidden_dim=32,
        appearance_proj_dim=16,
        text_proj_dim=16,
        num_layers=2,
        num_heads=4,
        inference="whole",
    )


def catseg_v1_tiny_mmseg() -> CATSegV1Config:
    """Tiny mmseg-port CAT-Seg v1 (BN ResNet, 6x6 test pooling, MLP identity, mmseg slide); R-50 depths
    and a short side of 384 instead of 512 (one row of crops) keep tests fast."""
    cfg = catseg_v1_tiny()
    assert cfg.resnet is not None
    resnet = dataclasses.replace(cfg.resnet, norm="bn", depths=(3, 4, 6))
    return _mmseg(cfg, resnet=resnet, mmseg_scale=(1536, 384))


# ------------------------------------------------------------------------------------------ family
def _demo_modes(mode: str) -> tuple[list[str], str]:
    """Models of the official code offer whole and slide (their own first selected), those of the
    mmseg port (config ``mmseg``) their mmseg protocol and whole."""
    if mode == "mmseg":
        return ["mmseg", "whole"], "mmseg"
    return ["whole", "slide"], mode if mode in ("whole", "slide") else "slide"


FAMILY = register_family(Family(
    name="catseg_v1",
    title="CAT-Seg v1",
    config_class=CATSegV1Config,
    model_class=CATSegV1,
    task="ovss.engine.tasks:CATSegV1Task",
    class_variant="catseg",
    summary="CAT-Seg arXiv v1: cost aggregation with a ResNet-101 or Swin-B guidance backbone",
    options=("inference",),
    # v1 keeps its own protocol everywhere, except export (one whole-image pass unless told)
    inference=InferenceOption(
        modes=INFERENCE_MODES, labels=INFERENCE_LABELS, defaults={"export": "whole"}, offered=_demo_modes
    ),
    formats={
        "catseg_v1_d2": "ovss.weights.formats.catseg_v1_d2", "catseg_mm": "ovss.weights.formats.catseg_mm"
    },
))
