"""openai_clip: OpenAI-layout CLIP checkpoints (packed or split q/k/v) -> ovss CLIP, against the reference
implementation and the CLIP inside the official CAT-Seg fixtures."""

from __future__ import annotations

import pytest
import torch

from ovss.errors import CheckpointMismatchError
from ovss.towers.clip import CLIP
from ovss.weights.build import load_strict
from ovss.weights.formats import detect_clip_format, hf_clip, openai_clip
from tests.conftest import parity_params, relative_error, strip_prefix
from tests.parity._common import read_array, vit_clip_config
from tests.towers._clip_reference import RefCLIP, randomize_
from tests.weights.test_formats_clip import (
    TXT,
    VIS,
    _cfg,
    _fixture,
    _inputs,
    _native,
    _outputs,
    _to_hf,
    _to_openai,
)


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


def test_split_checkpoint_packs_back():
    """A CAT-Seg-style (split q/k/v) OpenAI-layout file loads into the packed model and vice versa."""
    split_native = _native(seed=6, cfg=_cfg(split=True))
    foreign = _to_openai(split_native.state_dict())
    assert "visual.transformer.resblocks.0.attn.q_proj_weight" in foreign
    packed = load_strict(CLIP(_cfg()), openai_clip.convert(foreign, split_qkv=False), "catseg").eval()
    kept = load_strict(CLIP(_cfg(True)), openai_clip.convert(foreign), "catseg").eval()
    for a, b, c in zip(_outputs(packed), _outputs(split_native), _outputs(kept)):
        assert torch.equal(a, b) and torch.equal(c, b)


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
