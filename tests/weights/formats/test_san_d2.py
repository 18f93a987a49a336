"""san_d2: the official detectron2 SAN checkpoint -> ovss SAN (key mapping details on the fixture)."""

from __future__ import annotations

import torch

from ovss.models.san import SAN, san_tiny
from ovss.weights.build import load_strict
from ovss.weights.formats import san_d2
from tests.weights.formats.test_san_mmseg import _official, _same, needs_fixture


@needs_fixture
def test_d2_mapping_details():
    official = _official()
    ours = san_d2.convert(official)
    _same(ours, san_d2.convert({"model": official, "iteration": torch.tensor(0)}))
    assert not set(san_d2.DROPPED) & set(ours) and len(ours) == len(official) - 2
    split = 3  # fixture: 3 extractor blocks, 2 rec-head blocks
    assert torch.equal(ours[f"clip.visual.transformer.resblocks.{split}.attn.in_proj_weight"],
                       official["clip_rec_head.resblocks.0.attn.in_proj_weight"])
    assert torch.equal(ours["clip.visual.proj"], official["clip_rec_head.proj"])
    assert torch.equal(ours["bg_embed"], official["ov_classifier.bg_embed"][0])
    assert torch.equal(ours["side.fusion.2.proj.weight"],
                       official["side_adapter_network.fusion_layers.layer_2.input_proj.1.weight"][:, :, 0, 0])
    assert torch.equal(ours["side.decoder.attn_mlp.layers.2.weight"],
                       official["side_adapter_network.mask_decoder.attn_mlp.layers.2.weight"][:, :, 0, 0])
    assert torch.equal(ours["side.blocks.1.attn.in_proj_weight"],
                       official["side_adapter_network.vit_model.blocks.1.attn.qkv.weight"])
    assert ours["side.query_embed"].shape == (10, 48) and ours["side.pos_embed"].shape == (36, 48)
    load_strict(SAN(san_tiny()), ours, "fixture")
