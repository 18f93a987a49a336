"""``ovss train`` command line (the training itself: tests/engine/test_trainer*.py)."""

from __future__ import annotations

import json

from ovss.cli.main import main
from ovss.engine.config import TrainConfig
from ovss.engine.recipes import load_config


def test_print_config_applies_weights_and_overrides(capsys):
    code = main(["train", "--config", "catseg-vit-b16", "--weights", "ckpt/model.pth",
                 "--set", "data.root=/data", "solver.batch_size=8", "--print-config"])
    assert code == 0
    cfg = TrainConfig.from_dict(json.loads(capsys.readouterr().out))
    expected = load_config("catseg-vit-b16").override(
        'model.weights="ckpt/model.pth"', "data.root=/data", "solver.batch_size=8"
    )
    assert cfg == expected


def test_errors_are_one_line_and_exit_1(capsys, tmp_path):
    assert main(["train", "--config", "tiny-san", "--set", "solver.lrr=1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: unknown config key 'solver.lrr'") and "\n" not in err
    assert main(["train", "--config", "tiny-san"]) == 1
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["train", "--config", "san-vit-b16", "--out", str(tmp_path), "--set", "data.root=/x"]) == 1
    assert "model.clip_weights" in capsys.readouterr().err  # official recipes need pretrained CLIP
    assert main(["train", "--config", "tiny-san", "--out", str(tmp_path / "r"), "--resume"]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
