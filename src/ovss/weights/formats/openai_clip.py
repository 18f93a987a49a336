"""OpenAI ``clip`` package state dicts (incl. the TorchScript ``*.pt`` archives) -> ovss ``CLIP``.

Same names as open_clip's ViT models: ``visual.*`` stays, the top-level text tower moves under
``text.``. The TorchScript archives also hold the scalars ``input_resolution``,
``context_length`` and ``vocab_size`` (dropped) and store weights in float16 (loading casts them).
CAT-Seg's OpenAI-derived checkpoints use split ``q/k/v_proj_weight``; ``split_qkv`` converts
between the two layouts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ovss.weights.formats import is_text_root, set_qkv_layout

_DROP = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """OpenAI ViT layout: ``visual.class_embedding`` plus the top-level ``token_embedding.weight``."""
    return "visual.class_embedding" in state_dict and "token_embedding.weight" in state_dict


def convert(state_dict: Mapping[str, torch.Tensor], split_qkv: bool | None = None) -> dict[str, torch.Tensor]:
    """Rename to the ovss ``CLIP`` layout (pure; tensors are shared, not copied).

    Args:
        state_dict: an OpenAI CLIP ``state_dict()`` (packed or CAT-Seg split attention).
        split_qkv: True -> split q/k/v attention weights (CAT-Seg layout), False -> packed
            ``in_proj_weight``, None -> keep the file's layout.

    Returns:
        ``visual.*``, ``text.*`` and ``logit_scale``; unknown keys pass through unchanged so that
        strict loading reports them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _DROP:
            continue
        out["text." + key if is_text_root(key) else key] = value
    return set_qkv_layout(out, split_qkv)
