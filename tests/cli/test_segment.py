"""``ovss segment``: options checked before the model loads, one-line errors, complete --help."""

from __future__ import annotations

import os

import pytest

import ovss.cli.segment as segment_cli
from ovss.cli.main import main


@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly if a test reaches the model: every check here must happen before it loads."""

    def load(args):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(segment_cli, "load_segmenter", load)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: ") and "\n" not in err and "Traceback" not in err
    return err.removeprefix("ovss: error: ")


def _segment(image, out, *extra) -> int:
    return main(
        ["segment", str(image), "--model", "test-san-tiny", "--classes", "a; b", "--out", str(out), *extra]
    )


def test_out_that_is_a_file_or_under_a_file_fails_before_the_model_loads(
    tmp_path, data_dir, no_model, capsys
):
    photo = data_dir / "quokka.jpg"
    file = tmp_path / "results.txt"
    file.write_text("not a folder")
    assert _segment(photo, file) == 1
    assert _error(capsys) == f"--out {file} is an existing file, not a folder; pass a folder path"
    assert _segment(photo, file / "sub" / "dir") == 1
    assert (
        _error(capsys)
        == f"--out {file / 'sub' / 'dir'} cannot be created: {file} is a file; pass another folder"
    )
    assert file.read_text() == "not a folder"


def test_out_that_cannot_be_written_fails_before_the_model_loads(
    tmp_path, data_dir, no_model, capsys, monkeypatch
):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root writes anyway, so simulate it there)
        locked.chmod(0o555)
    else:
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
        )
    try:
        assert _segment(data_dir / "quokka.jpg", locked) == 1
        assert _error(capsys) == f"--out {locked} is not writable; pass a folder you can write to"
        assert _segment(data_dir / "quokka.jpg", locked / "new") == 1
        assert (
            _error(capsys) == f"--out {locked / 'new'} cannot be created: {locked} is not writable; "
            "pass a folder you can write to"
        )
    finally:
        locked.chmod(0o755)
    assert not (locked / "new").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--batch-size", "-3"], "--batch-size must be >= 1, got -3"),
        (["--outputs", "label,mask"], "--outputs 'label,mask': choose one or more of label, overlay, json"),
        (["--opacity", "1.5"], "--opacity must be from 0 (image only) to 1 (colours only), got 1.5"),
        (["--palette", "nope"], "unknown palette 'nope'; use one of default, voc, hues or a JSON file"),
        (["--palette", "missing.json"], "palette file missing.json does not exist; check the path"),
        (["--min-score", "nan"], "--min-score must be a finite number (e.g. 0.3), got nan"),
    ],
)
def test_bad_options_are_one_line(tmp_path, data_dir, no_model, capsys, extra, message):
    assert _segment(data_dir / "quokka.jpg", tmp_path / "out", *extra) == 1
    assert _error(capsys).startswith(message)
    assert not (tmp_path / "out").exists()


def test_help_describes_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in [
        "--out OUT output folder (default: ovss_out)",
        "--outputs OUTPUTS comma-separated outputs per image among label, overlay, json, scores",
        "(default: label,overlay,json)",
        "--opacity OPACITY opacity of the overlay colours, 0 to 1 (default: 0.55)",
        "--palette NAME_OR_JSON overlay colours: default, voc, hues, or a JSON file",
        "--min-score S leave pixels whose best score is below S unlabelled",
        "--no-labels do not write the class names",
        "--batch-size BATCH_SIZE images of one size per forward pass (default: 1)",
        "--max-pixels MAX_PIXELS refuse larger images (default: $OVSS_MAX_PIXELS or 100000000; 0 = no limit)",
        "--overwrite recompute images already done in --out (default: skip them)",
        "a 16-bit grayscale PNG above 256",
        "torchrun --nproc_per_node 4 -m ovss.cli.main segment",
        "skips the images already done",
    ]:
        assert expected in text, expected


def test_eval_refuses_min_score(tmp_path, no_model_load, capsys):
    assert main(["eval", "--model", "test-san-tiny", "--dataset", "voc20", "--min-score", "0.3"]) == 1
    assert _error(capsys).startswith(
        "--min-score is not available in ovss eval: the benchmarks label every pixel"
    )


def test_scores_heatmaps_min_score_and_rendering_options(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from tests.conftest import noise_photo

    photo = noise_photo(tmp_path / "photo.png", 40, 56)
    out = tmp_path / "out"
    args = ["--outputs", "label,overlay,json,scores,heatmaps", "--palette", "voc", "--opacity", "0.3"]
    assert _segment(photo, out, *args, "--min-score", "1e9") == 0
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == [
        "photo.json",
        "photo_heatmap-0-a.png",
        "photo_heatmap-1-b.png",
        "photo_label.png",
        "photo_overlay.png",
        "photo_scores.npz",
    ]
    with np.load(out / "photo_scores.npz") as data:
        assert data["scores"].shape == (2, 40, 56) and data["class_names"].tolist() == ["a", "b"]
    record = json.loads((out / "photo.json").read_text())
    assert record["unlabelled"] == {"value": 255, "min_score": 1e9, "fraction": 1.0}  # nothing is that sure
    assert np.all(np.asarray(Image.open(out / "photo_label.png")) == 255)
    overlay = np.asarray(Image.open(out / "photo_overlay.png").convert("RGB"))
    assert np.array_equal(overlay[:, :56], np.asarray(Image.open(photo).convert("RGB")))  # uncoloured
    # The output folder as input: the heat maps are ovss outputs, not photos.
    from ovss.cli.segment_inputs import _folder_images

    images, skipped, _ = _folder_images(out, out)
    assert images == [] and sorted(skipped) == sorted(out.glob("photo_*.png")) and len(skipped) == 4
    capsys.readouterr()
    # The same options: done; another opacity or threshold changes the outputs: recorded settings
    # differ, so the run stops and names them (--overwrite replaces the results, heat maps included).
    assert _segment(photo, out, *args, "--min-score", "1e9") == 0
    assert "1 of 1 image(s) already done" in capsys.readouterr().out
    assert _segment(photo, out, *args[:-1], "0.8", "--min-score", "1e9") == 1
    assert "holds results made with other settings (render: " in _error(capsys)
    assert _segment(photo, out, *args[:-1], "0.8", "--outputs", "label,json", "--overwrite") == 0
    assert "unlabelled" not in json.loads((out / "photo.json").read_text())
    assert not list(out.glob("photo_heatmap*")) and not (out / "photo_scores.npz").exists()


def test_tta_scales_reach_predict_with_or_without_the_tta_flag(tmp_path):
    """``--tta --tta-scales 0.5,1`` passes the scales (the plain --tta flag used to replace them with
    the default ratios); ``--tta`` alone the defaults; images and video frames share the options."""
    from ovss.cli.main import build_parser
    from ovss.cli.segment import _predict_options
    from ovss.cli.segment_runs import frame_options

    parser = build_parser()
    scaled = {"tta": {"scales": [0.5, 1.0], "flip": True}}
    for flags in (["--tta", "--tta-scales", "0.5,1"], ["--tta-scales", "0.5,1"]):
        args = parser.parse_args(["segment", "x.jpg", "--classes", "a", *flags])
        assert _predict_options(None, args, ("label",), tmp_path, {}) == scaled
        assert frame_options(args, {}) == scaled
    args = parser.parse_args(["segment", "x.jpg", "--classes", "a", "--tta", "--min-score", "0.3"])
    assert _predict_options(None, args, ("label",), tmp_path, {"min_score": 0.3}) == {
        "tta": True, "min_score": 0.3
    }


def test_render_settings_are_taken_once_per_job(tmp_path, monkeypatch):
    """--opacity / --palette / --min-score are checked once (a palette file hashed once) and handed on:
    to the run key, the predict options and the drawing."""
    import hashlib
    import json

    from tests.conftest import count_file_hashes, noise_photo

    real, calls = segment_cli.render_settings, []

    def counted(args):
        calls.append(args)
        return real(args)

    monkeypatch.setattr(segment_cli, "render_settings", counted)
    palette = tmp_path / "colours.json"
    palette.write_text('["#0a0b0c", "#102030"]')
    hashed = count_file_hashes(monkeypatch)
    photo = noise_photo(tmp_path / "photo.png", 32, 40)
    out = tmp_path / "out"
    args = ["--palette", str(palette), "--opacity", "1", "--min-score", "0.01"]
    assert _segment(photo, out, *args) == 0
    assert len(calls) == 1 and hashed.count(palette.resolve()) == 1
    recorded = json.loads((out / segment_cli.STATE_DIR / "settings.json").read_text())["settings"]
    assert recorded["render"] == {"min_score": 0.01, "opacity": 1.0, "palette": str(palette),
                                  "palette_sha256": hashlib.sha256(palette.read_bytes()).hexdigest()}
    assert json.loads((out / "photo.json").read_text())["unlabelled"]["min_score"] == 0.01
