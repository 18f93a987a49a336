"""SAN's two test protocols around the same network: detectron2 (MendelXu/SAN) and mmsegmentation.

The network (CLIP at ``clip_resolution`` of the padded input, side adapter, recognition) is the same;
what differs is what happens before and after it:

==========================  ==================================  =========================================
step                        ``d2`` (official SAN, detectron2)   ``mmseg`` (mmsegmentation 1.2.2 SAN)
==========================  ==================================  =========================================
test resize (uint8)         short side 640, long <= 2560, PIL   short side 640, long <= 2560 (rounded as
                            bilinear                            mmcv: ``ResizeShortestEdge`` then
                                                                ``imrescale``), cv2 INTER_LINEAR, exact
normalise, pad              CLIP mean/std, zero pad to 32       mmseg's 4-decimal CLIP mean/std, zero pad
                                                                to 32
post-processing             mask LOGITS resized to the padded   sum_q softmax(class)[:K] x sigmoid(mask)
                            size, cropped, resized to the       at the PADDED size, then cropped and the
                            output size, then sigmoid and the   CLASS SCORES resized bilinearly to the
                            class sum                           original size
TTA (``--tta``)             ratios of the test size, PIL, mean  ratios of the ORIGINAL size (mmcv
                            of the score maps                   ``Resize(scale_factor=r)``), cv2, mean of
                                                                softmax over classes (``SegTTAModel``)
==========================  ==================================  =========================================

This module holds both post-processings in bands of output rows (:func:`d2_score_blocks`,
:func:`mmseg_score_blocks`) and the mmseg sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ovss.layers.resize import BandedResize, bands_to_blocks, bilinear_matrix
from ovss.utils import is_tracing

SAN_PROTOCOLS = ("d2", "mmseg")
MMSEG_MEAN_255 = (122.7709, 116.7460, 104.0937)  # configs/san: data_preprocessor mean (RGB)
MMSEG_STD_255 = (68.5005, 66.6322, 70.3232)  # configs/san: data_preprocessor std (RGB)


class _Taps:
    """A 1-D bilinear resize (align_corners False) as two taps per output position:
    ``out[j] = w0[j] * x[i0[j]] + w1[j] * x[i1[j]]`` (the weights ``F.interpolate`` uses; an elementwise
    form, so a value never depends on which other positions are computed with it)."""

    def __init__(self, in_size: int, out_size: int, device: torch.device) -> None:
        m = bilinear_matrix(in_size, out_size)  # (out, in): at most two adjacent non-zeros per row
        i0 = (m != 0).argmax(axis=1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        rows = np.arange(out_size)
        w1 = np.where(i1 != i0, m[rows, i1], 0.0)
        if not np.allclose(m.sum(axis=1), m[rows, i0] + w1):
            raise RuntimeError(f"bilinear {in_size} -> {out_size} has more than two taps per position")
        self.i0, self.i1 = torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device)
        self.w0 = torch.from_numpy(m[rows, i0].astype(np.float32)).to(device)
        self.w1 = torch.from_numpy(w1.astype(np.float32)).to(device)

    def apply(
        self, x: torch.Tensor, dim: int, start: int = 0, stop: int | None = None, offset: int = 0
    ) -> torch.Tensor:
        """Output positions ``[start, stop)`` along ``dim`` of ``x`` (whose index 0 is input ``offset``)."""
        sl = slice(start, stop)
        shape = [1] * x.ndim
        shape[dim] = -1
        a = x.index_select(dim, self.i0[sl] - offset).mul_(self.w0[sl].view(shape))  # in place: no
        return a.add_(x.index_select(dim, self.i1[sl] - offset).mul_(self.w1[sl].view(shape)))  # copies

    def into(self, x: torch.Tensor, dim: int, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` (all positions, no offset) written into ``out``; ``tmp`` is scratch of the
        same shape (the same products and sums, without allocating)."""
        shape = [1] * x.ndim
        shape[dim] = -1
        torch.index_select(x, dim, self.i0, out=out).mul_(self.w0.view(shape))
        return out.add_(torch.index_select(x, dim, self.i1, out=tmp).mul_(self.w1.view(shape)))

    def rows(self, x: torch.Tensor, start: int, stop: int, offset: int = 0) -> torch.Tensor:
        """:meth:`apply` along dim 0, one output row at a time (the same products and sums; each row's
        operands stay in the cache instead of two gathered copies of the whole band)."""
        out = x.new_empty((stop - start, *x.shape[1:]))
        tmp = x.new_empty(x.shape[1:])
        i0, i1 = (self.i0[start:stop] - offset).tolist(), (self.i1[start:stop] - offset).tolist()
        for j, (a, b) in enumerate(zip(i0, i1, strict=True)):
            torch.mul(x[a], self.w0[start + j], out=out[j])
            out[j].add_(torch.mul(x[b], self.w1[start + j], out=tmp))
        return out


def _resized(small: int, padded: int, valid: int, out: int) -> np.ndarray:
    """(out, small) weights of one axis: resize to ``padded``, keep the first ``valid``, resize to
    ``out`` (the second product is skipped when it is the identity: the same float64 numbers)."""
    first = bilinear_matrix(small, padded)[:valid]
    return first if valid == out else bilinear_matrix(valid, out) @ first


def d2_resize(
    mask_size: tuple[int, int], padded_size: tuple[int, int], image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> BandedResize:
    """The official mask resize as one separable map: (h_s, w_s) mask logits resized (bilinear) to the
    padded input ``padded_size``, cropped to ``image_size``, resized to ``output_size``."""
    (hs, ws), (hp, wp), (h, w), (h0, w0) = mask_size, padded_size, image_size, output_size
    return BandedResize(_resized(hs, hp, h, h0), _resized(ws, wp, w, w0))


def d2_score_blocks(
    masks: torch.Tensor, logits: torch.Tensor, resize: BandedResize, max_elements: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The official (detectron2) SAN post-processing in bands of output rows.

    Officially the (B, Q, h_s, w_s) mask logits are resized (bilinear) to the padded input, cropped to
    the valid size, resized to the output size, passed through a sigmoid and summed over the queries
    weighted by the class probabilities. Here both resizes and the crop are one separable linear map
    (``resize``: :func:`d2_resize`, same weights to float32 rounding). Each fixed group of
    8 output rows is resized, passed through the sigmoid and combined with the classes while it is in
    the cache: ``(K, Q) @ (Q, 8 W0)`` per image, written straight into the band's channels-first
    block (its per-class maxima then read contiguous memory). Neither
    (B, Q, H0, W0) nor (B, K, H0, W0) is ever held; everything is float32 whatever the model dtype,
    and a value never depends on the band size (fixed groups, fixed product shapes).

    Args:
        masks: (B, Q, h_s, w_s) mask logits.
        logits: (B, Q, K+1) class logits (void last).
        resize: :func:`d2_resize` of the mask, padded, valid and output (H0, W0) sizes.
        max_elements: bound on the band working set B x (Q + K) x rows x W0 (at least 8 rows).

    Yields:
        ``(0, row_start, scores (B, K, r, W0) float32)`` contiguous, top to bottom: the sum over
        queries of softmax(class logits)[:K] x sigmoid(mask logits).
    """
    h0, w0 = resize.size
    probs = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    b, q, k = probs.shape
    if is_tracing():  # ONNX export: the whole map in one product (a fixed-size graph, K dynamic)
        sig = resize.band(resize.columns(masks), 0, h0, rowwise=torch.Tensor.sigmoid_)  # (H0, B, W0, Q)
        yield 0, 0, bands_to_blocks(torch.matmul(sig, probs))
        return
    classes = probs.transpose(1, 2).contiguous()  # (B, K, Q)
    cols = [resize.columns(masks[i : i + 1]) for i in range(b)]  # (h_s, 1, W0, Q) per image
    group = resize.group
    sig = torch.empty(group * w0 * q, device=masks.device)  # one group's mask probabilities, reused
    rows = resize.band_rows(int(max_elements) // (b * (q + k) * w0))
    for start in range(0, h0, rows):
        stop = min(start + rows, h0)
        block = torch.empty((b, k, stop - start, w0), device=masks.device)
        for g0 in range(start, stop, group):
            g1 = min(g0 + group, stop)
            for i in range(b):
                part = resize.band(cols[i], g0, g1, rowwise=torch.Tensor.sigmoid_, out=sig)
                torch.mm(classes[i], part.view(-1, q).T, out=block[i, :, g0 - start : g1 - start].view(k, -1))
        yield 0, start, block


def mmseg_score_blocks(
    masks: torch.Tensor,
    logits: torch.Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    max_elements: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """mmseg's SAN post-processing (``predict_by_feat`` + ``postprocess_result``) in bands of output rows.

    mmseg resizes the (B, Q, h_s, w_s) mask logits bilinearly to the padded input size, forms
    ``S = sum_q softmax(logits)[q, :K] * sigmoid(mask_q)`` there, crops the padding and resizes S
    bilinearly (align_corners False) to the original size. Here the first resize (restricted to the
    valid rows/columns: the crop commutes with the per-pixel combination) is a
    :class:`~ovss.layers.resize.BandedResize`; each band of output rows computes only the rows of S its
    two-tap bilinear weights touch (whole groups of rows, so a value never depends on the band size)
    and resizes them. Neither (B, Q, Hp, Wp) nor (B, K, h, w) is held at once.

    Args:
        masks: (B, Q, h_s, w_s) mask logits.
        logits: (B, Q, K+1) class logits (void last).
        padded_size: (Hp, Wp) of the network input; image_size: (h, w) valid region in it.
        output_size: (H0, W0) of the score map (the original image size).
        max_elements: bound on a band's working set.

    Yields:
        ``(0, row_start, scores (B, K, r, W0) float32)``, top to bottom; the scores are the mask-weighted
        class probabilities mmseg returns as ``seg_logits``.
    """
    (hs, ws), (hp, wp) = masks.shape[-2:], padded_size
    (h, w), (h0, w0) = image_size, output_size
    first = BandedResize(bilinear_matrix(hs, hp)[:h], bilinear_matrix(ws, wp)[:w])
    rows_t, cols_t = _Taps(h, h0, masks.device), _Taps(w, w0, masks.device)
    probs = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    b, q, k = probs.shape
    cols = first.columns(masks)  # (h_s, B, w, Q)

    group = first.group
    # one group of rows at a time, in reused buffers that stay in the cache: sigmoids, class product,
    # column-resize scratch
    buf = torch.empty(group * b * w * q, device=masks.device)
    prod = torch.empty(group * b * w * k, device=masks.device)
    scratch = torch.empty(group * b * w0 * k, device=masks.device)

    def view(t: torch.Tensor, *shape: int) -> torch.Tensor:
        return t[: math.prod(shape)].view(shape)

    def scores(lo: int, hi: int) -> torch.Tensor:  # rows [lo, hi) of S, columns resized: (n, B, W0, K)
        if is_tracing():
            s = torch.matmul(first.band(cols, lo, hi, rowwise=torch.Tensor.sigmoid_), probs)
            return s if w == w0 else cols_t.apply(s, 2)
        out = torch.empty((hi - lo, b, w0, k), device=masks.device)
        for g0 in range(lo, hi, group):
            g1 = min(g0 + group, hi)
            sig = first.band(cols, g0, g1, rowwise=torch.Tensor.sigmoid_, out=buf)  # (r, B, w, Q)
            if w == w0:
                torch.matmul(sig, probs, out=out[g0 - lo : g1 - lo])
                continue
            s = torch.matmul(sig, probs, out=view(prod, g1 - g0, b, w, k))
            cols_t.into(s, 2, out[g0 - lo : g1 - lo], view(scratch, g1 - g0, b, w0, k))
        return out

    if is_tracing():  # ONNX export: the whole map at once (a fixed-size graph, K dynamic)
        s = scores(0, h)
        yield 0, 0, bands_to_blocks(s if h == h0 else rows_t.apply(s, 0))
        return
    per_row = b * max(w, w0) * (q + k) * max(1.0, h / h0)  # an output row needs h / h0 rows of S
    rows = first.band_rows(int(int(max_elements) // max(per_row, 1.0)))
    for start in range(0, h0, rows):
        stop = min(start + rows, h0)
        if h == h0:  # no row resize: the band's own rows of S
            yield 0, start, bands_to_blocks(scores(start, stop))
            continue
        lo = int(rows_t.i0[start:stop].min()) // group * group
        hi = min(-(-(int(rows_t.i1[start:stop].max()) + 1) // group) * group, h)
        yield 0, start, bands_to_blocks(rows_t.rows(scores(lo, hi), start, stop, offset=lo))
