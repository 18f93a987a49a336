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

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
AGG_PREFIX = "sem_seg_head.predictor.transformer."
_TEXT_ROOTS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
_SENTINELS = (
    AGG_PREFIX + "conv1.weight",
    AGG_PREFIX + "layers.0.attention.padding_tokens",
    CLIP_PREFIX + "visual.transformer.resblocks.0.attn.q_proj_weight",
    "upsample1.weight",
)
_MASK = re.compile(r"layers\.\d+\.swin_block\.block_2\.attn_mask")
_FUSE = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2"}
_CLASS = {"attention.q": "attn.q", "attention.k": "attn.k", "attention.v": "attn.v",
          "MLP.0": "mlp.fc1", "MLP.2": "mlp.fc2", "norm1": "norm1", "norm2": "norm2"}
_WB = r"(weight|bias)"

# (pattern on the key after AGG_PREFIX, replacement builder) -> key after "aggregator."
_AGG_RULES: tuple[tuple[re.Pattern[str], object], ...] = (
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


def _unwrap(state_dict: Mapping[str, object]) -> Mapping[str, object]:
    """The state dict inside a detectron2 checkpoint ({"model": sd, ...}) or the bare state dict."""
    inner = state_dict.get("model") if isinstance(state_dict, Mapping) else None
    return inner if isinstance(inner, Mapping) else state_dict


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare or ``{"model": sd}``) is an official CAT-Seg CVPR checkpoint."""
    sd = _unwrap(state_dict)
    return all(key in sd for key in _SENTINELS)


def _map_key(key: str) -> str | None:
    if key.startswith(CLIP_PREFIX):
        rest = key[len(CLIP_PREFIX) :]
        if rest.startswith("visual."):
            return "clip." + rest
        if rest == "logit_scale":
            return "clip.logit_scale"
        if rest.startswith(_TEXT_ROOTS):
            return "clip.text." + rest
        return None
    match = re.fullmatch(rf"upsample([12])\.{_WB}", key)
    if match:
        return f"guidance_up.{int(match[1]) - 1}.{match[2]}"
    if key.startswith(AGG_PREFIX):
        rest = key[len(AGG_PREFIX) :]
        for pattern, build in _AGG_RULES:
            match = pattern.fullmatch(rest)
            if match:
                return "aggregator." + build(match)  # type: ignore[operator]
    return None


def _mask_is_derivable(key: str, mask: torch.Tensor) -> bool:
    """Whether a stored Swin shift mask equals the one ovss derives from its shape."""
    from ovss.models.catseg_aggregator import shift_window_mask

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
    sd = _unwrap(state_dict)
    if any(k.startswith("backbone.") or k.endswith("attn.in_proj_weight") for k in sd):
        raise CheckpointMismatchError(
            "this is a CAT-Seg v1 checkpoint (backbone.* / joint attn.in_proj_weight keys); ovss implements "
            "the CVPR 2024 version: use model_base.pth or model_large.pth from hamacojr/CAT-Seg-weights"
        )
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    bad_masks: list[str] = []
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        if key.startswith(AGG_PREFIX) and _MASK.fullmatch(key[len(AGG_PREFIX) :]):
            if not _mask_is_derivable(key, value):
                bad_masks.append(key)
            continue
        new = _map_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if bad_masks:
        raise CheckpointMismatchError(
            f"stored Swin shift mask(s) {bad_masks} differ from the standard one (window 12, shift 6); "
            "the checkpoint is not an official CAT-Seg CVPR file"
        )
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" ... (+{len(unknown) - 20} more)" if len(unknown) > 20 else "")
        raise CheckpointMismatchError(
            f"{len(unknown)} key(s) are not part of the official CAT-Seg CVPR layout: {shown}; "
            "pass model_base.pth / model_large.pth (hamacojr/CAT-Seg-weights) or its 'model' state dict"
        )
    return out
