"""Test-time-augmentation scales are bounded: one line before the model loads, and no
pass larger than the pixel bound."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ovss.cli.main import main
from ovss.errors import ConfigError, ImageTooLargeError
from tests.conftest import noise_photo, one_line_error

# ------------------------------------------------------------------------------------------------ TTA
BAD_SCALES = {
    "100": "in (0, 4], got 100",
    ",".join(["1"] * 200): "give 1 to 16 ratios",
    "inf": "got inf",
    "1e6": "got 1e+06",
    "0": "got 0",
    "-1": "got -1",
    "nan": "got nan",
}


@pytest.mark.parametrize("scales", list(BAD_SCALES))
def test_bad_tta_scales_are_one_line_before_the_model_loads(scales, tmp_path, capsys, no_model_load):
    photo = noise_photo(tmp_path / "p.png")
    for command in (["segment", str(photo)], ["eval", "--folder", str(tmp_path), "--classes", "a; b"]):
        argv = [*command, "--model", "test-san-tiny", "--tta-scales", scales, "--out", str(tmp_path / "o")]
        if command[0] == "segment":
            argv += ["--classes", "a; b"]
        assert main(argv) == 1
        err = one_line_error(capsys)
        assert "--tta-scales" in err and BAD_SCALES[scales] in err, err


@pytest.mark.parametrize(
    "scales", [(100.0,), (1.0,) * 200, (math.inf,), (1e6,), (0.0,), (-0.5,), (math.nan,), ("1",), ()]
)
def test_the_api_refuses_the_same_scales(scales):
    from ovss.api.tta import TTAConfig, parse_tta

    with pytest.raises(ConfigError):
        TTAConfig(scales=scales)
    with pytest.raises(ConfigError):
        parse_tta(list(scales))
    with pytest.raises(ConfigError):
        parse_tta({"scales": list(scales)})


def test_the_largest_scales_are_accepted():
    from ovss.api.tta import MAX_SCALE, MAX_SCALES, TTAConfig

    assert TTAConfig(scales=(MAX_SCALE,) * MAX_SCALES).scales == (4.0,) * 16


def test_a_pass_larger_than_the_pixel_bound_stops_before_any_pass(tmp_path, monkeypatch):
    import ovss
    import ovss.api.tta as tta

    seg = ovss.load("test-san-tiny")
    seg.model.config.test_resize = dataclasses.replace(seg.model.config.test_resize, size=64, max_size=256)
    photo = noise_photo(tmp_path / "p.png", 48, 64)  # test size 64 x 85
    calls = []
    original = seg.model.predict_blocks
    monkeypatch.setattr(seg.model, "predict_blocks", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(tta, "MAX_PASS_PIXELS", 128 * 171)
    assert seg.predict(photo, "a; b", tta=[0.5, 2.0]).label_map.shape == (48, 64)  # 128 x 170: fits
    calls.clear()
    with pytest.raises(ImageTooLargeError, match=r"TTA scale 2.5 makes .* 213x160 pixels .*per pass"):
        seg.predict(photo, "a; b", tta=[1.0, 2.5])
    assert calls == []  # refused before the first pass
