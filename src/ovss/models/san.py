"""SAN: Side Adapter Network for open-vocabulary semantic segmentation (Xu et al., CVPR 2023).

A frozen CLIP ViT is split at block ``split``. Its first part runs on a down-scaled copy of the image
(``clip_resolution``); a small side ViT (with ``num_queries`` learnable query tokens, no class token,
no final norm) runs on the full image, with CLIP maps added into its patch tokens (``fusion_map``).
From the side outputs an MLP decoder predicts mask logits and per-head attention biases; the last CLIP
blocks then run on ``[Q copies of the CLS token; CLS; patches]`` with the max-pooled biases as an
additive mask, giving one region embedding per query, classified against the text embeddings plus a
learned void embedding. Behaviour, numeric quirks included, follows MendelXu/SAN @ e19262d.

Reads: config -> model -> builders; the side adapter's blocks (fusion, MLP, mask decoder, side
ViT) are in :mod:`ovss.models.san_adapter`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ovss.config import check_positive_ints
from ovss.errors import ConfigError
from ovss.layers.cv2_resize import mmcv_shortest_edge_size
from ovss.models.base import BLOCK_ELEMENTS, ModelConfig, SegmentationModel, check_stage_mode
from ovss.models.family import Family, InferenceOption, register_family
from ovss.models.san_adapter import SideAdapter
from ovss.models.san_protocols import (
    MMSEG_MEAN_255,
    MMSEG_STD_255,
    SAN_PROTOCOLS,
    d2_resize,
    d2_score_blocks,
    mmseg_score_blocks,
)
from ovss.towers.clip import CLIP, ClipConfig, vit_b_16, vit_l_14_336
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig, VisionTransformer

SOS_BLOCKED = -100.0  # the official additive value for "blocked" (not -inf), see spec 1.7


@dataclasses.dataclass(kw_only=True)
class SANConfig(ModelConfig):
    """SAN architecture; defaults are the official ViT-B/16 model (``san_clip_vit_res4_coco.yaml``)."""

    clip: ClipConfig = dataclasses.field(default_factory=vit_b_16)  # CLIP towers (ViT image tower)
    synonyms: Literal["verbatim", "mean", "first"] = "verbatim"  # official: "a, b" is ONE class string
    clip_resolution: float = 0.5  # CLIP input = bilinear x this of the padded side input
    split: int = 9  # FEATURE_LAST_LAYER_IDX: CLIP blocks [0, split) extract, [split, depth) recognise
    fusion_map: tuple[tuple[int, int], ...] = ((0, 0), (3, 1), (6, 2), (9, 3))  # (CLIP record, side idx)
    side_width: int = 240  # side ViT token width
    side_depth: int = 8  # side ViT blocks
    side_heads: int = 6  # side ViT attention heads
    side_mlp_ratio: float = 4.0  # side ViT MLP hidden / width
    side_patch_size: int = 16  # side ViT patch size (mask logits are at 1/side_patch_size)
    side_image_size: int = 640  # side pos_embed grid = side_image_size // side_patch_size
    side_ln_eps: float = 1e-6  # LayerNorm eps of the side blocks and of the fusion layers
    num_queries: int = 100  # query tokens = mask proposals = SOS tokens
    deep_supervision: tuple[int, ...] = (7, 8)  # 1-based side blocks emitting outputs (last = main)
    attn_bias_heads: int = 12  # ATTN_BIAS.NUM_HEADS: 1 or the CLIP heads
    attn_bias_layers: int = 1  # ATTN_BIAS.NUM_LAYERS: 1 (shared) or one per recognition block
    embed_channels: int = 256  # ATTN_BIAS.EMBED_CHANNELS: query/pixel/bias embedding width
    mlp_channels: int = 256  # ATTN_BIAS.MLP_CHANNELS: hidden width of the decoder MLPs
    mlp_layers: int = 3  # ATTN_BIAS.MLP_NUM_LAYERS
    rescale_attn_bias: bool = True  # learned scalar affine w*A+b on the attention bias
    rec_downsample: Literal["max", "avg", "bilinear", "bicubic", "nearest"] = "max"  # bias -> CLIP grid
    # test protocol (ovss.models.san_protocols): "d2" = MendelXu/SAN's detectron2 one, "mmseg" = the
    # mmsegmentation SAN's (cv2 resize, class scores formed at the padded size, then resized)
    inference: Literal["d2", "mmseg"] = "d2"

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        v = self.clip.vision
        if v is None:
            raise ConfigError("SANConfig.clip needs a ViT image tower (`vision`); SAN cannot use ConvNeXt")
        positive = ("side_width", "side_depth", "side_heads", "side_patch_size", "side_image_size",
                    "num_queries", "attn_bias_heads", "attn_bias_layers", "embed_channels",
                    "mlp_channels", "mlp_layers")
        check_positive_ints(self, positive)
        if self.inference not in SAN_PROTOCOLS:
            raise ConfigError(f"SANConfig.inference={self.inference!r} is not one of {list(SAN_PROTOCOLS)}")
        if not 0 < self.clip_resolution <= 4:
            raise ConfigError(f"SANConfig.clip_resolution must be in (0, 4], got {self.clip_resolution}")
        if not 1 <= self.split < v.layers:
            raise ConfigError(f"SANConfig.split={self.split} must be in 1..{v.layers - 1} (CLIP depth)")
        if self.side_width % self.side_heads:
            raise ConfigError(f"SANConfig.side_width={self.side_width} is not divisible by side_heads")
        if self.side_image_size % self.side_patch_size:
            raise ConfigError(
                f"SANConfig.side_image_size={self.side_image_size} is not a multiple of side_patch_size"
            )
        sides = [s for _, s in self.fusion_map]
        if len(set(sides)) != len(sides) or any(len(p) != 2 for p in self.fusion_map):
            raise ConfigError(f"SANConfig.fusion_map={self.fusion_map} needs unique (clip, side) pairs")
        for c, s in self.fusion_map:
            if not (0 <= c <= self.split and 0 <= s <= self.side_depth):
                raise ConfigError(
                    f"SANConfig.fusion_map pair ({c}, {s}) is out of range: CLIP record 0..{self.split}, "
                    f"side index 0..{self.side_depth}"
                )
        ds = list(self.deep_supervision)
        if not ds or ds != sorted(set(ds)) or ds[0] < 1 or ds[-1] > self.side_depth:
            raise ConfigError(
                f"SANConfig.deep_supervision={self.deep_supervision} must be increasing side blocks in "
                f"1..{self.side_depth}"
            )
        if self.attn_bias_heads not in (1, v.heads):
            raise ConfigError(
                f"SANConfig.attn_bias_heads={self.attn_bias_heads} must be 1 or the CLIP heads ({v.heads})"
            )
        if self.attn_bias_layers not in (1, v.layers - self.split):
            raise ConfigError(
                f"SANConfig.attn_bias_layers={self.attn_bias_layers} must be 1 or the recognition depth "
                f"{v.layers - self.split}"
            )


# -------------------------------------------------------------------------------------------- model
class SAN(SegmentationModel):
    """SAN on one CLIP (``clip``), the side adapter (``side``) and the void embedding (``bg_embed``).

    The CLIP image tower is used in two slices of the same module: blocks ``[0, split)`` extract
    features, blocks ``[split, depth)`` plus ``ln_post``/``proj`` recognise the masks.
    """

    config: SANConfig
    clip: CLIP

    def __init__(self, config: SANConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIP(config.clip)
        self.side = SideAdapter(config)
        e = config.clip.embed_dim
        self.bg_embed = nn.Parameter(torch.randn(e) * e**-0.5)
        self.freeze()

    # ---------------------------------------------------------------------------------- training
    def is_trainable(self, name: str) -> bool:
        """SAN's rule: only ``side``, ``bg_embed`` and the CLIP visual positional embedding train."""
        return name.startswith("side.") or name in ("bg_embed", "clip.visual.positional_embedding")

    # ---------------------------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prompt-ensembled class embeddings (official ``get_classifier_by_vocabulary``).

        Args:
            tokens: (P, K, L) int64 token ids, P templates, K classes.

        Returns:
            (K, E): per-template L2-normalised embeddings, averaged over P, L2-normalised again.
        """
        p, k, length = tokens.shape
        flat = tokens.reshape(p * k, length)
        chunks = [self.clip.encode_text(c, normalize=True) for c in flat.split(512)]
        per_template = torch.cat(chunks).reshape(p, k, -1)
        return F.normalize(per_template.mean(0), dim=-1)

    def classifier(self, text: torch.Tensor) -> torch.Tensor:
        """(K, E) class embeddings -> (K+1, E) with the void embedding last, every row L2-normalised."""
        return F.normalize(torch.cat([text, self.bg_embed.to(text.dtype).unsqueeze(0)]), dim=-1)

    # ---------------------------------------------------------------------------------- image
    def clip_features(self, images: torch.Tensor) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
        """Run the extraction slice of CLIP on the down-scaled images.

        Args:
            images: (B, 3, H, W) normalised, padded side input.

        Returns:
            record index -> (B, 1+g_h*g_w, D_c) tokens (class token first; 0 = after ln_pre, i =
            after block i) for every fused record and ``split``, and the grid (g_h, g_w).
        """
        cfg = self.config
        # scale_factor (not size) so that the sampling grid matches the official call exactly.
        x = F.interpolate(images, scale_factor=cfg.clip_resolution, mode="bilinear", align_corners=False)
        visual = self.clip.visual
        assert isinstance(visual, VisionTransformer)
        x, grid = visual.embed(x)
        wanted = {c for c, _ in cfg.fusion_map} | {cfg.split}
        records = {0: x} if 0 in wanted else {}
        for i in range(cfg.split):
            x = visual.run_blocks(x, i, i + 1)
            if i + 1 in wanted:
                records[i + 1] = x
        return records, grid

    def rec_attn_mask(self, bias: torch.Tensor, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Additive mask of the recognition blocks, built block by block.

        Args:
            bias: (B, heads or 1, Q, h_s, w_s) attention bias at the side resolution.
            grid: CLIP grid (g_h, g_w) the bias is pooled to.
            dtype: mask dtype (that of the tokens).

        Returns:
            (B, heads, T, T), T = Q + 1 + g_h*g_w. SOS rows: 0 on the diagonal, -100 on other SOS
            and the CLS column, the pooled bias on patch columns; other rows: -100 on SOS columns.
        """
        b, h, q = bias.shape[:3]
        pooled = _downsample(bias, grid, self.config.rec_downsample).reshape(b, h, q, -1)
        vision = self.config.clip.vision
        assert vision is not None
        heads = vision.heads
        n = pooled.shape[-1]
        t = q + 1 + n
        mask = torch.zeros(b, heads, t, t, dtype=dtype, device=bias.device)
        # SOS x [SOS; CLS]: 0 on the diagonal, blocked elsewhere (eye(q, q+1) leaves the CLS column 0)
        sos = SOS_BLOCKED * (1.0 - torch.eye(q, q + 1, dtype=dtype, device=bias.device))
        mask[:, :, :q, : q + 1] = sos
        mask[:, :, :q, q + 1 :] = pooled.to(dtype)  # broadcasts when the bias has one head
        mask[:, :, q:, :q] = SOS_BLOCKED
        return mask

    def recognize(
        self, tokens: torch.Tensor, biases: list[torch.Tensor], grid: tuple[int, int]
    ) -> torch.Tensor:
        """Region embeddings from the recognition slice of CLIP.

        Args:
            tokens: (B, 1+g_h*g_w, D_c) CLIP record ``split`` (class token first).
            biases: ``attn_bias_layers`` tensors (B, heads, Q, h_s, w_s) from the decoder.
            grid: CLIP grid (g_h, g_w).

        Returns:
            (B, Q, E) L2-normalised embeddings of the SOS tokens after ``ln_post`` and ``proj``.
        """
        visual, split = self.clip.visual, self.config.split
        assert isinstance(visual, VisionTransformer)
        q = biases[0].shape[2]
        x = torch.cat([tokens[:, :1].expand(-1, q, -1), tokens], dim=1)
        masks = [self.rec_attn_mask(b, grid, x.dtype) for b in biases]
        if len(masks) == 1:
            x = visual.run_blocks(x, split, None, attn_mask=masks[0])
        else:
            for i, mask in enumerate(masks):
                x = visual.run_blocks(x, split + i, split + i + 1, attn_mask=mask)
        return F.normalize(visual.head(x[:, :q]), dim=-1)

    def side_outputs(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The image-only part of SAN: mask logits and region embeddings of the decoded side outputs.

        Args:
            images: (B, 3, H, W) normalised, padded (H, W multiples of ``size_divisibility``).

        Returns:
            one (mask logits (B, Q, h_s, w_s), region embeddings (B, Q, E)) per ``deep_supervision``
            output in training, only the last (main) one in eval.
        """
        records, clip_grid = self.clip_features(images)
        fused = {s: records[c][:, 1:] for c, s in self.config.fusion_map}
        outputs, side_grid = self.side(images, fused, clip_grid)
        if not self.training:
            outputs = outputs[-1:]
        results = []
        for query, patches in outputs:
            masks, biases = self.side.decoder(query, patches, side_grid)
            results.append((masks, self.recognize(records[self.config.split], biases, clip_grid)))
        return results

    def class_logits(self, regions: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, Q, E) region embeddings and (K, E) text -> (B, Q, K+1) class logits (void last)."""
        weight = self.clip.logit_scale.exp() * self.classifier(text)  # (K+1, E)
        return regions @ weight.to(regions.dtype).T

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, Any]:
        """Mask and class logits of every decoded side output.

        Args:
            images: (B, 3, H, W) normalised, padded (H, W multiples of ``size_divisibility``).
            text: (K, E) from :meth:`encode_text`.

        Returns:
            ``{"pred_masks": (B, Q, h_s, w_s), "pred_logits": (B, Q, K+1), "aux_outputs": [...]}``;
            the main output is the last side output; in training ``aux_outputs`` holds the earlier
            ``deep_supervision`` outputs as ``{"pred_masks", "pred_logits"}`` dicts (empty in eval).
        """
        results = [
            {"pred_masks": masks, "pred_logits": self.class_logits(regions, text)}
            for masks, regions in self.side_outputs(images)
        ]
        return {**results[-1], "aux_outputs": results[:-1]}

    # ---------------------------------------------------------------------------------- protocols
    def preprocess_size(self, height: int, width: int, **options: Any) -> tuple[int, int]:
        """Test size: short side ``test_resize.size`` (640), long side <= ``max_size`` (2560), rounded
        as detectron2 (d2) or as mmseg's ``ResizeShortestEdge`` + mmcv ``imrescale`` (mmseg)."""
        r = self.config.test_resize
        if self._mode(dict(options)) == "mmseg" and r.mode == "short_side":
            return mmcv_shortest_edge_size(height, width, r.size, r.max_size)
        return r.output_size(height, width)

    def input_protocol(self, **options: Any) -> str:
        """``"mmseg"`` for ``inference="mmseg"`` (cv2-exact resize, mmseg TTA), else ``"detectron2"``."""
        return "mmseg" if self._mode(dict(options)) == "mmseg" else "detectron2"

    def image_stage(
        self, images: torch.Tensor, image_size: tuple[int, int], **options: Any
    ) -> dict[str, Any]:
        """The image-only stage of :meth:`predict_blocks`: the main side output (``side_outputs``).

        Returns:
            ``{"masks": (B, Q, h_s, w_s), "regions": (B, Q, E), "padded": (H, W), "mode": protocol}``.
        """
        mode = self._mode(dict(options))
        masks, regions = self.side_outputs(images)[-1]
        return {"masks": masks, "regions": regions, "padded": tuple(images.shape[-2:]), "mode": mode}

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
        map of :meth:`predict` in bands of output rows, all classes per band.

        Officially the (B, Q, h_s, w_s) mask logits are resized (bilinear) to the padded input, cropped
        to ``image_size``, resized to ``output_size``, passed through a sigmoid and summed over the
        queries weighted by the class probabilities. Here both resizes and the crop are one separable
        linear map (:class:`~ovss.layers.resize.BandedResize`, same weights to float32 rounding) applied
        8 rows at a time (:func:`~ovss.models.san_protocols.d2_score_blocks`), so neither
        (B, Q, H0, W0) nor (B, K, H0, W0) is ever held; the mask maps and the class combination are
        float32 whatever the model dtype.

        Args:
            features: :meth:`image_stage` of (B, 3, H, W) images, normalised, padded bottom/right.
            text: (K, E) from :meth:`encode_text`.
            image_size: (h, w) valid region inside ``images``.
            output_size: (H0, W0) of the score map.
            max_elements: bound on the band working set B x (Q + K) x rows x W0 (at least 8 rows).

        Yields:
            ``(0, row_start, scores)``: scores (B, K, r, W0) float32 (contiguous) for output
            rows ``[row_start, row_start + r)``, top to bottom. A score is the sum over queries of
            softmax(class logits)[:K] x sigmoid(mask logits) (official semantic inference).
            ``inference="mmseg"`` (options; default ``config.inference``): mmseg's order instead, the
            class scores formed at the padded size and then resized
            (:func:`~ovss.models.san_protocols.mmseg_score_blocks`).
        """
        mode = self._mode(dict(options))
        check_stage_mode("SAN", features, mode)
        masks, logits = features["masks"], self.class_logits(features["regions"], text)
        hw = (int(features["padded"][0]), int(features["padded"][1]))
        if mode == "mmseg":  # class scores at the padded size, then resized (san_protocols)
            yield from mmseg_score_blocks(masks, logits, hw, image_size, output_size, max_elements)
        else:
            resize = d2_resize((int(masks.shape[-2]), int(masks.shape[-1])), hw, image_size, output_size)
            yield from d2_score_blocks(masks, logits, resize, max_elements)


def _downsample(x: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """(..., C, h, w) -> (..., C, *size) with the official ``downsample2d`` methods."""
    (h, w), (gh, gw) = x.shape[-2:], size
    if method == "max" and h % gh == 0 and w % gw == 0:  # whole windows: the same maxima, 15x faster
        fh, fw = h // gh, w // gw
        rows = x[..., 0::fh, :]
        for i in range(1, fh):
            rows = torch.maximum(rows, x[..., i::fh, :])
        out = rows[..., 0::fw]
        for j in range(1, fw):
            out = torch.maximum(out, rows[..., j::fw])
        return out
    x = x.flatten(0, -4)
    if method == "max":
        return F.adaptive_max_pool2d(x, size)
    if method == "avg":
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode=method, align_corners=None if method == "nearest" else False)


# ------------------------------------------------------------------------------------------ builders
def san_vit_b16() -> SANConfig:
    """Official SAN ViT-B/16 (``san_clip_vit_res4_coco.yaml``): CLIP at 0.5x, split 9, 12 bias heads."""
    return SANConfig(clip=vit_b_16())


def san_vit_l14() -> SANConfig:
    """Official SAN ViT-L/14 (``san_clip_vit_large_res4_coco.yaml``): ViT-L/14@336 at 0.7x, split 18."""
    return SANConfig(
        clip=vit_l_14_336(),
        clip_resolution=0.7,
        split=18,
        fusion_map=((0, 0), (6, 1), (12, 2), (18, 3)),
        attn_bias_heads=16,
    )


def _mmseg(cfg: SANConfig) -> SANConfig:
    """``cfg`` with mmsegmentation's test protocol and its 4-decimal CLIP mean/std (``configs/san``)."""
    return dataclasses.replace(cfg, inference="mmseg", pixel_mean=MMSEG_MEAN_255, pixel_std=MMSEG_STD_255)


def san_vit_b16_mmseg() -> SANConfig:
    """mmsegmentation's SAN ViT-B/16 (``configs/san/san-vit-b16_coco-stuff164k-640x640.py``)."""
    return _mmseg(san_vit_b16())


def san_vit_l14_mmseg() -> SANConfig:
    """mmsegmentation's SAN ViT-L/14@336 (``configs/san/san-vit-l14_coco-stuff164k-640x640.py``)."""
    return _mmseg(san_vit_l14())


def san_tiny() -> SANConfig:
    """Tiny random SAN shaped like the parity fixture ``san_a`` (for tests and offline demos)."""
    clip = ClipConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=48, patch_size=16, width=64, layers=5, heads=4, output_dim=32),
        text=TextConfig(width=32, heads=2, layers=2, output_dim=32),
    )
    return SANConfig(
        clip=clip, split=3, fusion_map=((0, 0), (1, 1), (2, 2), (3, 3)), side_width=48, side_depth=4,
        side_heads=4, side_image_size=96, num_queries=10, deep_supervision=(3, 4), attn_bias_heads=4,
        embed_channels=32, mlp_channels=32,
    )


def san_tiny_mmseg() -> SANConfig:
    """:func:`san_tiny` with mmsegmentation's test protocol (as the ``.mmseg`` weights)."""
    return _mmseg(san_tiny())


# ------------------------------------------------------------------------------------------ family
FAMILY = register_family(Family(
    name="san",
    title="SAN",
    config_class=SANConfig,
    model_class=SAN,
    task="ovss.engine.tasks:SANTask",
    class_variant="san",
    summary="SAN (Side Adapter Network): frozen CLIP + a side adapter that proposes masks and the "
    "attention biases with which CLIP's last blocks classify them",
    options=("inference",),
    # every command uses the config's protocol (mmseg for the .mmseg weights, else d2); the demo lists
    # it first; export bakes it in
    inference=InferenceOption(
        modes=SAN_PROTOCOLS,
        labels={"d2": "detectron2 protocol (official SAN)", "mmseg": "mmsegmentation protocol"},
        exported=False,
        offered=lambda mode: ([mode, *(m for m in SAN_PROTOCOLS if m != mode)], mode)
        if mode in SAN_PROTOCOLS else (list(SAN_PROTOCOLS), SAN_PROTOCOLS[0]),
        foreign=("whole", "slide"),
    ),
    formats={"san_d2": "ovss.weights.formats.san_d2", "san_mmseg": "ovss.weights.formats.san_mmseg"},
))
