"""Video: ``ovss segment clip.mp4`` / ``ovss.api.video.segment_video`` on a clip the test writes with PyAV."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ovss
from ovss.api.video import (
    _Encoder,
    label_video_vocabulary,
    output_paths,
    read_label_video,
    segment_video,
)
from ovss.api.visualize import overlay as render
from ovss.cli.main import main
from ovss.errors import OutputPathError
from ovss.models.base import ResizeConfig
from tests._video import _decoded_frames, _write_clip

av = pytest.importorskip("av")

CLASSES = "sky; grass, lawn; red car"


def _blocks(image):
    h, w = image.shape[:2]
    return image.astype(float).reshape(h // 8, 8, w // 8, 8, 3).mean(axis=(1, 3))


@pytest.fixture
def seg():
    segmenter = ovss.load("test-sed-tiny")
    segmenter.model.config.test_resize = ResizeConfig(size=48, max_size=256)
    return segmenter


@pytest.mark.parametrize("every", [1, 3])
def test_label_video_matches_per_frame_predictions(tmp_path, seg, every):
    clip = _write_clip(tmp_path / "clip.mp4")
    summary = segment_video(seg, clip, tmp_path / "out", classes=CLASSES, every=every, progress=False)
    frames = _decoded_frames(clip)
    taken = frames[::every]
    assert (summary.frames_read, summary.frames) == (8, len(taken))
    assert summary.fps == 12 / every and (summary.width, summary.height) == (64, 48)
    labels = list(read_label_video(summary.paths["label"]))
    assert len(labels) == len(taken)
    for rgb, label in zip(taken, labels):
        assert label.shape == (48, 64) and label.dtype == np.uint8
        np.testing.assert_array_equal(label, seg.predict(rgb).label_map)  # lossless, same labels
    assert len(np.unique(np.concatenate([m.ravel() for m in labels]))) >= 2  # not a constant map
    assert label_video_vocabulary(summary.paths["label"]) == ["sky", "grass", "red car"]
    overlay = _decoded_frames(summary.paths["overlay"])
    assert len(overlay) == len(taken) and overlay[0].shape == (48, 64, 3)
    # the overlay video shows the rendered overlay. The codec is lossy and subsamples colour 2x2 (the
    # random model's labels change from pixel to pixel), so compare means over 8x8 blocks: close to
    # the rendering, far from the bare frame.
    for rgb, label, shown in zip(taken, labels, overlay):
        expected = np.asarray(render(rgb, label.astype(np.int64), ["sky", "grass", "red car"], legend=False))
        error = np.abs(_blocks(shown) - _blocks(expected)).mean()
        assert error < 5 and np.abs(_blocks(shown) - _blocks(rgb)).mean() > 4 * error, error
    report = json.loads(summary.paths["json"].read_text())
    assert report["frames"] == len(taken) and report["every"] == every
    assert report["vocabulary"] == [["sky"], ["grass", "lawn"], ["red car"]]
    assert sum(c["mean_fraction"] for c in report["classes"]) == pytest.approx(1.0, abs=1e-4)


def test_sixteen_bit_labels_round_trip_losslessly(tmp_path):
    path = tmp_path / "labels.mkv"
    encoder = _Encoder(av, path, "label", 5, 33, 21, bits=16, tags={"OVSS_VOCABULARY": "[]"})
    maps = [(np.arange(21 * 33).reshape(21, 33) * (i + 1) % 847).astype(np.uint16) for i in range(3)]
    for m in maps:
        encoder.write(m)
    encoder.close()
    back = list(read_label_video(path))
    assert len(back) == 3 and all(b.dtype == np.uint16 for b in back)
    for a, b in zip(maps, back):
        np.testing.assert_array_equal(a, b)


def test_existing_outputs_are_refused_by_the_api(tmp_path, seg):
    clip = _write_clip(tmp_path / "clip.mp4", frames=2)
    segment_video(seg, clip, tmp_path, classes="a; b", progress=False, outputs=("label",))
    with pytest.raises(OutputPathError):
        segment_video(seg, clip, tmp_path, progress=False, outputs=("label",))


def test_frames_stream_through_one_at_a_time(tmp_path, seg, monkeypatch):
    """decode -> predict -> encode per frame: frame i is encoded before frame i + 1 is decoded."""
    import ovss.api.video as video

    clip = _write_clip(tmp_path / "clip.mp4", frames=5)
    events: list[str] = []
    open_source = video._open_source

    class LoggedContainer:
        def __init__(self, container):
            self.container = container

        def decode(self, *args, **kwargs):
            for i, frame in enumerate(self.container.decode(*args, **kwargs)):
                events.append(f"decode{i}")
                yield frame

        def close(self):
            self.container.close()

    def logged_open(av_module, source):
        container, stream = open_source(av_module, source)
        return LoggedContainer(container), stream

    write = video._Encoder.write

    def logged_write(self, array):
        events.append(f"encode-{self.kind}")
        write(self, array)

    monkeypatch.setattr(video, "_open_source", logged_open)
    monkeypatch.setattr(video._Encoder, "write", logged_write)
    segment_video(seg, clip, tmp_path / "out", classes="a; b", every=2, progress=False)
    expected = []
    for i in range(5):
        expected.append(f"decode{i}")
        if i % 2 == 0:
            expected += ["encode-label", "encode-overlay"]
    assert events == expected


def test_a_frame_size_change_is_refused_and_leaves_no_file(tmp_path, seg, monkeypatch):
    import ovss.api.video as video

    class Stream:
        average_rate, guessed_rate, frames = 10, 10, 2

    class Container:
        def decode(self, stream):
            for h, w in ((32, 48), (40, 48)):
                yield av.VideoFrame.from_ndarray(np.zeros((h, w, 3), np.uint8), format="rgb24")

        def close(self):
            pass

    monkeypatch.setattr(video, "_open_source", lambda av_module, source: (Container(), Stream()))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    with pytest.raises(video.ImageReadError, match="frame 2 is 48x40, the first one 48x32"):
        segment_video(seg, clip, tmp_path / "out", classes="a; b", progress=False)
    assert not list((tmp_path / "out").iterdir())  # no output and no temporary file left


def test_render_options_reach_every_frame(tmp_path, seg, capsys):
    from ovss.api.palettes import class_colours

    clip = _write_clip(tmp_path / "clip.mp4", frames=3)
    # --min-score above every score: every pixel unlabelled (255), the overlay is the bare frame
    args = ["segment", str(clip), "--classes", CLASSES, "--model", "test-sed-tiny", "--out",
            str(tmp_path / "o"), "--min-score", "1e9", "--palette", "hues", "--opacity", "1"]
    assert main(args) == 0
    paths = output_paths(tmp_path / "o", "clip")
    assert all((m == 255).all() for m in read_label_video(paths["label"]))
    frames, shown = _decoded_frames(clip), _decoded_frames(paths["overlay"])
    assert max(np.abs(_blocks(a) - _blocks(b)).mean() for a, b in zip(frames, shown)) < 3
    report = json.loads(paths["json"].read_text())
    expected = class_colours(["sky", "grass", "red car"], "hues").tolist()
    assert [c["colour"] for c in report["classes"]] == expected
    assert all(c["frames_present"] == 0 for c in report["classes"])
    # opacity 1 with the hues palette: the overlay is the class colours
    summary = segment_video(seg, clip, tmp_path / "p", classes=CLASSES, palette="hues", opacity=1.0,
                            labels=False, progress=False)
    label = next(read_label_video(summary.paths["label"]))
    colours = class_colours(["sky", "grass", "red car"], "hues")
    first = _decoded_frames(summary.paths["overlay"])[0]
    assert np.abs(_blocks(first) - _blocks(colours[label])).mean() < 6
    assert main([*args[:-6], "--opacity", "2"]) == 1
    assert "--opacity must be from 0" in capsys.readouterr().err
