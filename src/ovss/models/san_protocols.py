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

This module holds the mmseg side (sizes and the banded post-processing); the d2 post-processing is
``SAN.predict_blocks``' own.
"""

from __future__ import annotations

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
        a = x.index_select(dim, self.i0[sl] - offset) * self.w0[sl].view(shape)
        return a.add_(x.index_select(dim, self.i1[sl] - offset) * self.w1[sl].view(shape))


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

    def scores(lo: int, hi: int) -> torch.Tensor:  # rows [lo, hi) of S, columns resized: (n, B, W0, K)
        sig = first.band(cols, lo, hi, rowwise=torch.Tensor.sigmoid_)  # (n, B, w, Q)
        s = torch.matmul(sig, probs)
        return s if w == w0 else cols_t.apply(s, 2)

    if is_tracing():  # ONNX export: the whole map at once (a fixed-size graph, K dynamic)
        s = scores(0, h)
        yield 0, 0, bands_to_blocks(s if h == h0 else rows_t.apply(s, 0))
        return
    group = first.group
    per_row = b * max(w, w0) * (q + k) * max(1.0, h / h0)  # an output row needs h / h0 rows of S
    rows = first.band_rows(int(int(max_elements) // max(per_row, 1.0)))
    for start in range(0, h0, rows):
        stop = min(start + rows, h0)
        if h == h0:  # no row resize: the band's own rows of S
            yield 0, start, bands_to_blocks(scores(start, stop))
            continue
        lo = int(rows_t.i0[start:stop].min()) // group * group
        hi = min(-(-(int(rows_t.i1[start:stop].max()) + 1) // group) * group, h)
        yield 0, start, bands_to_blocks(rows_t.apply(scores(lo, hi), 0, start, stop, offset=lo))
