"""Banded separable bilinear resizing against F.interpolate, and band-size independence; per-plane
resize and sigmoid, whose values never depend on how many planes come along; crops summed on a
canvas out of place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.layers.resize import (
    BandedResize,
    bands_to_blocks,
    bilinear_matrix,
    bilinear_resize,
    paste_sum,
    resize_planes,
    sigmoid_planes,
)


@pytest.mark.parametrize(("n_in", "n_out"), [(5, 5), (4, 13), (13, 4), (40, 640), (853, 640), (7, 8)])
def test_bilinear_matrix_is_f_interpolate_along_one_axis(n_in: int, n_out: int) -> None:
    x = torch.randn(3, n_in, generator=torch.Generator().manual_seed(0))
    m = bilinear_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # a partition of unity
    assert ((m != 0).sum(1) <= 2).all()  # two taps at most
    ref = F.interpolate(x.view(1, 3, n_in, 1), size=(n_out, 1), mode="bilinear", align_corners=False)
    # the float32 kernel's own weights: equal up to the rounding of its float32 sums
    np.testing.assert_allclose(x.double().numpy() @ m.T, ref[0, :, :, 0].numpy(), rtol=1e-6, atol=1e-6)
    if n_in == n_out:
        assert (m == np.eye(n_in)).all()


# (h_s, w_s) -> padded (H, W) -> crop (h, w) -> output (H0, W0): SAN's mask post-processing
CHAINS = [
    (4, 6, 64, 96, 50, 70, 25, 35),
    (10, 14, 160, 224, 160, 220, 480, 640),
    (6, 6, 96, 96, 96, 96, 96, 96),
]


@pytest.mark.parametrize("chain", CHAINS)
def test_composed_resize_matches_chained_interpolate(chain) -> None:
    hs, ws, hp, wp, h, w, h0, w0 = chain
    x = torch.randn(2, 5, hs, ws, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(x, size=(hp, wp), mode="bilinear", align_corners=False)[..., :h, :w]
    ref = F.interpolate(ref, size=(h0, w0), mode="bilinear", align_corners=False)
    rows = bilinear_matrix(h, h0) @ bilinear_matrix(hs, hp)[:h]
    resize = BandedResize(rows, bilinear_matrix(w, w0) @ bilinear_matrix(ws, wp)[:w])
    out = resize(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert ((out - ref).norm() / ref.norm()) < 1e-6  # same weights, float32 rounding only
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize(("group", "rows"), [(1, 1), (1, 3), (4, 1), (4, 16), (8, 1000)])
def test_any_banding_is_bit_identical_to_one_band(group: int, rows: int) -> None:
    x = torch.randn(2, 7, 9, 11, generator=torch.Generator().manual_seed(2))
    matrix = bilinear_matrix(5, 61) @ bilinear_matrix(9, 5)  # down then up: 3-4 taps per row
    resize = BandedResize(matrix, bilinear_matrix(11, 47), group=group)
    step = resize.band_rows(rows)
    assert step % group == 0 and step >= group
    cols = resize.columns(x)
    assert cols.shape == (9, 2, 47, 7)  # channels-last columns
    whole = resize.band(cols, 0, 61, rowwise=torch.Tensor.sigmoid_)
    bands = torch.cat(
        [resize.band(cols, i, min(i + step, 61), rowwise=torch.Tensor.sigmoid_) for i in range(0, 61, step)]
    )
    assert torch.equal(bands, whole)
    assert torch.equal(bands_to_blocks(resize.band(cols, 0, 61)), resize(x))
    assert resize(x).shape == (2, 7, 61, 47)


def test_bands_must_follow_the_row_groups() -> None:
    resize = BandedResize(bilinear_matrix(4, 20), bilinear_matrix(4, 6), group=8)
    cols = resize.columns(torch.randn(1, 2, 4, 4))
    assert resize.band(cols, 16, 20).shape == (4, 1, 6, 2)  # the last, shorter group
    with pytest.raises(ValueError, match="multiples of group=8"):
        resize.band(cols, 4, 12)


def test_bf16_input_is_resized_in_float32() -> None:
    x = torch.rand(1, 3, 4, 4)
    resize = BandedResize(bilinear_matrix(4, 16), bilinear_matrix(4, 16))
    out = resize(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, resize(x.bfloat16().float()))


def test_bilinear_resize_is_f_interpolate_and_keeps_a_tensor_of_that_size() -> None:
    """CAT-Seg's views and SED's input resize: F.interpolate bilinear (align_corners=False), bit for
    bit; a tensor already of the size is returned itself (no copy)."""
    x = torch.randn(2, 3, 20, 30)
    expected = F.interpolate(x, size=(13, 41), mode="bilinear", align_corners=False)
    assert torch.equal(bilinear_resize(x, (13, 41)), expected)
    assert bilinear_resize(x, (20, 30)) is x


@pytest.mark.parametrize("size", [(96, 96), (37, 53)])  # F.interpolate's two kernels (by H0 + W0)
def test_resize_planes_never_depends_on_the_number_of_planes(size: tuple[int, int]) -> None:
    x = torch.randn(2, 7, 24, 24, generator=torch.Generator().manual_seed(0))
    full = resize_planes(x, size)
    # the values of F.interpolate on a whole channels-first map of more than three channels
    assert full.shape == (2, 7, *size) and torch.equal(full, F.interpolate(x, size=size, mode="bilinear"))
    for k in range(1, 8):  # three planes included (F.interpolate's own kernel for C == 3)
        assert torch.equal(resize_planes(x[:, :k], size), full[:, :k]), k
        assert torch.equal(resize_planes(x[1:, 2 : 2 + k], size), full[1:, 2 : 2 + k]), k
    assert resize_planes(x, (24, 24)) is x


def test_sigmoid_planes_never_depends_on_the_number_of_planes() -> None:
    gen = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(2, 16, 30, 40, generator=gen)  # 1200 elements a plane: not a whole number of vectors
    before = x.clone()
    full = sigmoid_planes(x)
    assert full.dtype == torch.float32 and full.is_contiguous() and torch.equal(x, before)
    torch.testing.assert_close(full, x.sigmoid(), rtol=0, atol=2e-7)
    cropped = sigmoid_planes(x[..., :25, :33])  # non-contiguous planes are made contiguous first
    for k in range(1, 17):
        assert torch.equal(sigmoid_planes(x[:, :k]), full[:, :k]), k
        assert torch.equal(sigmoid_planes(x[1:, k - 1 :]), full[1:, k - 1 :]), k
        assert torch.equal(sigmoid_planes(x[:, :k, :25, :33]), cropped[:, :k]), k
    assert torch.equal(sigmoid_planes(x.bfloat16()), sigmoid_planes(x.bfloat16().float()))


def test_paste_sum_is_the_in_place_accumulation_bit_for_bit() -> None:
    """Overlapping boxes and ones on the border (mmseg's last row / column): the same sums, in the same
    order, as adding each crop into a zero canvas in place, eagerly and in the traced (export) form,
    whose graph is not tied to the class count it was traced with."""
    gen = torch.Generator().manual_seed(0)
    boxes = [(0, 0, 6, 7), (0, 3, 6, 10), (2, 0, 8, 7), (2, 3, 8, 10), (1, 1, 4, 4)]

    def crops(classes: int) -> list[torch.Tensor]:
        return [torch.randn(2, classes, y2 - y1, x2 - x1, generator=gen) for y1, x1, y2, x2 in boxes]

    def in_place(parts: list[torch.Tensor]) -> torch.Tensor:
        expected = torch.zeros(2, parts[0].shape[1], 8, 10)
        for part, (y1, x1, y2, x2) in zip(parts, boxes):
            expected[..., y1:y2, x1:x2] += part
        return expected

    parts = crops(3)
    out = paste_sum(iter(parts), boxes, (8, 10))  # a generator of crops is enough
    assert out.shape == (2, 3, 8, 10) and torch.equal(out, in_place(parts))
    assert torch.equal(paste_sum(parts[4:], boxes[4:], (8, 10))[..., 4:, :], torch.zeros(2, 3, 4, 10))
    traced = torch.jit.trace(lambda *p: paste_sum(p, boxes, (8, 10)), tuple(parts), check_trace=False)
    assert torch.equal(traced(*parts), in_place(parts))
    other = crops(5)  # another class count through the same graph
    assert torch.equal(traced(*other), in_place(other))
