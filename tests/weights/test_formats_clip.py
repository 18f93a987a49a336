"""ovss.weights.formats' CLIP entry points (convert_clip, detect_clip_format) over the three CLIP layouts:
round trips, split q/k/v, detection. The hand-written layouts below serve formats/test_*clip.py too."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.towers.clip import CLIP, ClipConfig
from ovss.towers.text import TextConfig
from ovss.towers.vit import VisionConfig
from ovss.weights.build import load_strict
from ovss.weights.formats import (
    convert_clip,
    detect_clip_format,
    hf_clip,
    open_clip,
    openai_clip,
)
from tests.parity._common import (
    official_state_dict,
    read_config,
    reference_outputs,
)
from tests.towers._clip_reference import randomize_

VIS = dict(image_size=32, patch=8, width=32, layers=2, heads=4, out_dim=16)
TXT = dict(context=12, vocab=50, width=24, layers=2, heads=3, out_dim=16)


def _cfg(split: bool = False) -> ClipConfig:
    return ClipConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, output_dim=16),
        text=TextConfig(context_length=12, vocab_size=50, width=24, heads=3, layers=2, output_dim=16),
    ).override(f"vision.split_qkv={str(split).lower()}", f"text.split_qkv={str(split).lower()}")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, 40, 32, generator=torch.Generator().manual_seed(1))
    tokens = torch.zeros(3, 12, dtype=torch.long)
    for i, row in enumerate([[47, 3, 49], [47, 5, 6, 7, 49], [47, 49]]):
        tokens[i, : len(row)] = torch.tensor(row)
    return images, tokens


def _outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = _inputs()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _native(seed: int = 0, cfg: ClipConfig | None = None) -> CLIP:
    return randomize_(CLIP(cfg or _cfg()), seed).eval()


# ------------------------------------------------------------------ foreign layouts, written by hand
def _to_openai(sd: dict) -> dict:
    """ovss -> OpenAI / open_clip layout: the text tower back to the top level."""
    return {(k[len("text.") :] if k.startswith("text.") else k): v for k, v in sd.items()}


def _to_hf(sd: dict, vis_layers: int, txt_layers: int) -> dict:
    """ovss (packed) -> transformers CLIPModel layout."""
    hf = {
        "text_model.embeddings.token_embedding.weight": sd["text.token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["text.positional_embedding"],
        "text_model.embeddings.position_ids": torch.arange(12)[None],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.embeddings.position_ids": torch.arange(17)[None],
        "visual_projection.weight": sd["visual.proj"].T,
        "text_projection.weight": sd["text.text_projection"].T,
        "logit_scale": sd["logit_scale"],
    }
    for p in ("weight", "bias"):
        hf[f"vision_model.pre_layrnorm.{p}"] = sd[f"visual.ln_pre.{p}"]
        hf[f"vision_model.post_layernorm.{p}"] = sd[f"visual.ln_post.{p}"]
        hf[f"text_model.final_layer_norm.{p}"] = sd[f"text.ln_final.{p}"]
    for ours, theirs, n in (("visual", "vision_model", vis_layers), ("text", "text_model", txt_layers)):
        for i in range(n):
            a, h = f"{ours}.transformer.resblocks.{i}.", f"{theirs}.encoder.layers.{i}."
            for name, w, b in zip(
                "qkv", sd[a + "attn.in_proj_weight"].chunk(3), sd[a + "attn.in_proj_bias"].chunk(3)
            ):
                hf[f"{h}self_attn.{name}_proj.weight"], hf[f"{h}self_attn.{name}_proj.bias"] = w, b
            for src, dst in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for p in ("weight", "bias"):
                    hf[f"{h}{dst}.{p}"] = sd[f"{a}{src}.{p}"]
    return hf


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fmt", ["openai_clip", "open_clip", "hf_clip"])
@pytest.mark.parametrize("split", [False, True])
def test_round_trip_is_identical_to_native(fmt, split):
    native = _native(seed=5)
    sd = native.state_dict()
    if fmt == "hf_clip":
        foreign, module = _to_hf(sd, 2, 2), hf_clip
    else:
        foreign = _to_openai(sd)
        if fmt == "open_clip":
            foreign["attn_mask"] = torch.full((12, 12), float("-inf")).triu(1)  # older open_clip files
        module = openai_clip if fmt == "openai_clip" else open_clip
    assert module.detect(foreign)
    converted = module.convert(foreign, split_qkv=split)
    model = load_strict(CLIP(_cfg(split)), converted, fmt).eval()
    for a, b in zip(_outputs(model), _outputs(native)):
        assert torch.equal(a, b)
    # the generic entry point picks the same converter
    assert set(convert_clip(foreign, split_qkv=split)) == set(converted)


def test_detection_and_unknown_layouts():
    sd = _native().state_dict()
    hf = _to_hf(sd, 2, 2)
    assert hf_clip.detect(hf) and not openai_clip.detect(hf) and not open_clip.detect(hf)
    assert detect_clip_format(hf) == "hf_clip"
    assert not hf_clip.detect(_to_openai(sd))
    with pytest.raises(CheckpointMismatchError, match="not a CLIP checkpoint"):
        detect_clip_format({"backbone.conv.weight": torch.zeros(1)})


def test_converters_are_pure():
    foreign = _to_openai(_native().state_dict())
    before = dict(foreign)
    openai_clip.convert(foreign, split_qkv=True)
    open_clip.convert(foreign)
    assert list(foreign) == list(before) and all(foreign[k] is before[k] for k in before)


# ------------------------------------------------ official fixtures (tiny, random): formats/test_*clip.py
def _fixture(folder):
    return read_config(folder), official_state_dict(folder), reference_outputs(folder)
