"""CLIP checkpoint converters: OpenAI / open_clip / HF round trips, split q/k/v, official fixtures."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.towers.clip import CLIP, ClipConfig
from ovss.towers.convnext import ConvNeXtConfig
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
from tests.conftest import parity_params, relative_error, strip_prefix
from tests.parity._common import (
    official_state_dict,
    read_array,
    read_config,
    reference_outputs,
    vit_clip_config,
)
from tests.towers._clip_reference import RefCLIP, randomize_

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
def test_openai_layout_matches_reference_implementation():
    """Weights in the OpenAI layout give the same embeddings in ovss as in the plain reference."""
    ref = randomize_(RefCLIP(VIS, TXT), 3).eval()
    sd = dict(ref.state_dict())
    # what torch.jit.load(...).state_dict() of an OpenAI archive adds
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(12), vocab_size=torch.tensor(50))
    assert openai_clip.detect(sd) and detect_clip_format(sd) == "openai_clip"
    ours = load_strict(CLIP(_cfg()), openai_clip.convert(sd), "openai").eval()
    images, tokens = _inputs()
    img, txt = _outputs(ours)
    with torch.no_grad():
        ref_img = ref.encode_image(images)
        ref_txt = ref.encode_text(tokens)
    assert relative_error(img, ref_img) < 1e-5
    assert relative_error(txt, ref_txt) < 1e-5
    assert img.abs().mean() > 1e-2 and txt.abs().mean() > 1e-2


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


def test_split_checkpoint_packs_back():
    """A CAT-Seg-style (split q/k/v) OpenAI-layout file loads into the packed model and vice versa."""
    split_native = _native(seed=6, cfg=_cfg(split=True))
    foreign = _to_openai(split_native.state_dict())
    assert "visual.transformer.resblocks.0.attn.q_proj_weight" in foreign
    packed = load_strict(CLIP(_cfg()), openai_clip.convert(foreign, split_qkv=False), "catseg").eval()
    kept = load_strict(CLIP(_cfg(True)), openai_clip.convert(foreign), "catseg").eval()
    for a, b, c in zip(_outputs(packed), _outputs(split_native), _outputs(kept)):
        assert torch.equal(a, b) and torch.equal(c, b)


def test_open_clip_convnext_round_trip():
    cfg = ClipConfig(
        embed_dim=16,
        convnext=ConvNeXtConfig(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), output_dim=16, proj="mlp"),
        text=_cfg().text.override("act=gelu"),
    )
    native = _native(seed=7, cfg=cfg)
    foreign = _to_openai(native.state_dict())
    foreign["attn_mask"] = torch.zeros(12, 12)
    assert open_clip.detect(foreign) and not openai_clip.detect(foreign) and not hf_clip.detect(foreign)
    assert detect_clip_format(foreign) == "open_clip"
    model = load_strict(CLIP(cfg), open_clip.convert(foreign), "open_clip convnext").eval()
    images, tokens = torch.randn(1, 3, 64, 64), _inputs()[1]
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), native.encode_image(images))
        assert torch.equal(model.encode_text(tokens), native.encode_text(tokens))


def test_custom_text_clip_keys_pass_through():
    sd = _native(seed=8).state_dict()  # open_clip CustomTextCLIP keeps text.* already
    assert open_clip.detect(sd)
    assert list(open_clip.convert(sd)) == list(sd)


def test_detection_and_unknown_layouts():
    sd = _native().state_dict()
    hf = _to_hf(sd, 2, 2)
    assert hf_clip.detect(hf) and not openai_clip.detect(hf) and not open_clip.detect(hf)
    assert detect_clip_format(hf) == "hf_clip"
    assert not hf_clip.detect(_to_openai(sd))
    with pytest.raises(CheckpointMismatchError, match="not a CLIP checkpoint"):
        detect_clip_format({"backbone.conv.weight": torch.zeros(1)})


def test_mismatch_lists_offending_keys():
    foreign = _to_openai(_native().state_dict())
    del foreign["ln_final.bias"]
    foreign["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3 * 24, 20)
    foreign["visual.attnpool.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError) as info:
        load_strict(CLIP(_cfg()), openai_clip.convert(foreign), "ViT-B-16.pt", model="CLIP(tiny)")
    msg = str(info.value)
    assert "ViT-B-16.pt" in msg and "CLIP(tiny)" in msg
    assert "missing [text.ln_final.bias]" in msg
    assert "unexpected [visual.attnpool.weight]" in msg
    assert "text.transformer.resblocks.0.attn.in_proj_weight ckpt (72, 20) != model (72, 24)" in msg
    hf = _to_hf(_native().state_dict(), 2, 2)
    del hf["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointMismatchError) as info:
        load_strict(CLIP(_cfg()), hf_clip.convert(hf), "hf")
    msg = str(info.value)
    stem = "text.transformer.resblocks.1.attn."
    assert f"missing [{stem}in_proj_weight, {stem}in_proj_bias]" in msg
    assert "text_model.encoder.layers.1.self_attn.q_proj.weight" in msg  # leftovers reported as unexpected


def test_converters_are_pure():
    foreign = _to_openai(_native().state_dict())
    before = dict(foreign)
    openai_clip.convert(foreign, split_qkv=True)
    open_clip.convert(foreign)
    assert list(foreign) == list(before) and all(foreign[k] is before[k] for k in before)


# ------------------------------------------------------------------ official fixtures (tiny, random)
def _fixture(folder):
    return read_config(folder), official_state_dict(folder), reference_outputs(folder)


@pytest.mark.parametrize("folder", parity_params("san_"))
def test_san_fixture_clip_towers(folder):
    """The open_clip CLIP inside the official SAN state dict: text embeddings and ViT records."""
    cfg, sd, out = _fixture(folder)
    c = cfg["clip"]
    split = len({k.split(".")[2] for k in sd if k.startswith("clip_visual_extractor.resblocks.")})
    visual = strip_prefix(sd, "clip_visual_extractor.")
    for k, v in strip_prefix(sd, "clip_rec_head.").items():
        if k.startswith("resblocks."):
            i, rest = k[len("resblocks.") :].split(".", 1)
            visual[f"resblocks.{int(i) + split}.{rest}"] = v
        else:
            visual[k] = v
    text = {k: v for k, v in strip_prefix(sd, "ov_classifier.").items() if k != "bg_embed"}
    sd_clip = {"visual." + k.replace("resblocks.", "transformer.resblocks."): v for k, v in visual.items()}
    sd_clip.update(text)
    model = load_strict(CLIP(vit_clip_config(c)), open_clip.convert(sd_clip), str(folder)).eval()
    tokens = read_array(folder, "tokens.npy")  # (P, K, 77)
    p, k, n = tokens.shape
    with torch.no_grad():
        per_template = model.encode_text(tokens.reshape(p * k, n), normalize=True).reshape(p, k, -1)
        feats, (h, w) = model.visual.forward_intermediates(out["clip_input"], [0, 1, 2, 3])
    assert relative_error(per_template, out["text.per_template"]) < 1e-4
    mean = torch.nn.functional.normalize(per_template.mean(0), dim=-1)
    assert relative_error(mean, out["text.class_embeds"]) < 1e-4
    for i, f in enumerate(feats):
        grid = f[:, 1:].transpose(1, 2).reshape(f.shape[0], -1, h, w)
        assert relative_error(grid, out[f"clip.feat.{i}"]) < 1e-4
        assert relative_error(f[:, :1].transpose(0, 1), out[f"clip.cls.{i}"]) < 1e-4


@pytest.mark.parametrize("folder", parity_params("catseg_"))
def test_catseg_fixture_split_qkv_towers(folder):
    """The OpenAI CLIP (split q/k/v) inside the official CAT-Seg state dict."""
    cfg, sd, out = _fixture(folder)
    model_cfg = vit_clip_config(cfg["clip"], split_qkv=True)
    clip_sd = strip_prefix(sd, "sem_seg_head.predictor.clip_model.")
    assert openai_clip.detect(clip_sd)
    model = load_strict(CLIP(model_cfg), openai_clip.convert(clip_sd), str(folder)).eval()
    tokens = read_array(folder, "tokens.npy")  # (T, 77)
    with torch.no_grad():
        text = model.encode_text(tokens, normalize=True)
        feats, _ = model.visual.forward_intermediates(out["clip_input"], [4, 8])  # hooks on blocks 3 and 7
    assert relative_error(text, out["text_embeds"][:, 0]) < 1e-4
    assert relative_error(feats[0].transpose(0, 1), out["clip.block3.out"]) < 1e-4
    assert relative_error(feats[1].transpose(0, 1), out["clip.block7.out"]) < 1e-4


@pytest.mark.parametrize("folder", parity_params("sed_"))
def test_sed_fixture_open_clip_convnext(folder):
    """The open_clip ConvNeXt CLIP inside the official SED state dict loads strictly; GELU text tower."""
    cfg, sd, out = _fixture(folder)
    c, trunk = cfg["clip"], cfg["clip"]["timm_trunk"]
    e = c["embed_dim E"]
    proj = c["open_clip_model_config"]["vision_cfg"]["timm_proj"]
    t = c["text"]
    model_cfg = ClipConfig(
        embed_dim=e,
        convnext=ConvNeXtConfig(depths=trunk["depths"], dims=trunk["dims"], output_dim=e, proj=proj),
        text=TextConfig(width=t["width"], heads=t["heads"], layers=t["layers"], output_dim=e, act="gelu"),
    )
    clip_sd = strip_prefix(sd, "sem_seg_head.predictor.clip_model.")
    assert detect_clip_format(clip_sd) == "open_clip"
    model = load_strict(CLIP(model_cfg), open_clip.convert(clip_sd), str(folder)).eval()
    tokens = read_array(folder, "tokens.npy")
    rows = cfg["token_rows"]
    if any(r[2] != 1 for r in rows):
        pytest.skip("synonym averaging is the SED model's job")
    with torch.no_grad():
        emb = model.encode_text(tokens, normalize=True)
    k, p = out["text_embeds"].shape[:2]
    assert relative_error(emb.reshape(k, p, -1), out["text_embeds"]) < 1e-4
