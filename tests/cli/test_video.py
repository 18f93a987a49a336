"""``ovss segment clip.mp4`` (cli/video.py): outputs, one-line errors, the --out lock."""

from __future__ import annotations

import sys

from ovss.api.video import output_paths, read_label_video
from ovss.cli.main import main
from tests._video import _decoded_frames, _write_clip

CLASSES = "sky; grass, lawn; red car"


def test_cli_segments_a_clip_and_refuses_to_overwrite(tmp_path, capsys):
    clip = _write_clip(tmp_path / "clip.mp4", frames=6, width=40, height=30)
    args = ["segment", str(clip), "--classes", CLASSES, "--model", "test-san-tiny", "--out",
            str(tmp_path / "out"), "--every", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 of 6 frame(s) segmented" in out
    paths = output_paths(tmp_path / "out", "clip")
    assert len(list(read_label_video(paths["label"]))) == 3
    assert len(_decoded_frames(paths["overlay"])) == 3
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert main(args) == 1  # the outputs exist: one line, nothing replaced
    err = capsys.readouterr().err.strip()
    assert "already exist" in err and "--overwrite" in err and "\n" not in err
    assert main([*args, "--overwrite"]) == 0


def test_cli_video_errors_are_one_line(tmp_path, capsys, monkeypatch):
    clip = _write_clip(tmp_path / "clip.mp4", frames=2)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")
    base = ["segment", "--classes", "a; b", "--model", "test-san-tiny", "--out", str(tmp_path / "o")]
    assert main([*base, str(clip), str(photo)]) == 1
    assert "separate runs" in capsys.readouterr().err
    assert main([*base, str(clip), "--every", "0"]) == 1
    assert "--every must be >= 1" in capsys.readouterr().err
    assert main([*base, str(photo), "--every", "2"]) == 1
    assert "applies to videos only" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert main([*base, str(broken)]) == 1
    assert "cannot read video" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    assert main([*base, str(clip)]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'ovss[video]'" in err and "\n" not in err


def test_video_runs_take_the_out_lock_and_leave_no_state_behind(tmp_path, capsys):
    from ovss.cli.segment_inputs import STATE_DIR
    from ovss.cli.segment_runs import OutputLock

    clip = _write_clip(tmp_path / "clip.mp4", frames=2)
    out = tmp_path / "out"
    args = ["segment", str(clip), "--classes", "a; b", "--model", "test-san-tiny", "--out", str(out)]
    lock = OutputLock(out / STATE_DIR).acquire(out)  # another run holds --out
    try:
        assert main(args) == 1
        assert "is in use by another ovss segment run" in capsys.readouterr().err
        assert not list(out.glob("clip*"))
    finally:
        lock.release()
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.json", "clip_label.mkv", "clip_overlay.mp4"]


def test_video_outputs_and_options_are_checked_before_the_model_loads(tmp_path, capsys, no_model_load):
    clip = _write_clip(tmp_path / "clip.mp4", frames=1)
    out = str(tmp_path / "o")
    base = ["segment", str(clip), "--classes", "a; b", "--model", "test-san-tiny", "--out", out]
    assert main([*base, "--outputs", "label,scores"]) == 1
    err = capsys.readouterr().err
    assert err == "ovss: error: --outputs 'label,scores': for videos choose among label, overlay, json\n"
    assert main([*base, "--opacity", "3"]) == 1
    assert capsys.readouterr().err.startswith("ovss: error: --opacity must be")
    missing = tmp_path / "gone.mp4"
    assert main([*base[:1], str(missing), *base[2:]]) == 1
    assert capsys.readouterr().err == f"ovss: error: video {missing} does not exist; check the path\n"
    assert not (tmp_path / "o").exists()


def test_video_render_settings_are_taken_once(tmp_path, monkeypatch):
    """A video job checks --opacity / --palette / --min-score once, before the model loads, and draws
    every frame with those settings (a palette file is hashed once)."""
    import ovss.cli.segment_runs
    from tests.conftest import count_file_hashes

    real, calls = ovss.cli.segment_runs.render_settings, []

    def counted(args):
        calls.append(args)
        return real(args)

    monkeypatch.setattr(ovss.cli.segment_runs, "render_settings", counted)
    palette = tmp_path / "colours.json"
    palette.write_text('["#0a0b0c", "#102030"]')
    hashed = count_file_hashes(monkeypatch)
    clip = _write_clip(tmp_path / "clip.mp4", frames=2, width=40, height=30)
    args = ["segment", str(clip), "--classes", "a; b", "--model", "test-san-tiny", "--out",
            str(tmp_path / "out"), "--palette", str(palette), "--opacity", "0.5"]
    assert main(args) == 0
    assert len(calls) == 1 and hashed.count(palette.resolve()) == 1
