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

from ovss.weights.formats import move_text_tower

_DROP = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """OpenAI ViT layout: ``visual.class_embedding`` plus the top-level ``token_embedding.weight``."""
    return "visual.class_embedding" in state_dict and "token_embedding.weight" in state_dict


def convert(state_dict: Mapping[str, torch.Tensor], split_qkv: bool | None = None) -> dict[str, torch.Tensor]:
    """Rename an OpenAI CLIP ``state_dict()`` (packed or CAT-Seg split attention) to the ovss ``CLIP`` layout.

    Pure (tensors shared); ``split_qkv`` and the result as in :func:`ovss.weights.formats.move_text_tower`.
    """
    return move_text_tower(state_dict, _DROP, split_qkv)
