"""open_clip: open_clip CLIP checkpoints (ViT and ConvNeXt towers) -> ovss CLIP, round trips and the CLIP
inside the official SAN and SED fixtures."""

from __future__ import annotations

import pytest
import torch

from ovss.towers.clip import CLIP, ClipConfig
from ovss.towers.convnext import ConvNeXtConfig
from ovss.towers.text import TextConfig
from ovss.weights.build import load_strict
from ovss.weights.formats import detect_clip_format, hf_clip, open_clip, openai_clip
from tests.conftest import parity_params, relative_error, strip_prefix
from tests.parity._common import read_array, vit_clip_config
from tests.weights.test_formats_clip import _cfg, _fixture, _inputs, _native, _to_openai


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
