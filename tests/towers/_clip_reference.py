"""Straightforward sequence-first reference CLIP blocks built from torch.nn.MultiheadAttention.

The OpenAI CLIP layout written the obvious way (no SDPA, no batch-first): used by the tests to pin
the maths of ovss' towers. The parameter names equal OpenAI's, so ``load_state_dict`` of an ovss
tower's (packed) state dict works unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class RefQuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int, act: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        gelu = RefQuickGELU() if act == "quick_gelu" else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", gelu), ("c_proj", nn.Linear(4 * d, d))])
        )
        self.ln_2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x, mask=None):  # x: (L, B, D)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self, d, layers, heads, act="quick_gelu"):
        super().__init__()
        self.resblocks = nn.ModuleList(RefBlock(d, heads, act) for _ in range(layers))

    def forward(self, x, mask=None):
        for b in self.resblocks:
            x = b(x, mask)
        return x


class RefVisual(nn.Module):
    def __init__(self, image_size, patch, width, layers, heads, out_dim, act="quick_gelu"):
        super().__init__()
        g = image_size // patch
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(g * g + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = RefTransformer(width, layers, heads, act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, out_dim))

    def tokens(self, images):
        x = self.conv1(images)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(b, 1, c), x], dim=1)
        pos = self.positional_embedding
        g = int((pos.shape[0] - 1) ** 0.5)
        if (g, g) != (h, w):
            grid = pos[1:].reshape(1, g, g, c).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, c)])
        x = self.ln_pre(x + pos)
        return self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)

    def forward(self, images):
        return self.ln_post(self.tokens(images)[:, 0]) @ self.proj


class RefText(nn.Module):
    def __init__(self, context, vocab, width, layers, heads, out_dim, act="quick_gelu"):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.transformer = RefTransformer(width, layers, heads, act)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, out_dim))
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens):  # tokens (N, context) exactly, like OpenAI's encode_text
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter with non-trivial random values (LayerNorm weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            parent = name.rsplit(".", 2)[-2] if name.count(".") else ""
            if name.endswith("weight") and parent.startswith("ln"):
                p.copy_(1.0 + 0.1 * r)
            else:
                scale = 0.02 if "embedding" in name else 0.1 if p.dim() < 2 else p.shape[-1] ** -0.5
                p.copy_(scale * r)
    return module


class RefCLIP(RefText):
    """OpenAI layout: ``visual.*``, the text tower at the top level, ``logit_scale``."""

    def __init__(self, vision: dict, text: dict):
        super().__init__(**text)
        self.visual = RefVisual(**vision)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def encode_image(self, images):
        return self.visual(images)

    def encode_text(self, tokens):
        return self.forward(tokens)
