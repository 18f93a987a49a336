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
    bilinear weights touch (whole groups of rows, so a value never depends on the band size) and
    resizes them. Neither (B, Q, Hp, Wp) nor (B, K, h, w) is held at once.

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
    rows_b = bilinear_matrix(h, h0)
    second = BandedResize(rows_b, np.eye(1))  # only its row bookkeeping (groups, touched rows) is used
    cols_b = torch.from_numpy(bilinear_matrix(w, w0).astype(np.float32)).to(masks.device)  # (W0, w)
    probs = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    b, q, k = probs.shape
    cols = first.columns(masks)  # (h_s, B, w, Q)
    if is_tracing():  # ONNX export: one dense product per axis (a fixed-size graph, K dynamic)
        sig = first.band(cols, 0, h, rowwise=torch.Tensor.sigmoid_)  # (h, B, w, Q)
        s = torch.matmul(cols_b, torch.matmul(sig, probs))  # (h, B, W0, K)
        out = second.rows.to(s.device) @ s.reshape(h, -1)
        yield 0, 0, bands_to_blocks(out.reshape(h0, b, w0, k))
        return
    group = first.group
    per_row = b * max(w, w0) * (q + k) * max(1.0, h / h0)  # an output row needs h / h0 rows of S
    rows = second.band_rows(int(int(max_elements) // max(per_row, 1.0)))
    for start in range(0, h0, rows):
        stop = min(start + rows, h0)
        lo = int(second._first[start:stop].min()) // group * group
        hi = min(-(-(int(second._last[start:stop].max()) + 1) // group) * group, h)
        sig = first.band(cols, lo, hi, rowwise=torch.Tensor.sigmoid_)  # (n, B, w, Q)
        s = torch.matmul(cols_b, torch.matmul(sig, probs))  # (n, B, W0, K): S rows lo..hi, resized columns
        flat = s.reshape(hi - lo, -1)
        out = flat.new_empty(stop - start, flat.shape[1])
        weights = second.rows.to(flat.device)
        for g0 in range(start, stop, second.group):  # per group of output rows: band-size independent
            g1 = min(g0 + second.group, stop)
            a, z = int(second._first[g0:g1].min()), int(second._last[g0:g1].max()) + 1
            torch.mm(weights[g0:g1, a:z], flat[a - lo : z - lo], out=out[g0 - start : g1 - start])
        yield 0, start, bands_to_blocks(out.reshape(stop - start, b, w0, k))
