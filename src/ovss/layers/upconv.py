"""A 2x up-convolution followed by a 3x3 convolution, folded into one transposed convolution.

Both decoders (CAT-Seg's ``UpBlock``, SED's fusion stage) upsample the per-class maps with
``ConvTranspose2d(C -> Cu, 2x2, stride 2)`` and feed the result to a ``Conv2d(Cu + ... -> d, 3x3,
padding 1)``. The composition ``conv3x3(up(x))`` is linear in ``x``, so it is one
``conv_transpose2d(x, K, stride 2, padding 1)`` with a 4x4 kernel ``K`` (C, d, 4, 4): every output
pixel then costs ``4 C d`` multiply-adds instead of ``C Cu`` (up) + ``9 Cu d`` (conv), about half for
the released widths, and the (N, Cu, 2h, 2w) up-sampled map is never written. The up-conv bias
becomes a class-independent map: ``conv3x3`` of a constant image, exact at the borders where the
zero padding hides some taps (:func:`bias_map`). Same function; sums differ by float rounding only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T", bound=tuple[torch.Tensor, ...])


def graph_constants(make: Callable[[], T]) -> T:
    """``make()`` outside any ONNX trace, so the tensors it computes from parameters are constants of
    the traced graph (the exporter needs convolution kernels of static shape; traced computed
    kernels have none). Outside tracing, just ``make()``."""
    if not torch.jit.is_tracing():
        return make()
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)  # type: ignore[attr-defined]  # private, not in the stubs
    try:
        made = make()
        return tuple(t.detach().clone() for t in made)  # type: ignore[return-value]  # same length as made
    finally:
        torch._C._set_tracing_state(state)  # type: ignore[attr-defined]  # as above


def fold_up_conv(up: nn.ConvTranspose2d, conv_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded kernels of ``conv2d(up(x), conv_weight, padding=1)``: (:func:`fold_up_kernel`,
    :func:`fold_up_bias`).

    Args:
        up: ``ConvTranspose2d(C, Cu, kernel_size=2, stride=2)`` (padding 0).
        conv_weight: (d, Cu, 3, 3), the part of the 3x3 convolution that reads ``up``'s output.
    """
    return fold_up_kernel(up, conv_weight), fold_up_bias(up, conv_weight)


def fold_up_kernel(up: nn.ConvTranspose2d, conv_weight: torch.Tensor) -> torch.Tensor:
    """``kernel`` (C, d, 4, 4) for :func:`up_conv`: ``conv2d(up(x) - up.bias, conv_weight, padding=1)``.

    Composed in float32 for bf16/fp16 weights; a constant of the graph under ONNX tracing
    (:func:`graph_constants`). Not free (a (C, Cu, 6, 6) x (d, Cu, 3, 3) convolution, a few ms for
    CAT-Seg's first block): callers compute it once per forward pass, not per chunk of classes.
    """
    if torch.jit.is_tracing():
        return graph_constants(lambda: (fold_up_kernel(up, conv_weight),))[0]
    dtype = conv_weight.dtype
    wide = torch.promote_types(dtype, torch.float32)
    # full 2-D convolution of the 2x2 up kernel with the 3x3 kernel, summed over the Cu channels
    return F.conv2d(F.pad(up.weight.to(wide), (2, 2, 2, 2)), conv_weight.to(wide)).to(dtype)


def fold_up_bias(up: nn.ConvTranspose2d, conv_weight: torch.Tensor) -> torch.Tensor:
    """``bias`` (d, 1, 3, 3): the 3x3 kernel that turns a map of ones into the up-conv bias's
    contribution (:func:`bias_map`). Composed in float32 for bf16/fp16 weights; a constant of the graph
    under ONNX tracing."""
    if torch.jit.is_tracing():
        return graph_constants(lambda: (fold_up_bias(up, conv_weight),))[0]
    dtype = conv_weight.dtype
    wide = torch.promote_types(dtype, torch.float32)
    assert up.bias is not None
    return (conv_weight.to(wide) * up.bias.to(wide).view(1, -1, 1, 1)).sum(1, keepdim=True).to(dtype)


def up_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``conv2d(up(x) - up.bias, conv_weight, padding=1)``: (N, C, h, w) -> (N, d, 2h, 2w)."""
    return F.conv_transpose2d(x, kernel, stride=2, padding=1)


def bias_map(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The up-conv bias's part of the 3x3 convolution on the grid of ``like`` (…, H, W): (1, d, H, W)."""
    ones = like.new_ones(1, 1, *like.shape[-2:])
    return F.conv2d(ones, bias, padding=1)
