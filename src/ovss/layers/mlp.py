"""Feed-forward pieces of the CLIP transformer blocks: activations and the two-layer MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("quick_gelu", "gelu")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation the OpenAI CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; any shape and floating dtype."""
        return x * torch.sigmoid(1.702 * x)


class GELU(nn.Module):
    """Exact (erf) GELU, as open_clip uses for its non-OpenAI checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; any shape and floating dtype."""
        return F.gelu(x)


def make_activation(name: str) -> nn.Module:
    """Activation module for a config's ``act`` field ("quick_gelu" or "gelu")."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return GELU()
    raise ValueError(f"unknown activation {name!r}; use one of {list(ACTIVATIONS)}")


class Mlp(nn.Module):
    """``c_proj(act(c_fc(x)))`` with the OpenAI attribute names (``mlp.c_fc``, ``mlp.c_proj``).

    Args:
        width: model width D.
        hidden: hidden width (``mlp_ratio * D``).
        act: activation name, see :func:`make_activation`.
    """

    def __init__(self, width: int, hidden: int, act: str = "quick_gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return self.c_proj(self.gelu(self.c_fc(x)))
