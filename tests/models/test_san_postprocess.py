"""SAN's banded post-processings (san_protocols): the group-at-a-time forms against whole-map references."""

from __future__ import annotations

import pytest
import torch

from ovss.layers.resize import BandedResize, bands_to_blocks, bilinear_matrix
from ovss.models.san_protocols import _Taps, d2_resize, d2_score_blocks, mmseg_score_blocks
from tests.models._blocks import assemble


@pytest.mark.parametrize(("n_in", "n_out"), [(13, 29), (29, 13), (16, 16)])
def test_taps_rows_and_into_are_apply(n_in, n_out):
    taps = _Taps(n_in, n_out, torch.device("cpu"))
    x = torch.randn(n_in + 3, 2, 5, 4)
    # the row form, on a slice of output rows whose input rows start at an offset
    lo = int(taps.i0[4:11].min())
    assert torch.equal(taps.rows(x[lo:], 4, 11, offset=lo), taps.apply(x[lo:], 0, 4, 11, offset=lo))
    y = torch.randn(3, 2, n_in, 4)
    out, tmp = torch.empty(3, 2, n_out, 4), torch.empty(3, 2, n_out, 4)
    assert torch.equal(taps.into(y, 2, out, tmp), taps.apply(y, 2))


def _inputs(b: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(b * 100 + k)
    return torch.randn(b, 10, 7, 9, generator=gen) * 3, torch.randn(b, 10, k + 1, generator=gen) * 3


@pytest.mark.parametrize(("image_size", "output_size"), [((50, 70), (47, 33)), ((64, 96), (64, 96)),
                                                         ((50, 70), (121, 150))])
def test_d2_blocks_are_channels_first_and_the_official_sum(image_size, output_size):
    masks, logits = _inputs(2, 4)
    shape = (2, 4, *output_size)
    maps = []
    for budget in (1, 500, 10**9):
        resize = d2_resize((7, 9), (64, 96), image_size, output_size)
        blocks = list(d2_score_blocks(masks, logits, resize, budget))
        assert all(block.is_contiguous() for _, _, block in blocks)  # channels-first: fast reductions
        maps.append(assemble(blocks, shape))
    assert all(torch.equal(m, maps[0]) for m in maps)  # a value never depends on the band size
    (h, w), (h0, w0) = image_size, output_size
    resize = BandedResize(bilinear_matrix(h, h0) @ bilinear_matrix(7, 64)[:h],
                          bilinear_matrix(w, w0) @ bilinear_matrix(9, 96)[:w])
    sig = resize(masks).sigmoid()  # (B, Q, H0, W0)
    expected = torch.einsum("bqk,bqhw->bkhw", logits.softmax(-1)[..., :-1], sig)
    torch.testing.assert_close(maps[0], expected, rtol=1e-5, atol=1e-6)
    for i in range(2):  # an image alone gets the numbers it gets inside the batch
        single = d2_score_blocks(masks[i : i + 1], logits[i : i + 1], resize, 500)
        assert torch.equal(assemble(single, (1, *shape[1:]))[0], maps[0][i])


def test_mmseg_blocks_equal_the_whole_map_form():
    masks, logits = _inputs(1, 6)
    (h, w), (h0, w0) = (50, 70), (121, 33)
    first = BandedResize(bilinear_matrix(7, 64)[:h], bilinear_matrix(9, 96)[:w])
    sig = first.band(first.columns(masks), 0, h, rowwise=torch.Tensor.sigmoid_)  # (h, B, w, Q)
    s = torch.matmul(sig, logits.softmax(-1)[..., :-1])  # (h, B, w, K)
    s = _Taps(h, h0, masks.device).apply(_Taps(w, w0, masks.device).apply(s, 2), 0)
    for budget in (1, 10**9):
        blocks = mmseg_score_blocks(masks, logits, (64, 96), (h, w), (h0, w0), budget)
        torch.testing.assert_close(assemble(blocks, (1, 6, h0, w0)), bands_to_blocks(s), rtol=1e-6, atol=1e-7)
