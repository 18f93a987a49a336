"""TTA under SAN's mmseg protocol: mmseg's ``tta_pipeline`` + ``SegTTAModel`` (the "ms+flip" column).

Each ratio resizes the ORIGINAL image (mmcv ``Resize(scale_factor=r, keep_ratio=True)``, cv2), the
maps come at the original size, and the softmax over the classes of each map is averaged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import ovss
from ovss.layers.cv2_resize import cv2_resize_linear, mmcv_scale_factor_size


def _hand(seg, rgb: np.ndarray, ratio: float, flip: bool) -> torch.Tensor:
    """One mmseg augmentation by hand: cv2-exact resize of the original, mirror, normalise, pad."""
    h0, w0 = rgb.shape[:2]
    sh, sw = mmcv_scale_factor_size(h0, w0, ratio)
    x = cv2_resize_linear(torch.from_numpy(rgb.copy()).permute(2, 0, 1), (sh, sw))[None]
    x = x.flip(-1) if flip else x
    cfg = seg.model.config
    x = (x - torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(cfg.pixel_std).view(1, 3, 1, 1)
    x = F.pad(x, (0, (-sw) % 32, 0, (-sh) % 32))
    with torch.no_grad():
        scores = seg.model.predict(x, seg.text_embeddings, (sh, sw), (h0, w0), inference="mmseg")[0]
    return (scores.flip(-1) if flip else scores).softmax(0)


def test_mmseg_tta_is_the_mean_softmax_over_ratios_of_the_original_size():
    rgb = np.random.default_rng(0).integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    seg = ovss.load("test-san-tiny")
    ratios = (0.75, 1.5)
    got = seg.predict(rgb, "cat; grass; sky", return_scores=True, tta=ratios, inference="mmseg")
    expected = sum(_hand(seg, rgb, r, f) for r in ratios for f in (False, True)) / 4
    np.testing.assert_allclose(got.scores, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(got.label_map, expected.argmax(0).numpy())
    # the d2 protocol's TTA is another computation (ratios of the 640-short-side test size, no softmax)
    d2 = seg.predict(rgb, return_scores=True, tta=ratios, inference="d2")
    assert not np.allclose(d2.scores, got.scores, atol=1e-3)
