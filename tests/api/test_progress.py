"""Progress inside one image: per TTA pass, per block of the score map (CAT-Seg slide: class chunks)."""

from __future__ import annotations

import numpy as np
import pytest

import ovss
from ovss.api import progress as progress_module
from ovss.api.progress import ImageProgress

from ..conftest import noise_photo


@pytest.fixture(scope="module")
def san():
    seg = ovss.load("test-san-tiny")
    seg.model.config.test_resize = type(seg.model.config.test_resize)(size=64, max_size=256)
    return seg


def _recorder():
    calls = []
    return calls, lambda done, total, unit: calls.append((done, total, unit))


def test_tta_reports_every_pass_in_order(san, tmp_path):
    photo = noise_photo(tmp_path / "p.png", 40, 60)
    calls, record = _recorder()
    with_progress = san.predict(photo, "cat; sky; road", tta=[0.5, 1.0], progress=record)
    assert calls == [(0, 4, "pass"), (1, 4, "pass"), (2, 4, "pass"), (3, 4, "pass"), (4, 4, "pass")]
    plain = san.predict(photo, "cat; sky; road", tta=[0.5, 1.0])
    np.testing.assert_array_equal(with_progress.label_map, plain.label_map)  # reporting changes nothing


def test_blocks_report_the_share_of_the_map_done(san, tmp_path, monkeypatch):
    photo = noise_photo(tmp_path / "p.png", 48, 64)
    monkeypatch.setattr(san, "block_mb", 3 * 8 * 64 * 4 / 2**20)  # 8 rows x 3 classes: 6 bands
    calls, record = _recorder()
    san.predict(photo, "cat; sky; road", progress=record)
    done = [c[0] for c in calls]
    assert calls[0] == (0, 100, "%") and calls[-1] == (100.0, 100, "%")
    assert len(calls) == 7 and done == sorted(done)


def test_catseg_slide_reports_class_chunks(tmp_path):
    seg = ovss.load("test-catseg-tiny")
    photo = noise_photo(tmp_path / "p.png", 32, 40)
    seg.block_mb = 32 * 40 * 4 / 2**20  # one class a block
    calls, record = _recorder()
    seg.predict(photo, "cat; sky; road; tree", inference="slide", progress=record)
    assert [c[0] for c in calls] == [0, 25.0, 50.0, 75.0, 100.0]


def test_image_progress_shows_a_bar_only_for_slow_images(capsys):
    slow = ImageProgress(delay=0)
    for done in range(5):
        slow(done, 4, "pass")
    assert slow._bar is None  # closed at the end of the image
    err = capsys.readouterr().err
    assert "TTA passes" in err and "/4 [" in err  # updates are throttled by tqdm (0.1 s)
    fast = ImageProgress(delay=60)
    for done in range(5):
        fast(done, 4, "pass")
    assert "TTA passes" not in capsys.readouterr().err
    off = ImageProgress(enabled=False)
    off(0, 4, "pass")
    assert off._bar is None


def test_segment_cli_shows_the_tta_passes(tmp_path, capsys, monkeypatch):
    from ovss.cli.main import main

    monkeypatch.setattr(progress_module, "DELAY_S", 0.0)
    photo = noise_photo(tmp_path / "p.png", 40, 60)
    argv = ["segment", str(photo), "--model", "test-san-tiny", "--classes", "cat; sky",
            "--tta-scales", "0.5,1", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "TTA passes" in err and "/4 [" in err  # updates are throttled by tqdm (0.1 s)
