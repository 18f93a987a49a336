"""Official CAT-Seg CVPR checkpoints (detectron2 files, HF Space ``hamacojr/CAT-Seg-weights``:
``model_base.pth``, ``model_large.pth``) -> ovss ``CATSeg``.

The files are ``torch.save({"model": state_dict, ...})`` (a bare state dict is accepted too). Keys:

```
sem_seg_head.predictor.clip_model.visual.*       -> clip.visual.*  (split q/k/v_proj_weight, 1:1)
sem_seg_head.predictor.clip_model.<text keys>    -> clip.text.*    (transformer.*, token_embedding,
                                                                    positional_embedding, ln_final,
                                                                    text_projection)
sem_seg_head.predictor.clip_model.logit_scale    -> clip.logit_scale
upsample1.* / upsample2.*                        -> guidance_up.0.* / guidance_up.1.*
sem_seg_head.predictor.transformer.*             -> aggregator.*   (table in _AGG_RULES)
```

The Swin shift masks ``layers.{i}.swin_block.block_2.attn_mask`` (4, 144, 144) are buffers the
official code derives from the grid, window and shift; ovss rebuilds the mask in the forward (in the
input's dtype and device), so the converter drops them after checking that each one equals the mask
derived from its own shape (window = sqrt(144) = 12, shift = 6, grid = 2 x 12 = 24). A mask that
differs raises :class:`CheckpointMismatchError`.

Conversion is pure and strict: every key must be consumed by a rule (all offenders are listed in one
error); shapes are checked when the result is loaded into the model. CAT-Seg v1 files (joint
``in_proj_weight``, ``backbone.*`` keys) are refused with a pointer to the CVPR weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ovss.errors import CheckpointMismatchError
from ovss.weights.formats import (
    D2_CLIP_PREFIX,
    Rule,
    apply_rules,
    map_d2_clip_key,
    rename_entries,
    unwrap_checkpoint,
)

AGG_PREFIX = "sem_seg_head.predictor.transformer."
_SENTINELS = (
    AGG_PREFIX + "conv1.weight",
    AGG_PREFIX + "layers.0.attention.padding_tokens",
    D2_CLIP_PREFIX + "visual.transformer.resblocks.0.attn.q_proj_weight",
    "upsample1.weight",
)
_MASK = re.compile(r"layers\.\d+\.swin_block\.block_2\.attn_mask")
_FUSE = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_CLASS = {"attention.q": "attn.q", "attention.k": "attn.k", "attention.v": "attn.v",
          "MLP.0": "mlp.fc1", "MLP.2": "mlp.fc2", "norm1": "norm1", "norm2": "norm2"}
_WB = r"(weight|bias)"

# (pattern on the key after AGG_PREFIX, replacement builder) -> key after "aggregator."
_AGG_RULES: tuple[Rule, ...] = (
    (re.compile(rf"conv1\.{_WB}"), lambda m: f"cost_embed.{m[1]}"),
    (re.compile(rf"guidance_projection\.0\.{_WB}"), lambda m: f"appearance_proj.0.{m[1]}"),
    (re.compile(rf"text_guidance_projection\.0\.{_WB}"), lambda m: f"text_proj.0.{m[1]}"),
    (re.compile(rf"decoder_guidance_projection\.(\d)\.0\.{_WB}"),
     lambda m: f"decoder_guidance_proj.{m[1]}.0.{m[2]}"),
    (re.compile(rf"layers\.(\d+)\.swin_block\.block_([12])\.(norm[12]|attn\.[qkv]|attn\.proj|mlp\.fc[12])\.{_WB}"),
     lambda m: f"layers.{m[1]}.spatial.blocks.{int(m[2]) - 1}.{m[3]}.{m[4]}"),
    (re.compile(rf"layers\.(\d+)\.swin_block\.guidance_norm\.{_WB}"),
     lambda m: f"layers.{m[1]}.spatial.guidance_norm.{m[2]}"),
    (re.compile(rf"layers\.(\d+)\.attention\.(attention\.[qkv]|MLP\.[02]|norm[12])\.{_WB}"),
     lambda m: f"layers.{m[1]}.classes.{_CLASS[m[2]]}.{m[3]}"),
    (re.compile(r"layers\.(\d+)\.attention\.padding_(tokens|guidance)"),
     lambda m: f"layers.{m[1]}.classes.pad_{'token' if m[2] == 'tokens' else 'guidance'}"),
    (re.compile(rf"decoder([12])\.up\.{_WB}"), lambda m: f"decoder.{int(m[1]) - 1}.up.{m[2]}"),
    (re.compile(rf"decoder([12])\.conv\.double_conv\.([0134])\.{_WB}"),
     lambda m: f"decoder.{int(m[1]) - 1}.{_FUSE[m[2]]}.{m[3]}"),
    (re.compile(rf"head\.{_WB}"), lambda m: f"head.{m[1]}"),
)


TITLE = "an official CAT-Seg CVPR 2024"  # in messages: "FILE is TITLE checkpoint"


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare or ``{"model": sd}``) is an official CAT-Seg CVPR checkpoint."""
    sd = unwrap_checkpoint(state_dict)
    return all(key in sd for key in _SENTINELS)


def _map_key(key: str) -> str | None:
    if key.startswith(D2_CLIP_PREFIX):
        return map_d2_clip_key(key[len(D2_CLIP_PREFIX) :])
    match = re.fullmatch(rf"upsample([12])\.{_WB}", key)
    if match:
        return f"guidance_up.{int(match[1]) - 1}.{match[2]}"
    return apply_rules(key, AGG_PREFIX, _AGG_RULES, "aggregator.")


def _rename(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(ovss key, tensor) for one official entry, or None when no rule applies."""
    new = _map_key(key)
    return None if new is None else (new, value)


def _is_shift_mask(key: str) -> bool:
    return key.startswith(AGG_PREFIX) and _MASK.fullmatch(key[len(AGG_PREFIX) :]) is not None


def _mask_is_derivable(key: str, mask: torch.Tensor) -> bool:
    """Whether a stored Swin shift mask equals the one ovss derives from its shape."""
    from ovss.layers.window import shift_window_mask

    if mask.ndim != 3 or mask.shape[1] != mask.shape[2]:
        return False
    window = math.isqrt(mask.shape[1])
    per_side = math.isqrt(mask.shape[0])
    if window * window != mask.shape[1] or per_side * per_side != mask.shape[0] or window < 2:
        return False
    if mask.is_meta:  # shape-only check (manifests, meta-device dry runs)
        return True
    grid = per_side * window
    expected = shift_window_mask(grid, grid, window, window // 2, mask.dtype, mask.device)
    return torch.equal(mask, expected)


def checked_shift_masks(sd: Mapping[str, object], model: str) -> dict[str, torch.Tensor]:
    """The aggregator's stored Swin shift masks, each checked against the one ovss derives (the
    converters drop them: they are buffers rebuilt from the shape).

    Raises:
        CheckpointMismatchError: naming the masks that differ; the file is not an official ``model``
            checkpoint.
    """
    masks = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and _is_shift_mask(k)}
    bad = [k for k, m in masks.items() if not _mask_is_derivable(k, m)]
    if bad:
        raise CheckpointMismatchError(
            f"stored Swin shift mask(s) {bad} differ from the standard one (window 12, shift 6); "
            f"the checkpoint is not an official {model} file"
        )
    return masks


def convert(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename an official CAT-Seg CVPR state dict to the ovss ``CATSeg`` module layout.

    Args:
        state_dict: ``{"model": sd, ...}`` (detectron2 checkpoint) or the bare ``sd``.

    Returns:
        A new dict (same tensor objects) keyed by ovss parameter names; the derivable Swin shift
        masks are dropped after being checked.

    Raises:
        CheckpointMismatchError: a CAT-Seg v1 checkpoint, keys outside the CVPR layout (all listed),
            or a stored shift mask that differs from the derived one.
    """
    sd = unwrap_checkpoint(state_dict)
    if any(k.startswith("backbone.") or k.endswith("attn.in_proj_weight") for k in sd):
        raise CheckpointMismatchError(
            "this looks like a CAT-Seg v1 checkpoint (backbone.* / joint attn.in_proj_weight keys), not a "
            "CAT-Seg CVPR 2024 one: use a catseg-v1-* model name ('ovss models --all'), or model_base.pth / "
            "model_large.pth from the Hugging Face Space hamacojr/CAT-Seg-weights"
        )
    masks = checked_shift_masks(sd, "CAT-Seg CVPR")
    return rename_entries(
        sd,
        _rename,
        "official CAT-Seg CVPR",
        "pass model_base.pth / model_large.pth (Hugging Face Space hamacojr/CAT-Seg-weights) or its 'model' "
        "state dict",
        skip=masks,
    )
