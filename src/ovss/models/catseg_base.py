"""What CAT-Seg (CVPR 2024) and CAT-Seg v1 share: the model base, the config checks, the aggregator's
dimensions, the views of the official slide protocol and the dense last CLIP block (the versions
differ only in its residual).

Used by :mod:`ovss.models.catseg` and :mod:`ovss.models.catseg_v1`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ovss.config import check_positive_ints
from ovss.errors import ConfigError
from ovss.layers.resize import bilinear_resize
from ovss.layers.transformer import ResidualAttentionBlock
from ovss.models.base import SegmentationModel
from ovss.models.catseg_aggregator import AggregatorDims
from ovss.towers.clip import CLIP


def check_aggregator_fields(config: Any, grid: int, positive: tuple[str, ...] = ()) -> None:
    """The checks CAT-Seg's and CAT-Seg v1's configs share (:class:`ConfigError` naming the field):
    the aggregator widths, depth, heads, ``prompt_channels`` and the ``positive`` fields are positive
    integers, the heads divide ``hidden_dim``, the decoder widths suit GroupNorm and both poolings
    divide the cost ``grid``."""
    cls = type(config).__name__
    widths = ("hidden_dim", "appearance_proj_dim", "text_proj_dim", "num_layers", "num_heads")
    check_positive_ints(config, (*widths, "prompt_channels", *positive))
    if config.hidden_dim % config.num_heads:
        raise ConfigError(
            f"{cls}.hidden_dim={config.hidden_dim} is not divisible by num_heads={config.num_heads}"
        )
    for d in config.decoder_dims:
        if d < 16 or d % (d // 16):
            raise ConfigError(
                f"{cls}.decoder_dims={config.decoder_dims}: each must be >= 16 and divisible by its "
                "GroupNorm group count (dim // 16), e.g. 64, 32"
            )
    for name in ("pooling_train", "pooling_test"):
        pool = getattr(config, name)
        if any(p <= 0 or grid % p for p in pool):
            raise ConfigError(f"{cls}.{name}={pool} must divide the cost grid {grid}")


def aggregator_dims(config: Any, guidance_dims: tuple[int, int]) -> AggregatorDims:
    """The aggregator's widths and grid from a CAT-Seg or CAT-Seg v1 config; ``guidance_dims``: the
    channels of the two decoder guidance maps (stride 8, stride 4)."""
    grid = config.feature_resolution
    return AggregatorDims(
        embed_dim=config.clip.embed_dim,
        prompt_channels=config.prompt_channels,
        hidden_dim=config.hidden_dim,
        appearance_proj_dim=config.appearance_proj_dim,
        text_proj_dim=config.text_proj_dim,
        guidance_dims=guidance_dims,
        guidance_proj_dims=config.guidance_proj_dims,
        decoder_dims=config.decoder_dims,
        num_layers=config.num_layers,
        heads=config.num_heads,
        resolution=(grid, grid),
        window=config.window_size,
        attention=config.attention,
    )


def dense_last_block(
    block: ResidualAttentionBlock, x: torch.Tensor, residual: Literal["class", "token"] = "class"
) -> torch.Tensor:
    """CAT-Seg's last CLIP block for dense features: the value path, no token mixing.

    ``v_i = out_proj(W_v ln_1(x_i) + b_v) + r_i``, then ``v_i + mlp(ln_2(v_i))``, where the residual
    ``r_i`` is the class token's stream ``x_cls`` (``"class"``: the CVPR code, model_vpt.py
    ``ResidualAttentionBlock.forward_dense``) or the token's own ``x_i`` (``"token"``: v1).

    Args:
        block: a CLIP residual attention block (packed or split in-projection).
        x: (B, 1 + L, D) tokens, class token first.
        residual: ``"class"`` or ``"token"``.

    Returns:
        (B, 1 + L, D).
    """
    attn = block.attn
    d = x.shape[-1]
    weight = attn.v_proj_weight if attn.split_qkv else attn.in_proj_weight[2 * d :]
    v = attn.out_proj(F.linear(block.ln_1(x), weight, attn.in_proj_bias[2 * d :]))
    v = v + (x[:, :1] if residual == "class" else x)
    return v + block.mlp(block.ln_2(v))


def slide_views(valid: torch.Tensor, size: int, crop: int, corners: list[tuple[int, int]]) -> torch.Tensor:
    """The views of the official slide protocol (both CAT-Seg versions), image-major.

    Args:
        valid: (B, 3, h, w) the valid region of the images.
        size: side of the square canvas the valid region is stretched to; crop: side of each crop.
        corners: top-left (y, x) of the crops on the canvas.

    Returns:
        (B * V, 3, crop, crop): per image the canvas crops at ``corners``, then the valid region
        stretched to crop x crop (the global view); V = len(corners) + 1.
    """
    canvas = bilinear_resize(valid, (size, size))
    views = [canvas[..., y : y + crop, x : x + crop] for y, x in corners]
    views.append(bilinear_resize(valid, (crop, crop)))
    return torch.stack(views, dim=1).flatten(0, 1)


class CostAggregationModel(SegmentationModel):
    """What CAT-Seg and CAT-Seg v1 share: (P, K, L) tokens -> (K, P, E) text embeddings L2-normalised
    per template and the (K, P, E) text check (the ``inference=`` option parser, ``label`` and
    ``inference_modes`` are :class:`SegmentationModel`'s, read from the family descriptor)."""

    config: Any  # CATSegConfig or CATSegV1Config (each subclass narrows it)
    clip: CLIP

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings.

        Args:
            tokens: (P, K, L) int64 token ids (P templates, K classes; P = 1 for the released models).

        Returns:
            (K, P, E) float, L2-normalised along E.
        """
        p, k, length = tokens.shape
        emb = self.clip.encode_text(tokens.reshape(p * k, length))
        return F.normalize(emb.reshape(p, k, -1).transpose(0, 1), dim=-1)

    def _check_text(self, text: torch.Tensor) -> None:
        """Raise :class:`ConfigError` unless ``text`` is (K, P, E) with P = ``config.prompt_channels``."""
        if text.ndim != 3 or text.shape[1] != self.config.prompt_channels:
            raise ConfigError(
                f"{self.label} text must be (K, P={self.config.prompt_channels}, E) from encode_text, got "
                f"{tuple(text.shape)}; embed the vocabulary with templates={self.config.templates!r}"
            )

    def _batched_text(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(K, P, E) text, checked (:meth:`_check_text`), in the dtype of the (B, ...) ``image`` and
        expanded to (B, K, P, E) (the aggregator's layout)."""
        self._check_text(text)
        return text.to(image.dtype).unsqueeze(0).expand(image.shape[0], *text.shape)
