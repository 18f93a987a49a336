"""mmsegmentation ``projects/CAT-Seg`` checkpoints (the port of CAT-Seg v1) -> ovss ``CATSegV1``.

mmengine files hold ``{"state_dict": sd, "meta": ...}`` (``{"model": sd}`` and a bare ``sd`` are
accepted too); ``sd`` is the ``EncoderDecoder`` state dict:

```
backbone.clip_model.*                        -> clip.*  (OpenAI layout, packed in_proj; text -> clip.text.*)
backbone.feature_extractor.conv1 / bn1       -> backbone.stem.conv1 / .norm          (mmseg ResNet, BN)
  layer{n}.{i}.conv{k} / bn{k}               -> backbone.res{n+1}.{i}.conv{k} / conv{k}.norm
  layer{n}.{i}.downsample.0 / .1             -> backbone.res{n+1}.{i}.shortcut / shortcut.norm
backbone.feature_extractor.patch_embed.projection -> backbone.patch_embed.proj         (mmseg Swin)
  stages.{i}.blocks.{j}.attn.w_msa.*         -> backbone.layers.{i}.blocks.{j}.attn.*
  stages.{i}.blocks.{j}.ffn.layers.0.0 / .1  -> ...mlp.fc1 / mlp.fc2
  stages.{i}.downsample.{norm,reduction}     -> backbone.layers.{i}.downsample.*  (unfold channel
                                                order c*4+k permuted to Swin's k*C+c)
  norm{i}, patch_embed.norm                  -> backbone.norm{i}, backbone.patch_embed.norm
neck.conv1 / guidance_projection.0 / text_guidance_projection.0
                                             -> aggregator.cost_embed / appearance_proj.0 / text_proj.0
neck.layers.{i}.spatial_agg.block_{b}.attn.w_msa.qk [2C, C+G]
                                             -> aggregator.layers.{i}.spatial.blocks.{b-1}.attn.q / .k
                                                (rows [:C] / [C:])
  ...w_msa.v / w_msa.proj / norm1 / norm2 / ffn.layers.0.0 / ffn.layers.1 -> attn.v / attn.proj /
                                                norm1 / norm2 / mlp.fc1 / mlp.fc2
  ...w_msa.relative_position_index           -> dropped (unused by the port; checked to be standard)
neck.layers.{i}.class_agg.{attention.q/k/v, MLP.layers.0.0, MLP.layers.1, norm1, norm2}
                                             -> aggregator.layers.{i}.classes.{attn.q/k/v, mlp.fc1, ...}
decode_head.conv_seg                         -> aggregator.head
decode_head.decoder_guidance_projection.{i}.0 -> aggregator.decoder_guidance_proj.{i}.0
decode_head.decoder{n}.up / conv{k}.conv / conv{k}.gn -> aggregator.decoder.{n-1}.up / conv{k} / norm{k}
```

Conversion is pure and strict: every key must be consumed (all offenders listed in one error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch

from ovss.errors import CheckpointMismatchError
from ovss.weights.formats import map_d2_clip_key, rename_entries, unwrap_checkpoint

_CLIP = "backbone.clip_model."
_FE = "backbone.feature_extractor."
TITLE = "an mmsegmentation CAT-Seg (v1 port)"
_SENTINELS = ("neck.conv1.weight", "decode_head.conv_seg.weight", _CLIP + "visual.conv1.weight")
_CONTAINERS = ("state_dict", "model")
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_WB = r"(weight|bias)"
_SWIN_BLOCK = {
    "attn.w_msa.relative_position_bias_table": "attn.relative_position_bias_table",
    "attn.w_msa.relative_position_index": "attn.relative_position_index",
    "attn.w_msa.qkv.weight": "attn.qkv.weight",
    "attn.w_msa.qkv.bias": "attn.qkv.bias",
    "attn.w_msa.proj.weight": "attn.proj.weight",
    "attn.w_msa.proj.bias": "attn.proj.bias",
    "ffn.layers.0.0.weight": "mlp.fc1.weight",
    "ffn.layers.0.0.bias": "mlp.fc1.bias",
    "ffn.layers.1.weight": "mlp.fc2.weight",
    "ffn.layers.1.bias": "mlp.fc2.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}
_AGG_BLOCK = {
    "attn.w_msa.v": "attn.v",
    "attn.w_msa.proj": "attn.proj",
    "norm1": "norm1",
    "norm2": "norm2",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
_CLASS = {
    "attention.q": "attn.q",
    "attention.k": "attn.k",
    "attention.v": "attn.v",
    "MLP.layers.0.0": "mlp.fc1",
    "MLP.layers.1": "mlp.fc2",
    "norm1": "norm1",
    "norm2": "norm2",
}
_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]], ...] = (
    (re.compile(rf"{re.escape(_FE)}conv1\.weight"), lambda m: "backbone.stem.conv1.weight"),
    (re.compile(rf"{re.escape(_FE)}bn1\.{_BN}"), lambda m: f"backbone.stem.conv1.norm.{m[1]}"),
    (
        re.compile(rf"{re.escape(_FE)}layer(\d)\.(\d+)\.conv(\d)\.weight"),
        lambda m: f"backbone.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(rf"{re.escape(_FE)}layer(\d)\.(\d+)\.bn(\d)\.{_BN}"),
        lambda m: f"backbone.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        re.compile(rf"{re.escape(_FE)}layer(\d)\.(\d+)\.downsample\.0\.weight"),
        lambda m: f"backbone.res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        re.compile(rf"{re.escape(_FE)}layer(\d)\.(\d+)\.downsample\.1\.{_BN}"),
        lambda m: f"backbone.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
    (
        re.compile(rf"{re.escape(_FE)}patch_embed\.projection\.{_WB}"),
        lambda m: f"backbone.patch_embed.proj.{m[1]}",
    ),
    (re.compile(rf"{re.escape(_FE)}(patch_embed\.norm|norm\d)\.{_WB}"), lambda m: f"backbone.{m[1]}.{m[2]}"),
    (
        re.compile(rf"{re.escape(_FE)}stages\.(\d+)\.blocks\.(\d+)\.(.+)"),
        lambda m: (
            f"backbone.layers.{m[1]}.blocks.{m[2]}.{_SWIN_BLOCK[m[3]]}" if m[3] in _SWIN_BLOCK else None
        ),
    ),
    (
        re.compile(
            rf"{re.escape(_FE)}stages\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)"
        ),
        lambda m: f"backbone.layers.{m[1]}.downsample.{m[2]}",
    ),
    (re.compile(rf"neck\.conv1\.{_WB}"), lambda m: f"aggregator.cost_embed.{m[1]}"),
    (re.compile(rf"neck\.guidance_projection\.0\.{_WB}"), lambda m: f"aggregator.appearance_proj.0.{m[1]}"),
    (re.compile(rf"neck\.text_guidance_projection\.0\.{_WB}"), lambda m: f"aggregator.text_proj.0.{m[1]}"),
    (
        re.compile(
            rf"neck\.layers\.(\d+)\.spatial_agg\.block_([12])\.(attn\.w_msa\.v|attn\.w_msa\.proj|norm[12]|"
            rf"ffn\.layers\.0\.0|ffn\.layers\.1)\.{_WB}"
        ),
        lambda m: f"aggregator.layers.{m[1]}.spatial.blocks.{int(m[2]) - 1}.{_AGG_BLOCK[m[3]]}.{m[4]}",
    ),
    (
        re.compile(rf"neck\.layers\.(\d+)\.spatial_agg\.guidance_norm\.{_WB}"),
        lambda m: f"aggregator.layers.{m[1]}.spatial.guidance_norm.{m[2]}",
    ),
    (
        re.compile(
            rf"neck\.layers\.(\d+)\.class_agg\.(attention\.[qkv]|MLP\.layers\.0\.0|MLP\.layers\.1|norm[12])"
            rf"\.{_WB}"
        ),
        lambda m: f"aggregator.layers.{m[1]}.classes.{_CLASS[m[2]]}.{m[3]}",
    ),
    (re.compile(rf"decode_head\.conv_seg\.{_WB}"), lambda m: f"aggregator.head.{m[1]}"),
    (
        re.compile(rf"decode_head\.decoder_guidance_projection\.(\d)\.0\.{_WB}"),
        lambda m: f"aggregator.decoder_guidance_proj.{m[1]}.0.{m[2]}",
    ),
    (
        re.compile(rf"decode_head\.decoder([12])\.up\.{_WB}"),
        lambda m: f"aggregator.decoder.{int(m[1]) - 1}.up.{m[2]}",
    ),
    (
        re.compile(rf"decode_head\.decoder([12])\.conv([12])\.(conv|gn)\.{_WB}"),
        lambda m: f"aggregator.decoder.{int(m[1]) - 1}.{'conv' if m[3] == 'conv' else 'norm'}{m[2]}.{m[4]}",
    ),
)
_QK = re.compile(rf"neck\.layers\.(\d+)\.spatial_agg\.block_([12])\.attn\.w_msa\.qk\.{_WB}")
_AGG_INDEX = re.compile(r"neck\.layers\.\d+\.spatial_agg\.block_[12]\.attn\.w_msa\.relative_position_index")


def detect(state_dict: Mapping[str, object]) -> bool:
    """True if ``state_dict`` (bare, ``{"state_dict": sd}`` or ``{"model": sd}``) is an mmseg CAT-Seg file."""
    sd = unwrap_checkpoint(state_dict, _CONTAINERS)
    return all(k in sd for k in _SENTINELS)


def unfold_to_swin_order(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Permute a 4C axis from mmcv's ``nn.Unfold`` order (index c*4 + 2*dy + dx) to Swin's patch
    merging order (index j*C + c with (dy, dx) = (0,0), (1,0), (0,1), (1,1) for j = 0..3)."""
    c = t.shape[dim] // 4
    j = torch.arange(4).repeat_interleave(c)
    ch = torch.arange(c).repeat(4)
    perm = ch * 4 + (j % 2) * 2 + j // 2
    return t if t.is_meta else t.index_select(dim, perm)


def _rename(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    if key.startswith(_CLIP):
        new = map_d2_clip_key(key[len(_CLIP) :])
        return None if new is None else (new, value)
    for pattern, build in _RULES:
        m = pattern.fullmatch(key)
        if m:
            new = build(m)
            if new is None:
                return None
            if ".downsample." in new and new.startswith("backbone.layers."):
                value = unfold_to_swin_order(value, value.ndim - 1)
            return new, value
    return None


def _standard_index(value: object) -> bool:
    from ovss.towers.swin import relative_position_index

    if not isinstance(value, torch.Tensor):
        return False

    window = math.isqrt(value.shape[0]) if value.ndim == 2 else 0
    if window * window != value.shape[0] or value.shape[0] != value.shape[-1]:
        return False
    return value.is_meta or torch.equal(value.long(), relative_position_index(window))


def convert(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename an mmseg CAT-Seg state dict to the ovss ``CATSegV1`` layout (mmseg variants).

    Returns:
        A new dict keyed by ovss names: the fused ``qk`` Linear split into q and k, the patch-merging
        weights permuted, the aggregator's unused ``relative_position_index`` buffers dropped.

    Raises:
        CheckpointMismatchError: keys outside the layout (all listed) or a non-standard dropped buffer.
    """
    sd = unwrap_checkpoint(state_dict, _CONTAINERS)
    unused = {k for k in sd if _AGG_INDEX.fullmatch(k)}
    bad = [k for k in unused if not _standard_index(sd[k])]
    if bad:
        raise CheckpointMismatchError(f"relative_position_index buffer(s) {bad} are not the standard ones")
    split: dict[str, torch.Tensor] = {}
    rest: dict[str, object] = {}
    for key, value in sd.items():
        m = _QK.fullmatch(key)
        if m and isinstance(value, torch.Tensor):
            base = f"aggregator.layers.{m[1]}.spatial.blocks.{int(m[2]) - 1}.attn"
            q, k = value.chunk(2, dim=0)
            split[f"{base}.q.{m[3]}"], split[f"{base}.k.{m[3]}"] = q, k
        elif key not in unused:
            rest[key] = value
    out = rename_entries(
        rest, _rename, "mmseg CAT-Seg", "pass an mmseg projects/CAT-Seg checkpoint or its 'state_dict'"
    )
    out.update(split)
    return out
