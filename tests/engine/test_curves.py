"""``curves.png``: series read from metrics.jsonl, redrawn by the trainer at each evaluation and the end."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

import ovss.engine.curves as curves
import ovss.plotting as plotting
from ovss.engine.recipes import load_config
from ovss.engine.trainer import train

from ._synthetic import make_shapes


def test_series_group_loss_terms_lr_and_eval():
    entries = [
        {"iteration": 1, "loss": 3.0, "loss_ce": 1.0, "loss_dice": 2.0, "lr": 1e-3, "grad_norm": 5.0},
        {"iteration": 2, "eval/mIoU": 12.5, "eval/pACC": 40.0},
        {"iteration": 2, "loss": 2.0, "loss_ce": float("nan"), "lr": 5e-4, "sec_per_iter": 0.1},
    ]
    s = curves.curve_series(entries)
    assert s["loss"] == {"loss": [(1, 3.0), (2, 2.0)], "loss_ce": [(1, 1.0)], "loss_dice": [(1, 2.0)]}
    assert s["lr"] == {"lr": [(1, 1e-3), (2, 5e-4)]}
    assert s["eval"] == {"mIoU": [(2, 12.5)], "pACC": [(2, 40.0)]}


def _tiny_run(tmp_path, iterations: int, eval_period: int, images: int, size: int):
    """A tiny-sed training config on ``images`` synthetic shapes, one checkpoint at the end."""
    classes = make_shapes(tmp_path / "data", count=images, size=size)
    return load_config("tiny-sed").override(
        f"data.root={json.dumps(str(tmp_path / 'data'))}", f"data.classes={json.dumps(str(classes))}",
        f"solver.iterations={iterations}", f"eval.period={eval_period}", f"checkpoint_period={iterations}",
        "log_period=1", "workers=0",
    )


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs 'ovss[plots]'")
def test_training_writes_curves_at_each_evaluation_and_at_the_end(tmp_path, monkeypatch):
    cfg = _tiny_run(tmp_path, iterations=4, eval_period=2, images=4, size=64)
    drawn = []
    original = curves.plot_curves

    def spy(metrics_path, path):
        lines = metrics_path.read_text().splitlines()
        drawn.append(len([e for e in map(json.loads, lines) if "eval/mIoU" in e]))
        return original(metrics_path, path)

    monkeypatch.setattr(curves, "plot_curves", spy)
    train(cfg, tmp_path / "run")
    # after the evaluations at 2 and 4; the one at 4 (the last iteration) holds every point, so the end
    # does not draw the same figure again (it used to: [1, 2, 2])
    assert drawn == [1, 2]
    png = tmp_path / "run" / "curves.png"
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape == (800, 800, 3)
    assert png.stat().st_size < 300_000
    red = (np.abs(image - [0xD0, 0x56, 0x3B]).max(axis=-1) <= 4).sum()  # the eval mIoU line
    blue = (np.abs(image - [0x2A, 0x7A, 0xB0]).max(axis=-1) <= 4).sum()  # the learning rate
    assert red > 50 and blue > 50


def test_a_run_without_evaluation_draws_its_curves_once_at_the_end(tmp_path, monkeypatch):
    cfg = _tiny_run(tmp_path, iterations=2, eval_period=0, images=2, size=32)
    drawn = []
    monkeypatch.setattr(curves, "plot_curves", lambda metrics_path, path: drawn.append(path))
    train(cfg, tmp_path / "run")
    assert drawn == [tmp_path / "run" / "curves.png"]


def test_curves_without_matplotlib_are_skipped_in_one_line(tmp_path, monkeypatch, caplog):
    for name in ["matplotlib", *[m for m in sys.modules if m.startswith("matplotlib.")]]:
        monkeypatch.setitem(sys.modules, name, None)  # every matplotlib import raises ImportError
    monkeypatch.setattr(plotting, "_warned", False)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0, "lr": 0.1}\n')
    assert curves.write_curves(tmp_path) is None
    assert curves.write_curves(tmp_path) is None
    assert [r.getMessage() for r in caplog.records] == [plotting.MISSING_MESSAGE]
    assert not (tmp_path / "curves.png").exists()


def test_overwrite_deletes_the_previous_runs_curves(tmp_path):
    from ovss.engine.rundir import clear_run

    for name in ("metrics.jsonl", "curves.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert sorted(clear_run(tmp_path)) == ["curves.png", "metrics.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # not a file of ovss: kept
