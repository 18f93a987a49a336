"""``ovss eval --out R`` resumes only the same evaluation: same weights, class list and data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovss.cli.main import main

from ._small_eval import shrink_eval_model


@pytest.fixture
def small_model(monkeypatch):
    shrink_eval_model(monkeypatch, 64)


def _folder(root: Path, seed: int = 0, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (size, size), dtype=np.uint8)).save(root / "labels" / f"{i}.png")
    (root / "classes.txt").write_text("road\nsky\ntree\n")
    (root / "other.txt").write_text("cat\ndog\nbird\n")
    return root


def _eval(folder: Path, out: Path, classes: str = "classes.txt", *extra: str) -> list[str]:
    return ["eval", "--folder", str(folder), "--classes", str(folder / classes), "--model", "test-san-tiny",
            "--out", str(out), *extra]


def test_resume_state_is_keyed_by_weights_classes_and_data(tmp_path, capsys, small_model):
    folder = _folder(tmp_path / "data")
    out = tmp_path / "eval"
    assert main(_eval(folder, out)) == 0
    first = json.loads((out / "data" / "metrics.json").read_text())
    assert main(_eval(folder, out)) == 0  # the same evaluation: resumed (nothing left to do)
    assert json.loads((out / "data" / "metrics.json").read_text())["detectron2"] == first["detectron2"]
    capsys.readouterr()

    # another class list, same label ids
    assert main(_eval(folder, out, "other.txt")) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"ovss: error: {out / 'data'} holds a finished evaluation (2 images) made with other "
                   f"class list; pass another --out, or delete {out / 'data'} to start over")

    # other weights under the same model name
    import ovss
    from ovss.models.build import family_of
    from ovss.weights.modelfile import save_model_file

    model = ovss.load("test-san-tiny").model
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    weights = save_model_file(tmp_path / "other.safetensors", state, model.config, family_of(model.config),
                              name="test-san-tiny")
    assert main(_eval(folder, out, "classes.txt", "--weights", str(weights))) == 1
    assert "made with other weights;" in capsys.readouterr().err

    # other data in the same folder (a label map replaced by one of another size)
    _folder(tmp_path / "data", seed=1, size=40)
    assert main(_eval(folder, out)) == 1
    assert "made with other data (files, sizes);" in capsys.readouterr().err

    # a fresh --out works with every one of them
    assert main(_eval(folder, tmp_path / "eval2", "other.txt")) == 0


def test_limit_gets_its_own_default_folder_and_messages_tell_finished_from_partial(
    tmp_path, capsys, small_model, monkeypatch
):
    from ovss.cli.eval import default_out
    from ovss.cli.main import build_parser
    from ovss.evaluation.runner import _state_extent

    argv = ["eval", "--dataset", "voc20", "--model", "san-vit-b16", "--limit", "50"]
    args = build_parser().parse_args(argv)
    assert default_out(args).name == "san-vit-b16-limit50"
    folder = _folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--folder", str(folder), "--classes", f"{folder}/classes.txt", "--model", "test-san-tiny"]
    assert main([*base, "--limit", "1"]) == 0  # the quick check docs/benchmarks.md suggests
    assert main(base) == 0  # then the full run, with the default --out too: not refused
    limited = json.loads((tmp_path / "ovss_eval/test-san-tiny-limit1/data/metrics.json").read_text())
    full = json.loads((tmp_path / "ovss_eval/test-san-tiny/data/metrics.json").read_text())
    assert (limited["images"], full["images"]) == (1, 2)
    two = {"total": 50, "world": 2}
    assert _state_extent({"done": [0, 2]}, two, 0) == "a partial evaluation (2 of 25 images of this process)"
    assert _state_extent({"done": list(range(1, 50, 2))}, two, 1) == "a finished evaluation (50 images)"
    assert _state_extent({"done": [0]}, {"total": 3, "world": 1}, 0) == "a partial evaluation (1 of 3 images)"
