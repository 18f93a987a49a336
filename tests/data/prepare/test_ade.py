"""data/prepare/ade.py: the ADE20K-847 resizers against OpenCV's outputs."""

from __future__ import annotations

import numpy as np

from ovss.data.prepare.ade import resize_bilinear_u8, resize_nearest


def test_ade847_resizers_match_opencv():
    # Reference outputs computed once with OpenCV 4.10 cv2.resize (INTER_LINEAR / INTER_NEAREST).
    image = ((np.arange(9 * 11).reshape(9, 11) * 37 + 11) % 256).astype(np.uint8)
    expected = [
        [82, 140, 96, 154, 124, 117, 102],
        [98, 112, 163, 221, 74, 125, 139],
        [114, 172, 230, 32, 90, 148, 206],
        [166, 187, 41, 99, 128, 164, 76],
        [145, 72, 108, 166, 122, 158, 84],
    ]
    assert resize_bilinear_u8(image, 5, 7).tolist() == expected
    assert resize_bilinear_u8(np.stack([image] * 3, -1), 5, 7)[..., 2].tolist() == expected
    nearest = resize_nearest(np.arange(9 * 11).reshape(9, 11), 5, 7)
    assert nearest[:2].tolist() == [[0, 1, 3, 4, 6, 7, 9], [11, 12, 14, 15, 17, 18, 20]]
    assert nearest[4].tolist() == [77, 78, 80, 81, 83, 84, 86]
