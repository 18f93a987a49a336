"""CAT-Seg's upsampling decoder blocks (per class slice), run channels-last.

Official reference: ``cat_seg/modeling/transformer/model.py`` (``Up``) of cvlab-kaist/CAT-Seg @ 6d3a188.
Re-exported by :mod:`ovss.models.catseg_aggregator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss.layers.upconv import bias_map, fold_up_bias, fold_up_kernel, up_conv

DECODER_CHUNK = 16  # class slices per pass through the upsampling decoder (memory bound, exact)


class UpBlock(nn.Module):
    """x2 transposed conv, concatenation of a guidance map, then [conv3x3, GroupNorm, ReLU] x 2.

    Computed as the same function with less work:

    * The guidance is the same for every class slice of an image, and a convolution of a
      concatenation is the sum of the convolutions of its parts (zero padding included), so the first
      conv is split: ``conv1(cat[x, g]) = conv(up(x), W_x) + conv(g, W_g)``, the guidance part once
      per image (:meth:`guidance_term`) and broadcast over the classes.
    * ``conv(up(x), W_x)`` is one 4x4 transposed convolution of ``x`` (:mod:`ovss.layers.upconv`);
      the up-conv bias's part is class-independent and joins the guidance term.

    Together about half the FLOPs of the first conv and no up-sampled or concatenated per-class map;
    the sums differ from the official form by float rounding only.

    Args:
        in_dim: input channels; out_dim: output channels (GroupNorm uses out_dim // 16 groups);
        guidance_dim: channels of the concatenated guidance (the transposed conv gives
            ``in_dim - guidance_dim`` so the concatenation has ``in_dim`` channels).
    """

    def __init__(self, in_dim: int, out_dim: int, guidance_dim: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_dim, in_dim - guidance_dim, kernel_size=2, stride=2)
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(out_dim // 16, out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(out_dim // 16, out_dim)

    def guidance_term(self, guidance: torch.Tensor) -> torch.Tensor:
        """(B, G, 2h, 2w) guidance -> (B, out_dim, 2h, 2w): its part of ``conv1`` plus the up-conv
        bias's part (once per image)."""
        c = self.up.out_channels
        bias = fold_up_bias(self.up, self.conv1.weight[:, :c])
        return F.conv2d(guidance, self.conv1.weight[:, c:], padding=1) + bias_map(bias, guidance)

    def folded_kernel(self) -> torch.Tensor:
        """The up-conv and ``conv1``'s part on its output as one (in_dim, out_dim, 4, 4) transposed-conv
        kernel (:func:`~ovss.layers.upconv.fold_up_kernel`; a few ms: once per pass, not per chunk)."""
        return fold_up_kernel(self.up, self.conv1.weight[:, : self.up.out_channels])

    def forward(
        self,
        x: torch.Tensor,
        guidance: torch.Tensor,
        guidance_term: torch.Tensor | None = None,
        kernel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B*T, in_dim, h, w) class slices (image outer), (B, G, 2h, 2w) guidance -> (B*T, out_dim, 2h, 2w).

        ``guidance_term`` and ``kernel``: :meth:`guidance_term` of ``guidance`` and :meth:`folded_kernel`
        when the caller reuses them over chunks of classes. Channels-last inputs stay channels-last.
        """
        if guidance_term is None:
            guidance_term = self.guidance_term(guidance)
        y = up_conv(x, self.folded_kernel() if kernel is None else kernel)
        b = guidance.shape[0]
        if torch.jit.is_tracing():  # ONNX export: an in-place update of a view is lost in the graph
            y = (y.unflatten(0, (b, -1)) + guidance_term.unsqueeze(1)).flatten(0, 1)
        else:
            y.unflatten(0, (b, -1)).add_(guidance_term.unsqueeze(1))
        y = F.relu_(self.norm1(y))
        return F.relu_(self.norm2(self.conv2(y)))


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU())
