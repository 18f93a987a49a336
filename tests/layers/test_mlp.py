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
