"""CAT-Seg, CVPR 2024 version (cost aggregation over a dense CLIP cost volume).

Reads: config -> dense CLIP block -> model -> builders. The aggregator lives in
:mod:`ovss.models.catseg_aggregator`. Official reference: cvlab-kaist/CAT-Seg @ 6d3a188
(``cat_seg/cat_seg_model.py``, ``modeling/transformer/{model.py,cat_seg_predictor.py}``,
``third_party/model_vpt.py``).

Pipeline for a batch of CLIP-normalised images resized to ``clip_resolution`` (384 or 336):

1. dense CLIP: blocks 1..N-1 as usual (outputs of two of them are kept as guidance), the last block
   keeps only its value path plus the class token's residual stream, then ``ln_post`` and ``proj``
   on every token -> (B, E, 24, 24) image embedding;
2. guidance upsamplers: transposed convs on the two kept block outputs -> (B, 256, 48, 48) and
   (B, 128, 96, 96);
3. aggregator: cosine cost volume against the (K, P, E) text, spatial/class aggregation, decoder
   -> (B, K, 96, 96) logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ovss.errors import ConfigError
from ovss.layers.resize import BandedResize, bands_to_blocks, bilinear_matrix, bilinear_resize
from ovss.models.base import BLOCK_ELEMENTS, ModelConfig, check_stage_mode
from ovss.models.catseg_aggregator import Aggregator
from ovss.models.catseg_base import (
    CostAggregationModel,
    aggregator_dims,
    check_aggregator_fields,
    dense_last_block,
    slide_views,
)
from ovss.models.family import Family, InferenceOption, register_family
from ovss.towers.clip import CLIP, ClipConfig, vit_b_16, vit_l_14_336
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig, VisionTransformer

INFERENCE_MODES = ("whole", "slide")


def _split_qkv(cfg: ClipConfig) -> ClipConfig:
    """``cfg`` with the q/k/v projection weights of both towers stored separately (CAT-Seg layout)."""
    return cfg.override("vision.split_qkv=true", "text.split_qkv=true")


@dataclasses.dataclass(kw_only=True)
class CATSegConfig(ModelConfig):
    """Architecture and inference protocol of CAT-Seg (CVPR 2024). Defaults are the ViT-B/16 model.

    Official config names are given in brackets (``MODEL.SEM_SEG_HEAD.*`` unless stated).
    """

    clip: ClipConfig = dataclasses.field(default_factory=lambda: _split_qkv(vit_b_16()))  # CLIP, split q/k/v
    templates: str = "catseg"  # one template, "A photo of a {} in the scene" [PROMPT_ENSEMBLE_TYPE single]
    synonyms: Literal["verbatim", "mean", "first"] = "first"  # "sofa, couch" -> "sofa" (CVPR text path)
    clip_resolution: int = 384  # square CLIP input side: 384 (ViT-B/16) or 336 (ViT-L/14@336)
    guidance_layers: tuple[int, int] = (4, 8)  # 1-based CLIP blocks whose outputs feed the upsamplers
    # (official 0-based hook indices 3, 7 for ViT-B and 7, 15 for ViT-L)
    guidance_dims: tuple[int, int] = (256, 128)  # upsample1 (x2) / upsample2 (x4) out [DECODER_GUIDANCE_DIMS]
    guidance_proj_dims: tuple[int, int] = (32, 16)  # their projections [DECODER_GUIDANCE_PROJ_DIMS]
    decoder_dims: tuple[int, int] = (64, 32)  # decoder block widths, multiples of 16 [DECODER_DIMS]
    hidden_dim: int = 128  # cost embedding width [HIDDEN_DIMS]
    appearance_proj_dim: int = 128  # appearance guidance projection [APPEARANCE_GUIDANCE_PROJ_DIM]
    text_proj_dim: int = 128  # text guidance projection [TEXT_GUIDANCE_PROJ_DIM]
    num_layers: int = 2  # aggregator layers (spatial + class) [NUM_LAYERS]
    num_heads: int = 4  # heads of the Swin and class attentions [NUM_HEADS]
    window_size: int = 12  # Swin window side on the cost grid [WINDOW_SIZES]
    pooling_train: tuple[int, int] = (2, 2)  # class-aggregation pooling in training [POOLING_SIZES]
    pooling_test: tuple[int, int] = (1, 1)  # ... at inference (eval.sh sets POOLING_SIZES [1,1])
    attention: Literal["linear", "full"] = "linear"  # class attention kind [ATTENTION_TYPE]
    prompt_channels: int = 1  # templates per class P (cost-embedding conv input channels)
    pad_len: int = 256  # class budget: pad below, per-image top-k above (hard-coded officially)
    inference: Literal["whole", "slide"] = "slide"  # default protocol (eval.sh: slide [TEST.SLIDING_WINDOW])
    slide_size: int = 640  # slide: canvas side the image is resized to (aspect ratio ignored)
    slide_crop: int = 384  # slide: crop side
    slide_overlap: float = 0.333  # slide: overlap; stride = int(crop * (1 - overlap)) = 256

    def __post_init__(self) -> None:
        v = self.clip.vision
        if v is None:
            raise ConfigError("CATSegConfig.clip needs a ViT image tower (clip.vision), got a ConvNeXt tower")
        if not (v.split_qkv and self.clip.text.split_qkv):
            raise ConfigError(
                "CATSegConfig.clip must store q/k/v separately; set clip.vision.split_qkv=true and "
                "clip.text.split_qkv=true"
            )
        if self.clip_resolution <= 0 or self.clip_resolution % v.patch_size:
            raise ConfigError(
                f"CATSegConfig.clip_resolution={self.clip_resolution} must be a positive multiple of "
                f"the patch size {v.patch_size}"
            )
        if not all(1 <= i < v.layers for i in self.guidance_layers):
            raise ConfigError(
                f"CATSegConfig.guidance_layers={self.guidance_layers} must lie in 1..{v.layers - 1} "
                "(the last block is the dense one)"
            )
        grid = self.feature_resolution
        if grid > self.window_size and grid % self.window_size:
            raise ConfigError(
                f"CATSegConfig.window_size={self.window_size} must divide the cost grid {grid} "
                f"(clip_resolution / patch_size)"
            )
        check_aggregator_fields(self, grid, ("slide_size", "slide_crop"))
        ins = (self.hidden_dim, self.decoder_dims[0])
        if any(not 0 < p < c for p, c in zip(self.guidance_proj_dims, ins)):
            raise ConfigError(
                f"CATSegConfig.guidance_proj_dims={self.guidance_proj_dims} must be positive and smaller "
                f"than the decoder inputs {ins}"
            )
        if self.pad_len < 0:
            raise ConfigError(f"CATSegConfig.pad_len must be >= 0 (0 = no class budget), got {self.pad_len}")
        if not 0.0 <= self.slide_overlap < 1.0:
            raise ConfigError(f"CATSegConfig.slide_overlap must be in [0, 1), got {self.slide_overlap}")
        stride = self.slide_stride
        if self.slide_crop > self.slide_size or stride <= 0 or (self.slide_size - self.slide_crop) % stride:
            raise ConfigError(
                f"CATSegConfig slide geometry size={self.slide_size} crop={self.slide_crop} stride={stride} "
                "leaves pixels uncovered; use crops that tile the canvas (e.g. 640/384/0.333)"
            )

    @property
    def feature_resolution(self) -> int:
        """Side of the cost grid (24 for both released models)."""
        assert self.clip.vision is not None  # a ViT (__post_init__)
        return self.clip_resolution // self.clip.vision.patch_size

    @property
    def slide_stride(self) -> int:
        """Stride between slide crops, ``int(crop * (1 - overlap))`` as officially computed."""
        return int(self.slide_crop * (1 - self.slide_overlap))


class CATSeg(CostAggregationModel):
    """CAT-Seg (CVPR 2024): dense CLIP, guidance upsamplers and the cost aggregator.

    All parameters CAT-Seg does not train are frozen at construction (see :meth:`freeze`).
    """

    config: CATSegConfig

    def __init__(self, config: CATSegConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = CLIP(config.clip)
        assert config.clip.vision is not None
        width = config.clip.vision.width
        self.guidance_up = nn.ModuleList(
            [
                nn.ConvTranspose2d(width, config.guidance_dims[0], kernel_size=2, stride=2),
                nn.ConvTranspose2d(width, config.guidance_dims[1], kernel_size=4, stride=4),
            ]
        )
        self.aggregator = Aggregator(aggregator_dims(config, config.guidance_dims), config.pad_len)
        self.freeze()

    # ------------------------------------------------------------------ training rule
    def is_trainable(self, name: str) -> bool:
        """CAT-Seg's rule: q and v projection weights of both CLIP towers, and everything not CLIP.

        Officially (cat_seg_model.py ``__init__``) a CLIP parameter trains when its name contains
        "transformer", "attn" and "q_proj" or "v_proj"; the joint ``in_proj_bias``, k, ``out_proj``,
        MLPs, norms and embeddings stay frozen.
        """
        if not name.startswith("clip."):
            return True
        return ".transformer." in name and ".attn." in name and ("q_proj" in name or "v_proj" in name)

    # ------------------------------------------------------------------ encoders
    def encode_image_dense(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """Dense CLIP tokens and the guidance block outputs.

        Args:
            images: (B, 3, R, R) CLIP-normalised, R = ``clip_resolution``.

        Returns:
            tokens (B, 1 + h*w, E): ``ln_post`` + ``proj`` of every token after the dense last block;
            guidance: the outputs of blocks ``guidance_layers`` (B, 1 + h*w, D), raw residual stream;
            the grid (h, w).
        """
        visual = self.clip.visual
        assert isinstance(visual, VisionTransformer)
        x, grid = visual.embed(images)
        blocks = visual.transformer.blocks()
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(blocks[:-1]):
            x = block(x)
            if i + 1 in self.config.guidance_layers:
                kept[i + 1] = x
        x = dense_last_block(blocks[-1], x)
        return visual.head(x), [kept[i] for i in self.config.guidance_layers], grid

    def image_maps(self, images: torch.Tensor) -> dict[str, Any]:
        """The image-only part of the network.

        Args:
            images: (B, 3, R, R) CLIP-normalised, R = ``clip_resolution``.

        Returns:
            ``{"image": (B, E, h, w) dense embedding, "prepared": the aggregator's image-only inputs
            (``Aggregator.image_guidance`` of the upsampled guidance maps)}``; the raw maps are not
            kept (a re-query handle holds only what the text stage reads).
        """
        tokens, guidance, (h, w) = self.encode_image_dense(images)
        b = images.shape[0]

        def to_map(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:].transpose(1, 2).reshape(b, -1, h, w)

        image, maps = to_map(tokens), [up(to_map(g)) for up, g in zip(self.guidance_up, guidance)]
        return {"image": image, "prepared": self.aggregator.image_guidance(image, maps)}

    def aggregate(self, maps: dict[str, Any], text: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        """The text part: :meth:`image_maps` and (K, P, E) text -> (B, K, 4h, 4w) logits."""
        image = maps["image"]
        text = self._batched_text(image, text)
        return self.aggregator(image, text, None, pool, maps["prepared"])

    def _logits(self, images: torch.Tensor, text: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        """(B, 3, R, R) images and (K, P, E) text -> (B, K, 4h, 4w) logits."""
        self._check_text(text)
        return self.aggregate(self.image_maps(images), text, pool)

    def _resize(self, images: torch.Tensor, size: int) -> torch.Tensor:
        return bilinear_resize(images, (size, size))

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Training / raw logits.

        Args:
            images: (B, 3, H, W) CLIP-normalised (384 x 384 training crops), resized to
                ``clip_resolution``.
            text: (K, P, E) from :meth:`encode_text` (recomputed with gradient in training).

        Returns:
            (B, K, h, w) logits at stride 4 of the CLIP input (96 x 96 for both released models);
            the pooling is ``pooling_train`` in training mode and ``pooling_test`` otherwise.
        """
        pool = self.config.pooling_train if self.training else self.config.pooling_test
        return self._logits(self._resize(images, self.config.clip_resolution), text, pool)

    # ------------------------------------------------------------------ inference
    def preprocess_size(self, height: int, width: int, **options: Any) -> tuple[int, int]:
        """Slide: straight to ``slide_size`` x ``slide_size``; whole: short side 640, long side <= 2560."""
        if self._mode(dict(options)) == "slide":
            return self.config.slide_size, self.config.slide_size
        return self.config.test_resize.output_size(height, width)

    def image_stage(
        self, images: torch.Tensor, image_size: tuple[int, int], **options: Any
    ) -> dict[str, Any]:
        """The image-only stage of :meth:`predict_blocks`: :meth:`image_maps` of the whole image
        (whole) or of the slide views, image-major (slide); ``mode`` records the protocol."""
        mode = self._mode(dict(options))
        if mode == "slide":
            c, corners = self.config, self.slide_windows()
            valid = images[..., : image_size[0], : image_size[1]]
            batch = slide_views(valid, c.slide_size, c.slide_crop, corners)  # (B * V, 3, crop, crop)
            maps = self.image_maps(self._resize(batch, c.clip_resolution))
            return {"mode": mode, "views": len(corners) + 1, **maps}
        return {"mode": mode, **self.image_maps(self._resize(images, self.config.clip_resolution))}

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
        map of :meth:`predict` in blocks, never holding (B, K, H0, W0).

        The network runs once on all classes; what follows runs in float32 whatever the model dtype.
        Whole: the sigmoid and crop on the small (96 x 96) map, then the bilinear resize to
        ``output_size`` (``F.interpolate``'s weights, :class:`~ovss.layers.resize.BandedResize`) one
        band of rows at a time. Slide: the per-view resizes, sigmoid, fold and final resize are per
        class and run one chunk of classes at a time (bit-identical to all classes at once).

        Args:
            features: :meth:`image_stage` of (B, 3, H, W) CLIP-normalised images, padded bottom/right
                (to 32).
            text: (K, P, E) from :meth:`encode_text`.
            image_size: (h, w) valid region inside the images.
            output_size: (H0, W0) of the score map.
            options: ``inference="whole"|"slide"`` (default ``config.inference``).
            max_elements: bound on the float32 elements of one block (at least 8 rows / one class).

        Yields:
            whole: ``(0, row_start, scores)`` with scores (B, K, r, W0) (a channels-last view) for
            output rows ``[row_start, row_start + r)``, top to bottom; slide: ``(class_start, 0,
            scores)`` with scores (B, k, H0, W0) for classes ``[class_start, class_start + k)``. Scores
            are sigmoid probabilities in [0, 1].
        """
        check_stage_mode(self.label, features, self._mode(dict(options)))
        if features["mode"] == "slide":
            yield from self._slide_blocks(features, text, output_size, max_elements)
        else:
            yield from self._whole_blocks(features, text, image_size, output_size, max_elements)

    def _whole_blocks(
        self,
        features: dict[str, Any],
        text: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
        max_elements: int,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Padded image -> CLIP resolution -> sigmoid -> detectron2 ``sem_seg_postprocess``.

        Official quirk kept: the padded image (border included) is resized, and the crop to
        ``image_size`` happens on the small (96 x 96) output, where it is a no-op for images larger
        than 96 px; so the padding is stretched into the prediction (cat_seg_model.py ``forward``).
        """
        logits = self.aggregate(features, text, self.config.pooling_test)
        probs = logits[..., : image_size[0], : image_size[1]].float().sigmoid()
        (b, k, h, w), (h0, w0) = probs.shape, output_size
        resize = BandedResize(bilinear_matrix(h, h0), bilinear_matrix(w, w0))
        cols = resize.columns(probs)  # (h, B, W0, K)
        rows = resize.band_rows(int(max_elements) // (b * k * w0))
        for start in range(0, h0, rows):
            stop = min(start + rows, h0)
            yield 0, start, bands_to_blocks(resize.band(cols, start, stop))

    def slide_windows(self) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of the slide crops on the canvas, row-major ([0, 256]^2 officially)."""
        c = self.config
        starts = range(0, c.slide_size - c.slide_crop + 1, c.slide_stride)
        return [(y, x) for y in starts for x in starts]

    def _slide_blocks(
        self,
        features: dict[str, Any],
        text: torch.Tensor,
        output_size: tuple[int, int],
        max_elements: int,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Official sliding window (cat_seg_model.py ``inference_sliding_window``).

        The valid image is resized to a square canvas (640), cut into overlapping crops (384, stride
        256: 4 crops) plus one global view (the image resized to 384); each view's logits are resized
        to the crop size and passed through a sigmoid; the crops are fold-averaged on the canvas, then
        averaged with the global view resized to the canvas; the result is resized to ``output_size``.
        (The views and their image maps are :meth:`image_stage`'.)
        """
        c = self.config
        corners = self.slide_windows()
        crop, size, n_views = c.slide_crop, c.slide_size, features["views"]
        logits = self.aggregate(features, text, c.pooling_test)
        b = logits.shape[0] // n_views
        logits = logits.unflatten(0, (b, n_views))  # (B, V, K, h, w)
        k = logits.shape[2]
        count = logits.new_zeros(size, size, dtype=torch.float32)
        for y, x in corners:
            count[y : y + crop, x : x + crop] += 1

        def resize(x: torch.Tensor, to: tuple[int, int]) -> torch.Tensor:
            return F.interpolate(x, size=to, mode="bilinear", align_corners=False)

        def one_class(view_logits: torch.Tensor) -> torch.Tensor:  # (B, V, h, w) -> (B, H0, W0)
            probs = resize(view_logits.float(), (crop, crop)).sigmoid()  # (B, V, crop, crop)
            if torch.jit.is_tracing():  # ONNX export: out of place (new_zeros would freeze the class count)
                total = sum(F.pad(probs[:, i], (x, size - crop - x, y, size - crop - y))
                            for i, (y, x) in enumerate(corners))
            else:
                total = probs.new_zeros(b, size, size)
                for i, (y, x) in enumerate(corners):
                    total[:, y : y + crop, x : x + crop] += probs[:, i]
            glob = resize(probs[:, -1:], (size, size))[:, 0]
            return resize(((total / count + glob) / 2.0)[:, None], (output_size[0], output_size[1]))[:, 0]

        if torch.jit.is_tracing():  # ONNX export: all classes in one pass, one graph for every K
            yield 0, 0, one_class(logits.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, -1))
            return
        # One class at a time, always the same shapes: a class's values never depend on the chunking
        # (vectorised kernels round their tail elements differently). Chunks only group the output.
        per_class = b * output_size[0] * output_size[1]
        step = max(1, int(max_elements) // per_class)
        for start in range(0, k, step):
            classes = range(start, min(start + step, k))
            yield start, 0, torch.stack([one_class(logits[:, :, j]) for j in classes], dim=1)


# ---------------------------------------------------------------------------------------- builders
def catseg_vit_b16() -> CATSegConfig:
    """CAT-Seg (B): OpenAI CLIP ViT-B/16 at 384 px (``configs/vitb_384.yaml``)."""
    return CATSegConfig(clip=_split_qkv(vit_b_16()), clip_resolution=384, guidance_layers=(4, 8))


def catseg_vit_l14() -> CATSegConfig:
    """CAT-Seg (L): OpenAI CLIP ViT-L/14@336px at 336 px (``configs/vitl_336.yaml``)."""
    return CATSegConfig(clip=_split_qkv(vit_l_14_336()), clip_resolution=336, guidance_layers=(8, 16))


def catseg_tiny() -> CATSegConfig:
    """Tiny CAT-Seg shaped like the ``catseg_a`` parity fixture (for tests and offline demos)."""
    clip = ClipConfig(
        embed_dim=32,
        vision=VisionConfig(
            image_size=224, patch_size=16, width=64, layers=9, heads=4, output_dim=32, split_qkv=True
        ),
        text=TextConfig(width=32, heads=4, layers=2, output_dim=32, split_qkv=True),
    )
    return CATSegConfig(
        clip=clip,
        clip_resolution=384,
        guidance_layers=(4, 8),
        guidance_dims=(256, 128),
        guidance_proj_dims=(8, 8),
        decoder_dims=(32, 16),
        hidden_dim=32,
        appearance_proj_dim=16,
        text_proj_dim=16,
        num_layers=2,
        num_heads=4,
    )


# ------------------------------------------------------------------------------------------ family
# The demo's labels of the cost-aggregation protocols (CAT-Seg v1 uses them too).
INFERENCE_LABELS = {
    "whole": "whole image (faster)",
    "slide": "sliding window (official, slower)",
    "mmseg": "sliding window (mmseg port)",
}

FAMILY = register_family(Family(
    name="catseg",
    title="CAT-Seg",
    config_class=CATSegConfig,
    model_class=CATSeg,
    task="ovss.engine.tasks:CATSegTask",
    class_variant="catseg",
    summary="CAT-Seg: image-text cost volume from CLIP features, spatial and class aggregation, "
    "upsampling decoder (CLIP fine-tuned)",
    options=("inference",),
    # labelling default: one whole-image pass (the official demo's and yaml's mode, aspect ratio kept,
    # 4-5x faster); slide, the official evaluation protocol, stays eval's default (the config's)
    inference=InferenceOption(
        modes=INFERENCE_MODES,
        labels=INFERENCE_LABELS,
        defaults={"segment": "whole", "export": "whole", "demo": "whole"},
    ),
    formats={"catseg_d2": "ovss.weights.formats.catseg_d2"},
))
