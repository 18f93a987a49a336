"""The streaming PNG writer (ovss.data.png): round trips through Pillow, bands that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize("band_rows", [1, 3, 1000])
@pytest.mark.parametrize("mode", ["RGB", "P", "L16"])
def test_streaming_png_round_trips_through_pillow(tmp_path, mode, band_rows):
    from ovss.data.png import save_png

    rng = np.random.default_rng(0)
    shape = (23, 31, 3) if mode == "RGB" else (23, 31)
    high = 65536 if mode == "L16" else 256
    image = rng.integers(0, high, shape).astype(np.uint16 if mode == "L16" else np.uint8)
    image[5:9] = image[4]  # repeated rows exercise the "Up" filter
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    bands = (image[r : r + band_rows] for r in range(0, 23, band_rows))
    path = save_png(tmp_path / "x.png", 31, 23, bands, mode, colours if mode == "P" else None)
    with Image.open(path) as decoded:
        assert decoded.size == (31, 23)
        if mode == "P":
            assert np.array_equal(np.asarray(decoded.getpalette(), np.uint8).reshape(-1, 3)[:256], colours)
        values = np.asarray(decoded)
    assert np.array_equal(values.astype(np.int64), image.astype(np.int64))


def test_streaming_png_refuses_bands_that_do_not_fit(tmp_path):
    from ovss.data.png import save_png

    with pytest.raises(ValueError, match="expected 4"):
        save_png(tmp_path / "x.png", 5, 4, [np.zeros((3, 5), np.uint8)], "P")
    with pytest.raises(ValueError, match="does not fit"):
        save_png(tmp_path / "y.png", 5, 4, [np.zeros((4, 6), np.uint8)], "P")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
