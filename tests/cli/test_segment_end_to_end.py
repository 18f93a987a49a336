"""``ovss segment`` end to end on the real photos and its one-line errors (bad inputs, wrong weights)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ovss.cli.main import main
from ovss.data.io import read_image, read_label


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("test-san-tiny", []),
        ("test-catseg-tiny", ["--inference", "slide"]),
        ("test-sed-tiny", ["--fast", "--topk", "2"]),
    ],
)
def test_segment_end_to_end_on_real_photos(model, extra, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    photos = [*sorted((data_dir / "voc").glob("*.jpg")), data_dir / "quokka.jpg"]
    code = main(
        [
            "segment",
            *map(str, photos),
            "--model",
            model,
            "--classes",
            "person; bottle; sofa, couch; bus; car",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    for photo in photos:
        h, w = read_image(photo).shape[:2]
        label = read_label(out / f"{photo.stem}_label.png")
        assert label.shape == (h, w) and label.max() < 5
        summary = json.loads((out / f"{photo.stem}.json").read_text())
        assert summary["model"] == model and (summary["height"], summary["width"]) == (h, w)
        assert abs(sum(c["fraction"] for c in summary["classes"]) - 1) < 1e-4
        assert (out / f"{photo.stem}_overlay.png").is_file()
    assert f"wrote {len(photos)} result(s)" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_empty_vocabulary_is_one_line(data_dir, tmp_path, capsys):
    assert (
        main(
            [
                "segment",
                str(data_dir / "quokka.jpg"),
                "--model",
                "test-san-tiny",
                "--classes",
                " ; ",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "vocabulary is empty" in _one_line_error(capsys)


def test_unreadable_image_is_one_line(tmp_path, capsys):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\x00garbage")
    assert (
        main(["segment", str(bad), "--model", "test-san-tiny", "--classes", "a; b", "--out", str(tmp_path)])
        == 1
    )
    failed, summary = capsys.readouterr().err.strip().splitlines()  # listed, then one summary line
    assert failed.startswith(f"ovss: failed: {bad}: cannot decode {bad}") and "Traceback" not in failed
    assert summary.startswith("ovss: error: 1 of 1 image(s) could not be segmented")


def test_checkpoint_of_the_wrong_model_is_one_line(tmp_path, capsys):
    from tests.conftest import needs, parity_dir

    catseg = needs(parity_dir() / "catseg_a" / "state_dict.safetensors")
    shutil.copy(catseg, tmp_path / "catseg.safetensors")
    img = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert (
        main(
            [
                "segment",
                str(img),
                "--model",
                "san-vit-b16",
                "--weights",
                str(tmp_path / "catseg.safetensors"),
                "--classes",
                "a; b",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    assert "not a san checkpoint" in _one_line_error(capsys).lower()


def test_unknown_model_and_empty_folder_are_one_line(data_dir, tmp_path, capsys):
    photo = str(data_dir / "quokka.jpg")
    assert main(["segment", photo, "--model", "san-vit-b17", "--classes", "a"]) == 1
    assert "did you mean 'san-vit-b16'" in _one_line_error(capsys)
    assert main(["segment", str(tmp_path), "--model", "test-san-tiny", "--classes", "a"]) == 1
    assert "contains no images" in _one_line_error(capsys)
