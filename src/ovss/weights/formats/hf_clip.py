"""transformers ``CLIPModel`` state dicts -> ovss ``CLIP`` layout.

HF names (left) and ovss names (right)::

    vision_model.embeddings.class_embedding            visual.class_embedding
    vision_model.embeddings.patch_embedding.weight     visual.conv1.weight
    vision_model.embeddings.position_embedding.weight  visual.positional_embedding   (nn.Embedding)
    vision_model.pre_layrnorm.*  / post_layernorm.*    visual.ln_pre.* / visual.ln_post.*
    visual_projection.weight (E, W)                    visual.proj (W, E)            (transposed)
    text_model.embeddings.token_embedding.weight       text.token_embedding.weight
    text_model.embeddings.position_embedding.weight    text.positional_embedding
    text_model.final_layer_norm.*                      text.ln_final.*
    text_projection.weight (E, W)                      text.text_projection (W, E)   (transposed)
    *.encoder.layers.{i}.layer_norm1/2.*               *.transformer.resblocks.{i}.ln_1/2.*
    *.encoder.layers.{i}.mlp.fc1/fc2.*                 *.transformer.resblocks.{i}.mlp.c_fc/c_proj.*
    *.encoder.layers.{i}.self_attn.{q,k,v}_proj.*      *.attn.in_proj_weight / in_proj_bias (concatenated)
    *.encoder.layers.{i}.self_attn.out_proj.*          *.attn.out_proj.*
    logit_scale                                        logit_scale

``position_ids`` buffers are dropped. HF scales q by ``head_dim ** -0.5`` after the projection,
which is what scaled-dot-product attention does, so no weight is rescaled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_PREFIX_RULES = (
    (re.compile(r"^text_model\.embeddings\.token_embedding\."), "text.token_embedding."),
    (re.compile(r"^text_model\.embeddings\.position_embedding\.weight$"), "text.positional_embedding"),
    (re.compile(r"^text_model\.encoder\.layers\.(\d+)\."), r"text.transformer.resblocks.\1."),
    (re.compile(r"^text_model\.final_layer_norm\."), "text.ln_final."),
    (re.compile(r"^vision_model\.embeddings\.class_embedding$"), "visual.class_embedding"),
    (re.compile(r"^vision_model\.embeddings\.patch_embedding\."), "visual.conv1."),
    (re.compile(r"^vision_model\.embeddings\.position_embedding\.weight$"), "visual.positional_embedding"),
    (re.compile(r"^vision_model\.pre_layrnorm\."), "visual.ln_pre."),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\."), r"visual.transformer.resblocks.\1."),
    (re.compile(r"^vision_model\.post_layernorm\."), "visual.ln_post."),
)
_BLOCK_RULES = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}
_PROJECTIONS = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text.text_projection"}
_QKV = re.compile(r"^(.*\.resblocks\.\d+\.)self_attn\.([qkv])_proj\.(weight|bias)$")
_DROP = re.compile(r"(^|\.)position_ids$")


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """transformers ``CLIPModel`` layout: ``text_model.*`` / ``vision_model.*`` embeddings."""
    return (
        "text_model.embeddings.token_embedding.weight" in state_dict
        or "vision_model.embeddings.patch_embedding.weight" in state_dict
    )


def _rename(key: str) -> str:
    for pattern, repl in _PREFIX_RULES:
        new, n = pattern.subn(repl, key)
        if n:
            if ".resblocks." in new:
                match = re.match(r"^(.*\.resblocks\.\d+\.)(.*)$", new)
                assert match is not None, new
                stem, rest = match.groups()
                for old, nu in _BLOCK_RULES.items():
                    if rest.startswith(old):
                        return stem + nu + rest[len(old) :]
            return new
    return key


def convert(state_dict: Mapping[str, torch.Tensor], split_qkv: bool | None = None) -> dict[str, torch.Tensor]:
    """Rename / reshape to the ovss ``CLIP`` layout (pure; only transposes and concatenations copy).

    Args:
        state_dict: a transformers ``CLIPModel.state_dict()``.
        split_qkv: True -> split q/k/v weights (CAT-Seg layout); False or None -> packed
            ``in_proj_weight``.

    Returns:
        ``visual.*``, ``text.*`` and ``logit_scale``; keys that map nowhere pass through unchanged
        (as do the q/k/v parts of a block missing one of them) so that strict loading reports them.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}  # block stem -> {"q.weight": ..., ...}
    originals: dict[str, dict[str, str]] = {}  # block stem -> part -> original key
    for key, value in state_dict.items():
        if _DROP.search(key):
            continue
        if key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = value.T.contiguous()
            continue
        new = _rename(key)
        m = _QKV.match(new)
        if m:
            stem, which, kind = m.groups()
            qkv.setdefault(stem, {})[f"{which}.{kind}"] = value
            originals.setdefault(stem, {})[f"{which}.{kind}"] = key
            continue
        out[new] = value
    for stem, parts in qkv.items():
        names = [f"{w}.{k}" for k in ("weight", "bias") for w in "qkv"]
        if any(n not in parts for n in names):
            out.update({originals[stem][p]: v for p, v in parts.items()})
            continue
        if split_qkv:
            for w in "qkv":
                out[f"{stem}attn.{w}_proj_weight"] = parts[f"{w}.weight"]
        else:
            out[stem + "attn.in_proj_weight"] = torch.cat([parts[f"{w}.weight"] for w in "qkv"])
        out[stem + "attn.in_proj_bias"] = torch.cat([parts[f"{w}.bias"] for w in "qkv"])
    return out
