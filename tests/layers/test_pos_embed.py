"""Positional-table resize against F.interpolate bicubic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovss.layers.pos_embed import resize_pos_embed


def test_resize_matches_interpolate_and_keeps_cls():
    pos = torch.randn(1 + 14 * 14, 6)
    out = resize_pos_embed(pos, (20, 27))
    assert out.shape == (1 + 20 * 27, 6)
    assert torch.equal(out[0], pos[0])
    img = pos[1:].reshape(14, 14, 6).permute(2, 0, 1)[None]
    ref = F.interpolate(img, size=(20, 27), mode="bicubic", align_corners=False)
    assert torch.equal(out[1:], ref[0].permute(1, 2, 0).reshape(-1, 6))
    # row-major order: row 0 of the patch grid is the first 27 entries
    assert torch.equal(out[1:28], ref[0, :, 0, :].T)


def test_same_grid_is_identity():
    pos = torch.randn(1 + 9, 4)
    assert resize_pos_embed(pos, (3, 3)) is pos


def test_non_square_table_is_refused():
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.randn(1 + 10, 4), (4, 4))
