"""SED (Xie et al., CVPR 2024): hierarchical ConvNeXt CLIP encoder, cosine cost map, gradual fusion
decoder, category early rejection (CER).

```
images (B,3,H,W) --resize 768--> ConvNeXt CLIP --> res2 (s4), res3 (s8), res4 (s16), res5 (s32)
                                          res5 --trunk.head.norm + CLIP head per pixel--> dense (B,E,24,24)
text (K,80,E) frozen, 80 ImageNet templates
cost = cos(dense, text) (B*K,80,24,24) --> SEDDecoder (skips res4/res3/res2, detached) --> (B,K,192,192)
```

Reads: config -> model -> builders. The decoder lives in :mod:`ovss.models.sed_decoder`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ovss.errors import ConfigError
from ovss.layers.resize import BandedResize, bands_to_blocks, bilinear_matrix, bilinear_resize
from ovss.models.base import BLOCK_ELEMENTS, ModelConfig, SegmentationModel, check_stage_mode
from ovss.models.family import Family, register_family
from ovss.models.sed_decoder import SEDDecoder
from ovss.towers.clip import CLIP, ClipConfig, convnext_b_w_320, convnext_l_d_320
from ovss.towers.convnext import ConvNeXt, ConvNeXtConfig
from ovss.towers.text import TextConfig

# ----------------------------------------------------------------------------------------------
# config


@dataclasses.dataclass(kw_only=True)
class SEDConfig(ModelConfig):
    """SED architecture and inference settings (official ``convnextB_768.yaml`` by default)."""

    clip: ClipConfig = dataclasses.field(default_factory=convnext_b_w_320)  # ConvNeXt CLIP towers
    templates: str = "imagenet"  # 80 ImageNet templates, one cost channel each (order matters)
    size_divisibility: int = 0  # official eval pads nothing (detectron2 size_divisibility -1)
    image_size: int = 768  # every image is resized (bilinear, aspect not kept) to this square
    num_templates: int = 80  # P: cost-map channels = prompt templates per class
    hidden_dim: int = 128  # cost-embedding channels (HIDDEN_DIMS)
    decoder_dims: tuple[int, int, int] = (64, 32, 16)  # output channels of the 3 stages (DECODER_DIMS)
    guidance_proj_dims: tuple[int, int, int] = (32, 16, 8)  # image / cost guidance channels per stage
    kernel_sizes: tuple[int, int, int] = (9, 9, 9)  # decoder ConvNeXt depthwise kernels (KERNEL_SIZE)
    heads: int = 4  # class-attention heads (NUM_HEADS)
    pool_train: tuple[int, int] = (2, 2)  # class-attention average-pool kernel in training
    pool_test: tuple[int, int] = (1, 1)  # ... at inference (official eval.sh: POOLING_SIZES [1,1])
    fast_inference: bool = False  # default of predict(fast=...): CER (TEST.FAST_INFERENCE)
    topk: int = 8  # default of predict(topk=...): classes kept per pixel by CER (README: TEST.TOPK 8)

    def __post_init__(self) -> None:
        if self.clip.convnext is None:
            raise ConfigError(
                "SEDConfig.clip must have a ConvNeXt image tower (set clip.convnext), got a ViT"
            )
        if len(self.clip.convnext.dims) != 4:
            raise ConfigError(
                f"SEDConfig.clip.convnext.dims must have 4 stages, got {self.clip.convnext.dims}"
            )
        for name in ("decoder_dims", "guidance_proj_dims", "kernel_sizes", "pool_train", "pool_test"):
            value = tuple(getattr(self, name))
            setattr(self, name, value)
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value):
                raise ConfigError(f"SEDConfig.{name} must hold positive integers, got {value}")
        for name, size in (
            ("decoder_dims", 3),
            ("guidance_proj_dims", 3),
            ("kernel_sizes", 3),
            ("pool_train", 2),
            ("pool_test", 2),
        ):
            if len(getattr(self, name)) != size:
                raise ConfigError(f"SEDConfig.{name} must have {size} entries, got {getattr(self, name)}")
        stride = self.clip.convnext.reductions[-1]
        if self.image_size < stride or self.image_size % stride:
            raise ConfigError(f"SEDConfig.image_size must be a multiple of {stride}, got {self.image_size}")
        for d in self.decoder_dims:
            if d < 16 or d % (d // 16):
                raise ConfigError(
                    f"SEDConfig.decoder_dims entries need >= 16 channels divisible by their GroupNorm "
                    f"groups (d // 16), got {self.decoder_dims}"
                )
        for c, g in zip(self.stage_in_dims, self.guidance_proj_dims):
            if g >= c:
                raise ConfigError(
                    f"SEDConfig.guidance_proj_dims {self.guidance_proj_dims} must be smaller than the stage "
                    f"input widths {self.stage_in_dims} (the up-conv outputs width - guidance)"
                )
            if c % self.heads:
                raise ConfigError(
                    f"SEDConfig.heads={self.heads} must divide the stage widths {self.stage_in_dims}"
                )
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ConfigError(f"SEDConfig.kernel_sizes must be odd, got {self.kernel_sizes}")
        if self.topk < 1:
            raise ConfigError(f"SEDConfig.topk must be >= 1, got {self.topk}")
        from ovss.vocab.templates import get_templates

        count = len(get_templates(self.templates))
        if count != self.num_templates:
            raise ConfigError(
                f"SEDConfig.num_templates={self.num_templates} but template set {self.templates!r} has "
                f"{count} templates; the cost map has one channel per template, make them equal"
            )

    @property
    def stage_in_dims(self) -> tuple[int, int, int]:
        """Input channels of the 3 decoder stages: (hidden_dim, decoder_dims[0], decoder_dims[1])."""
        return (self.hidden_dim, self.decoder_dims[0], self.decoder_dims[1])

    @property
    def guidance_dims(self) -> tuple[int, int, int]:
        """Channels of the image skips in stage order: res4, res3, res2 (DECODER_GUIDANCE_DIMS)."""
        assert self.clip.convnext is not None  # a ConvNeXt (__post_init__)
        dims = self.clip.convnext.dims
        return (dims[2], dims[1], dims[0])


# ----------------------------------------------------------------------------------------------
# model


class SEDOutput(NamedTuple):
    """Training outputs (all logits, before sigmoid)."""

    logits: torch.Tensor  # (B, K, S/4, S/4) main output, S = config.image_size
    aux: list[torch.Tensor]  # CER heads on detached features: (B, K, S/32..), (S/16..), (S/8..)


class SED(SegmentationModel):
    """SED: ``clip`` (ConvNeXt image tower fine-tuned, text tower frozen) and ``decoder``.

    Args:
        config: architecture and inference defaults.
    """

    config: SEDConfig
    clip: CLIP

    def __init__(self, config: SEDConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIP(config.clip)
        self.decoder = SEDDecoder(
            num_templates=config.num_templates,
            hidden_dim=config.hidden_dim,
            decoder_dims=config.decoder_dims,
            guidance_dims=config.guidance_dims,
            guidance_proj_dims=config.guidance_proj_dims,
            kernel_sizes=config.kernel_sizes,
            heads=config.heads,
            pool_train=config.pool_train,
            pool_test=config.pool_test,
        )
        self.freeze()

    # -- training rule ---------------------------------------------------------------------------
    def is_trainable(self, name: str) -> bool:
        """SED's rule (CLIP_FINETUNE "full"): every ``clip.visual.*`` parameter and the decoder train;
        the text tower and ``logit_scale`` stay frozen (SED sed_model.py, ``__init__``). Names under
        ``clip.`` get the CLIP lr multiplier (0.01)."""
        return name.startswith(("clip.visual.", "decoder."))

    # -- encoders --------------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-template text embeddings.

        Args:
            tokens: (P, K, L) int64 token ids, P templates (80), K classes.

        Returns:
            (K, P, E) float, L2-normalised along E.
        """
        p, k, length = tokens.shape
        emb = self.clip.text(tokens.reshape(p * k, length))
        return F.normalize(emb, dim=-1).view(p, k, -1).transpose(0, 1).contiguous()

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Dense CLIP embedding and the four stage maps.

        Args:
            images: (B, 3, S, S) CLIP-normalised, S = config.image_size.

        Returns:
            dense (B, E, S/32, S/32) (``clip_vis_dense``, not normalised) and
            [res2 (B, C0, S/4, S/4), res3 (S/8), res4 (S/16), res5 (S/32)].
        """
        visual = self.clip.visual
        assert isinstance(visual, ConvNeXt)  # SED's image tower
        feats = visual.forward_features(images)
        return visual.dense_embedding(feats[-1]), feats

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        return bilinear_resize(images, (self.config.image_size, self.config.image_size))

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """What the decoder consumes: images resized to S, dense embedding and detached skips.

        Args:
            images: (B, 3, H, W) CLIP-normalised, any size (bilinearly resized to S x S).

        Returns:
            dense (B, E, S/32, S/32) and skips [res4 (S/16), res3 (S/8), res2 (S/4)], detached.
        """
        dense, feats = self.encode_image(self._resize(images))
        # Stop-gradient on the skips (official: clone().detach()): the encoder learns only through
        # the cost map.
        skips = [feats[2].detach(), feats[1].detach(), feats[0].detach()]
        return dense, skips

    # -- training --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, text: torch.Tensor) -> SEDOutput:
        """Training forward on all classes.

        Args:
            images: (B, 3, H, W) CLIP-normalised (resized to config.image_size if needed).
            text: (K, P, E) from :meth:`encode_text`.

        Returns:
            :class:`SEDOutput`: main logits (B, K, S/4, S/4) and the 3 CER-head logits.
        """
        dense, skips = self.image_features(images)
        logits, aux = self.decoder(dense, text, skips)
        return SEDOutput(logits, aux)

    # -- inference -------------------------------------------------------------------------------
    def _options(self, fast: bool | None, topk: int | None, options: dict[str, Any]) -> tuple[bool, int]:
        """``fast``, ``topk`` with the config's defaults; one-line errors for anything else."""
        if options:
            raise ConfigError(
                f"SED does not take the option(s) {sorted(options)}; its options are fast=True/False "
                "and topk=<int>"
            )
        fast = self.config.fast_inference if fast is None else fast
        topk = self.config.topk if topk is None else topk
        if topk < 1:
            raise ConfigError(f"SED topk must be >= 1 (classes kept per pixel), got {topk}")
        return fast, topk

    def image_stage(
        self,
        images: torch.Tensor,
        image_size: tuple[int, int],
        fast: bool | None = None,
        topk: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """The image-only stage of :meth:`predict_blocks`: the ConvNeXt encoder (:meth:`image_features`)
        and the decoder's image-guidance terms (:meth:`SEDDecoder.image_terms`; the skips themselves are
        then not needed, which keeps the features small).

        Returns:
            ``{"mode": fast (bool), "dense": (B, E, S/32, S/32), "terms": [(B, d_i, ...) per
            stage], "padded": (H, W)}``.
        """
        fast, _ = self._options(fast, topk, options)
        dense, skips = self.image_features(images)
        if fast:  # the CER decoder runs image by image: so do its terms (the same convolutions)
            per_image = [self.decoder.image_terms([s[b : b + 1] for s in skips]) for b in range(len(dense))]
            terms = [torch.cat(parts) for parts in zip(*per_image, strict=True)]
        else:
            terms = self.decoder.image_terms(skips)
        return {"mode": fast, "dense": dense, "terms": terms, "padded": tuple(images.shape[-2:])}

    def text_stage(
        self,
        features: dict[str, Any],
        text: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
        max_elements: int = BLOCK_ELEMENTS,
        fast: bool | None = None,
        topk: int | None = None,
        **options: Any,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The text stage of :meth:`predict_blocks` (the decoder and the resize) from :meth:`image_stage`:
        the score map of :meth:`predict` in bands of output rows.

        The network runs once; the crop and sigmoid run on the small (S/4) map and the bilinear
        resize to ``output_size`` (``F.interpolate``'s weights, :class:`~ovss.layers.resize.BandedResize`)
        one band of rows at a time, all in float32 whatever the model dtype, so (B, K, H0, W0) is never
        held.

        Args:
            features: :meth:`image_stage` of (B, 3, H, W) CLIP-normalised images, padded bottom/right if
                ``image_size`` is smaller.
            text: (K, P, E) from :meth:`encode_text`.
            image_size: (h, w) valid region of the images.
            output_size: (H0, W0) size of the score map.
            fast: category early rejection (default ``config.fast_inference``): rejected classes are
                dropped from the decoder and score exactly 0.
            topk: classes kept per pixel by CER (default ``config.topk``).
            max_elements: bound on the float32 elements of one band, B x K x rows x W0 (at least 8 rows).

        Yields:
            ``(0, row_start, scores)``: scores (B, K, r, W0) float32 (a channels-last view) for output
            rows ``[row_start, row_start + r)``, top to bottom: sigmoid of the final logits (normal), or
            the official CER output (sigmoid at surviving classes, 0 elsewhere).
        """
        fast, topk = self._options(fast, topk, options)
        check_stage_mode("SED", features, fast, "fast")  # the terms are batched differently
        dense, terms = features["dense"], features["terms"]
        if fast:  # probabilities already (0 at rejected classes)
            fast_one = self.decoder.forward_fast
            scores = torch.cat(
                [
                    fast_one(dense[b : b + 1], text, (), topk, [t[b : b + 1] for t in terms])[0]
                    for b in range(dense.shape[0])
                ]
            )
        else:  # logits; the sigmoid follows on the small map, in float32
            scores = self.decoder(dense, text, (), aux=False, terms=terms)[0]
        probs = valid_region(scores, features["padded"], image_size).float()
        if not fast:
            probs = probs.sigmoid()
        (h, w), (h0, w0) = probs.shape[-2:], output_size
        resize = BandedResize(bilinear_matrix(h, h0), bilinear_matrix(w, w0))
        cols = resize.columns(probs)  # (h, B, W0, K)
        rows = resize.band_rows(int(max_elements) // (probs.shape[0] * probs.shape[1] * w0))
        for start in range(0, h0, rows):
            stop = min(start + rows, h0)
            yield 0, start, bands_to_blocks(resize.band(cols, start, stop))


def valid_region(
    probs: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """Crop the part of a score map that covers the valid (unpadded) image.

    The whole (padded) input was squashed to the square CLIP resolution, so the valid region is the
    same fraction of the map. Unpadded inputs are not cropped; this equals the official
    ``sem_seg_postprocess`` crop for images of at least S/4 pixels a side (the official code crops
    image coordinates out of the S/4 map, which only bites for smaller images).

    Args:
        probs: (B, K, h', w') score map.
        padded_size: (H, W) of the network input.
        image_size: (h, w) valid region of the input.

    Returns:
        (B, K, rows, cols) view of ``probs``.
    """
    (ph, pw), (h, w) = padded_size, image_size
    if (h, w) == (ph, pw):
        return probs
    rows = max(1, min(probs.shape[-2], round(probs.shape[-2] * h / ph)))
    cols = max(1, min(probs.shape[-1], round(probs.shape[-1] * w / pw)))
    return probs[..., :rows, :cols]


# ----------------------------------------------------------------------------------------------
# builders


def sed_convnext_b() -> SEDConfig:
    """SED-B (``convnextB_768.yaml``): ConvNeXt-B CLIP (open_clip ``convnext_base_w_320``), E = 640."""
    return SEDConfig(clip=convnext_b_w_320())


def sed_convnext_l() -> SEDConfig:
    """SED-L (``convnextL_768.yaml``): ConvNeXt-L CLIP (open_clip ``convnext_large_d_320``), E = 768."""
    return SEDConfig(clip=convnext_l_d_320())


def sed_tiny() -> SEDConfig:
    """Tiny random SED shaped like the parity fixture ``sed_a`` (for tests and offline demos)."""
    clip = ClipConfig(
        embed_dim=32,
        convnext=ConvNeXtConfig(
            depths=(2, 2, 3, 2), dims=(12, 24, 36, 48), output_dim=32, proj="linear", drop_path=0.0
        ),
        text=TextConfig(width=16, heads=2, layers=2, output_dim=32, act="gelu"),
    )
    return SEDConfig(clip=clip, hidden_dim=48, decoder_dims=(32, 16, 16), guidance_proj_dims=(32, 16, 8))


# ------------------------------------------------------------------------------------------ family
FAMILY = register_family(Family(
    name="sed",
    title="SED",
    config_class=SEDConfig,
    model_class=SED,
    task="ovss.engine.tasks:SEDTask",
    class_variant="catseg",  # SED was evaluated with CAT-Seg's class-name lists
    summary="SED: hierarchical cost maps from a ConvNeXt CLIP, gradual fusion decoder, optional "
    "category early rejection",
    options=("fast", "topk"),
    formats={"sed_d2": "ovss.weights.formats.sed_d2"},
))
