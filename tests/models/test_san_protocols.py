"""SAN's two test protocols from the CLI: the .mmseg weights default to mmseg, --inference d2 switches."""

from __future__ import annotations

import numpy as np

import ovss
from tests.conftest import noise_photo, segment_max_scores


def test_segment_uses_the_models_protocol_unless_told(tmp_path):
    photo = noise_photo(tmp_path / "photo.png", h=40, w=60)
    classes = "cat; grass; sky"
    seg = ovss.load("test-san-tiny.mmseg", dtype="fp32")  # same random weights as test-san-tiny
    mm = seg.predict(photo, classes).class_scores
    d2 = seg.predict(photo, classes, inference="d2").class_scores
    assert not np.allclose(mm, d2, atol=1e-5)  # cv2 vs PIL resize, and the post-processing order
    base = [str(photo), "--classes", classes, "--dtype", "fp32"]
    got = segment_max_scores([*base, "--model", "test-san-tiny.mmseg"], tmp_path / "a")
    np.testing.assert_allclose(got, mm, rtol=0, atol=2e-6)  # the JSON rounds to 6 decimals
    got = segment_max_scores([*base, "--model", "test-san-tiny.mmseg", "--inference", "d2"], tmp_path / "b")
    np.testing.assert_allclose(got, d2, rtol=0, atol=2e-6)  # the JSON rounds to 6 decimals
    got = segment_max_scores([*base, "--model", "test-san-tiny"], tmp_path / "c")  # official: d2
    np.testing.assert_allclose(got, d2, rtol=0, atol=2e-6)  # the JSON rounds to 6 decimals
    got = segment_max_scores([*base, "--model", "test-san-tiny", "--inference", "mmseg"], tmp_path / "d")
    np.testing.assert_allclose(got, mm, rtol=0, atol=1e-5)  # only the mean/std decimals differ
