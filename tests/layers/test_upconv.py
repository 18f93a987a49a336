"""The folded up-convolution: one 4x4 transposed convolution == 2x2 up-conv then 3x3 conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovss.layers.upconv import bias_map, fold_up_conv, graph_constants, up_conv


def _pair(c: int, cu: int, d: int, seed: int) -> tuple[nn.ConvTranspose2d, torch.Tensor]:
    torch.manual_seed(seed)
    up = nn.ConvTranspose2d(c, cu, kernel_size=2, stride=2).double()
    nn.init.normal_(up.bias)  # a bias far from zero, so its border map matters
    return up, torch.randn(d, cu, 3, 3, dtype=torch.float64)


@pytest.mark.parametrize(("c", "cu", "d", "size"), [(5, 3, 4, (3, 4)), (8, 6, 2, (1, 1)), (2, 7, 5, (6, 2))])
def test_folded_kernel_plus_bias_map_is_up_then_conv_in_float64(c, cu, d, size):
    up, w = _pair(c, cu, d, seed=c + d)
    x = torch.randn(3, c, *size, dtype=torch.float64)
    kernel, bias = fold_up_conv(up, w)
    assert kernel.shape == (c, d, 4, 4) and bias.shape == (d, 1, 3, 3)
    want = F.conv2d(up(x), w, padding=1)
    got = up_conv(x, kernel) + bias_map(bias, want)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the bias map is not a constant: the zero padding hides taps at the borders
    assert not torch.allclose(bias_map(bias, want)[..., 0, 0], bias_map(bias, want)[..., 1, 1])


def test_bf16_weights_are_composed_in_float32():
    up, w = _pair(6, 4, 3, seed=1)
    up, w = up.to(torch.bfloat16), w.to(torch.bfloat16)
    kernel, bias = fold_up_conv(up, w)
    assert kernel.dtype == bias.dtype == torch.bfloat16
    exact = F.conv2d(F.pad(up.weight.double(), (2, 2, 2, 2)), w.double())
    # one rounding to bf16 of the float32 composition (a bf16 composition would round every partial sum)
    torch.testing.assert_close(kernel, exact.to(torch.bfloat16), rtol=0, atol=0)


def test_folded_kernels_are_graph_constants_under_tracing():
    up, w = _pair(4, 3, 2, seed=2)
    up, w = up.float(), nn.Parameter(w.float())

    def f(x: torch.Tensor) -> torch.Tensor:
        kernel, bias = fold_up_conv(up, w)
        return up_conv(x, kernel) + bias_map(bias, x.repeat_interleave(2, -1).repeat_interleave(2, -2))

    x = torch.randn(1, 4, 3, 3)
    traced = torch.jit.trace(f, (x,), check_trace=False)
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::pad" not in kinds and "aten::sum" not in kinds  # the composition is not in the graph
    torch.testing.assert_close(traced(x), f(x))
    made = graph_constants(lambda: (torch.ones(2),))  # outside tracing: just the call
    assert isinstance(made, tuple) and made[0].tolist() == [1.0, 1.0]
