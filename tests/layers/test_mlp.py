"""Activations and the two-layer MLP of the CLIP blocks."""

from __future__ import annotations

import pytest
import torch

from ovss.layers.mlp import GELU, QuickGELU, make_activation


def test_activations():
    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(GELU()(x), torch.nn.functional.gelu(x))
    with pytest.raises(ValueError, match="quick_gelu"):
        make_activation("relu")


def test_quick_gelu_and_gelu_at_hand_computed_points():
    # QuickGELU(1) = 1 / (1 + e^-1.702); GELU(1) = Phi(1) = (1 + erf(1 / sqrt 2)) / 2
    import math

    x = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    quick = [0.0, 1 / (1 + math.exp(-1.702)), -1 / (1 + math.exp(1.702))]
    exact = [0.0, 0.8413447460685429, -0.15865525393145707]
    torch.testing.assert_close(QuickGELU()(x), torch.tensor(quick, dtype=torch.float64))
    torch.testing.assert_close(GELU()(x), torch.tensor(exact, dtype=torch.float64))


def test_mlp_by_hand():
    """c_proj(act(c_fc(x))) with OpenAI names: width 2, hidden 3, weights set by hand."""
    from ovss.layers.mlp import Mlp

    mlp = Mlp(2, 3, act="gelu")
    names = [n for n, _ in mlp.named_parameters()]
    assert names == ["c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"]
    assert mlp.c_fc.weight.shape == (3, 2) and mlp.c_proj.weight.shape == (2, 3)
    with torch.no_grad():
        mlp.c_fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        mlp.c_fc.bias.copy_(torch.tensor([0.0, 0.0, -2.0]))
        mlp.c_proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        mlp.c_proj.bias.copy_(torch.tensor([0.5, 0.0]))
    # x = (1, -1): hidden pre-activations (1, -1, -2); GELU -> (0.84134, -0.15866, -0.04550)
    out = mlp(torch.tensor([[[1.0, -1.0]]]))
    assert out.shape == (1, 1, 2)
    expected = torch.tensor([0.5 + 0.841345, -0.158655 - 0.045500])
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)


def test_mlp_keeps_leading_dimensions_and_the_default_is_quick_gelu():
    from ovss.layers.mlp import Mlp

    mlp = Mlp(8, 32)
    assert isinstance(mlp.gelu, QuickGELU)
    assert mlp(torch.randn(2, 3, 5, 8)).shape == (2, 3, 5, 8)
    with pytest.raises(ValueError, match=r"^unknown activation 'relu'; use one of \['quick_gelu', 'gelu'\]$"):
        Mlp(8, 32, act="relu")
