"""Segmenter inputs a user passes (images, devices, batch sizes) give one clear error each."""

from __future__ import annotations

import numpy as np
import pytest

from ovss.errors import ImageReadError, ImageTooLargeError, OvssError
from tests.conftest import noise_photo


@pytest.fixture(scope="module")
def tiny_san():
    import ovss

    return ovss.load("test-san-tiny")


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_predict_batch_refuses_a_batch_size_below_one_or_not_an_integer(tiny_san, batch_size):
    """predict_batch(batch_size=0/-1/2.5) ran silently with batches of one (the CLI refuses 0)."""

    with pytest.raises(OvssError) as info:
        list(tiny_san.predict_batch([np.zeros((8, 8, 3), np.uint8)], classes=["a"], batch_size=batch_size))
    assert str(info.value) == f"batch_size must be an integer >= 1, got {batch_size!r}"



@pytest.mark.parametrize("shape", [(0, 0, 3), (1, 6000, 3), (20000, 2, 3)])
def test_predict_refuses_empty_and_too_elongated_images(tiny_san, shape):
    with pytest.raises(ImageReadError) as info:
        tiny_san.predict(np.zeros(shape, np.uint8), "a; b")
    message = str(info.value)
    if shape[0] == 0:
        assert "holds no pixels" in message
    else:
        h, w = shape[:2]
        assert message.startswith(
            f"the image is {w}x{h} pixels (aspect ratio {max(h, w) // min(h, w)}:1), too elongated"
        )
        assert message.endswith("crop it into pieces closer to square")


def test_segmenter_max_pixels(tiny_san, tmp_path):
    from ovss.api.segmenter import Segmenter

    seg = Segmenter(tiny_san.model, name="tiny", max_pixels=100)
    with pytest.raises(ImageTooLargeError, match="above the limit of 100 "):
        seg.predict(noise_photo(tmp_path / "p.png"), "a; b")
