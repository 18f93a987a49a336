"""SAN's side adapter blocks (models/san_adapter.py): shapes, deep supervision, the mask decoder's
products against a hand computation, and fusion adding only into the patch tokens."""

from __future__ import annotations

import torch

from ovss.models.san import san_tiny
from ovss.models.san_adapter import MLP, FusionLayer, MaskDecoder, SideAdapter


def test_side_adapter_emits_one_output_per_deep_supervision_block():
    torch.manual_seed(0)
    cfg = san_tiny()
    side = SideAdapter(cfg).eval()
    vision = cfg.clip.vision
    assert vision is not None
    clip_grid = (2, 3)
    clip = {s: torch.randn(1, 6, vision.width) for _, s in cfg.fusion_map}
    images = torch.randn(1, 3, 4 * cfg.side_patch_size, 5 * cfg.side_patch_size)
    with torch.no_grad():
        outputs, grid = side(images, clip, clip_grid)
    assert grid == (4, 5) and len(outputs) == len(cfg.deep_supervision)
    for query, patches in outputs:
        assert query.shape == (1, cfg.num_queries, cfg.side_width)
        assert patches.shape == (1, 20, cfg.side_width)


def test_mask_decoder_matches_a_hand_computation():
    torch.manual_seed(0)
    cfg = san_tiny()
    dec = MaskDecoder(cfg).eval()
    query, patches = torch.randn(2, cfg.num_queries, cfg.side_width), torch.randn(2, 6, cfg.side_width)
    with torch.no_grad():
        masks, biases = dec(query, patches, (2, 3))
        q, p = dec.query_mlp(query), dec.pix_mlp(patches)
        expected = torch.einsum("bqe,bpe->bqp", q, p).reshape(2, -1, 2, 3)
        a = dec.attn_mlp(patches).reshape(2, 6, cfg.attn_bias_layers, cfg.attn_bias_heads, -1)
        raw = torch.einsum("bqe,bplhe->blhqp", q, a)
        if cfg.rescale_attn_bias:
            raw = raw * dec.bias_scaling.weight.item() + dec.bias_scaling.bias.item()
    torch.testing.assert_close(masks, expected, rtol=1e-5, atol=1e-5)
    assert len(biases) == cfg.attn_bias_layers
    for layer, bias in enumerate(biases):
        assert bias.shape == (2, cfg.attn_bias_heads, cfg.num_queries, 2, 3)
        torch.testing.assert_close(bias.flatten(-2), raw[:, layer], rtol=1e-5, atol=1e-5)


def test_mlp_has_relu_between_layers_only():
    mlp = MLP(2, 3, 1, 2)
    with torch.no_grad():
        mlp.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        mlp.layers[0].bias.zero_()
        mlp.layers[1].weight.fill_(1.0)
        mlp.layers[1].bias.fill_(-10.0)
        out = mlp(torch.tensor([[2.0, -3.0]]))
    assert out.item() == 2.0 + 0.0 + 0.0 - 10.0  # relu(2) + relu(-2) + relu(-3), then no relu on -8


def test_fusion_adds_the_resized_projection_to_the_patches():
    torch.manual_seed(0)
    fusion = FusionLayer(8, 4, 1e-6).eval()
    patches, clip = torch.randn(1, 16, 4), torch.randn(1, 4, 8)
    with torch.no_grad():
        out = fusion(patches, clip, (2, 2), (4, 4))
        zero = fusion(patches, torch.zeros_like(clip), (2, 2), (4, 4))
    # a constant CLIP map normalises to zero: only the projection's bias (zero at init) is added
    torch.testing.assert_close(zero, patches)
    assert not torch.allclose(out, patches)
