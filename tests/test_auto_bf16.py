"""The default dtype as users on current server CPUs get it: ``auto`` resolved to bf16.

``dtype="auto"`` (the default of ovss.load, segment and the demo) means bf16 on CPUs with
AVX512-BF16 or AMX. The rest of the suite pins it to fp32 (tests/conftest.py), so that its numbers do
not depend on the test machine; this group (marker ``auto_bf16``) makes it resolve to bf16 on any
machine and runs every command and the API's entry points on the tiny models. ``.ci/run`` runs it
as its own step (``pytest -m auto_bf16``); bf16 is emulated (slow) on CPUs without bf16 units, so
everything here stays tiny.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import ovss
from ovss.cli.main import main
from tests._subprocess import child_env
from tests.conftest import noise_photo
from tests.engine._synthetic import make_shapes

pytestmark = pytest.mark.auto_bf16

MODELS = ["test-san-tiny", "test-san-tiny.mmseg", "test-catseg-tiny", "test-catseg-v1-tiny", "test-sed-tiny"]
CLASSES = "red square; green disc, circle; blue bar"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_auto_resolves_to_bf16_in_this_group():
    from ovss.api.device import parse_dtype

    assert parse_dtype("auto") == torch.bfloat16 and parse_dtype("fp32") == torch.float32


@pytest.mark.parametrize("model", MODELS)
def test_api_entry_points(model, tmp_path):
    """load, predict, predict_batch, tta and return_scores in bf16, against the same model in fp32."""
    seg = ovss.load(model)
    assert seg.dtype == torch.bfloat16 and next(seg.model.parameters()).dtype == torch.bfloat16
    photos = [noise_photo(tmp_path / f"p{i}.png", 48, 64, seed=i) for i in range(2)]
    one = seg.predict(photos[0], CLASSES, return_scores=True)
    assert one.label_map.shape == (48, 64) and one.scores.shape == (3, 48, 64)
    assert one.scores.dtype == np.float32 and np.isfinite(one.scores).all()
    exact = ovss.load(model, dtype="fp32").predict(photos[0], CLASSES, return_scores=True)
    # the same function to bf16 rounding (noise input on random weights: up to ~7 %; the tight bound on
    # a real photo is tests/api/test_segmenter.py::test_bf16_runs_close_to_fp32)
    assert _rel(one.scores, exact.scores) < 0.15
    batch = list(seg.predict_batch(photos, CLASSES, batch_size=2))
    assert [r.label_map.shape for r in batch] == [(48, 64)] * 2
    assert np.allclose(batch[0].class_scores, one.class_scores, rtol=0.05, atol=0.02)
    tta = seg.predict(photos[1], CLASSES, tta=True)
    assert tta.label_map.shape == (48, 64) and np.isfinite(tta.class_scores).all()


def test_every_command(tmp_path, capsys, monkeypatch):
    """models, download (offline), train, convert, segment, eval --folder and export, in one chain."""
    assert main(["models"]) == 0
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    assert main(["download", "san-vit-b16"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline mode is on" in err
    monkeypatch.delenv("OVSS_OFFLINE")

    data = tmp_path / "data"
    classes = make_shapes(data, count=4, size=64)
    run = tmp_path / "run"
    sets = [f"data.root={json.dumps(str(data))}", f"data.classes={json.dumps(str(classes))}",
            "solver.iterations=2", "solver.batch_size=2", "eval.period=2", "checkpoint_period=2",
            "precision=bf16", "workers=0"]
    argv = ["train", "--config", "tiny-catseg", "--out", str(run)]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 0, capsys.readouterr().err
    trained = run / "model_final.safetensors"
    assert trained.is_file()

    tiny = tmp_path / "tiny.safetensors"
    from ovss.weights.cache import load_model
    from ovss.weights.modelfile import save_model_file

    model, _ = load_model("test-sed-tiny")
    save_model_file(tiny, model.state_dict(), model.config, "sed", name="mine")
    converted = tmp_path / "converted.safetensors"
    assert main(["convert", "test-sed-tiny", str(tiny), "--out", str(converted)]) == 0

    for weights in (str(trained), str(converted)):
        out = tmp_path / "seg" / ovss.load(weights).name
        assert main(["segment", str(data / "images"), "--model", weights, "--classes", str(classes),
                     "--out", str(out)]) == 0, capsys.readouterr().err
        settings = json.loads((out / ".ovss-segment" / "settings.json").read_text())
        assert settings["settings"]["dtype"] == "bf16"
        assert len(list(out.glob("*_label.png"))) == 4
    report = tmp_path / "eval"
    assert main(["eval", "--folder", str(data), "--classes", str(classes), "--model", str(trained),
                 "--dtype", "auto", "--out", str(report)]) == 0, capsys.readouterr().err
    metrics = json.loads(next(report.glob("*/metrics.json")).read_text())
    assert "bfloat16" in json.dumps(metrics)  # the fingerprint records the dtype auto resolved to
    assert main(["export", "--model", str(converted), "--size", "64", "64",
                 "--out", str(tmp_path / "m.onnx")]) == 0, capsys.readouterr().err


def test_demo_backend_predict(tmp_path):
    from ovss.demo.backend import DemoBackend
    from ovss.demo.inputs import UploadGate

    photo = noise_photo(tmp_path / "p.png")
    # dtype "auto", as `ovss demo` starts it; the photo is admitted as an example of the page
    backend = DemoBackend("test-catseg-tiny", gate=UploadGate(examples=[photo]))
    try:
        out = backend.segment({"path": str(photo), "orig_name": "p.png"}, CLASSES)
        assert backend.segmenter().dtype == torch.bfloat16
        assert out.label_file.is_file() and out.overlay.size == (64, 48)
    finally:
        backend.close()


def _cli_child(args: list[str]) -> subprocess.CompletedProcess:
    """``ovss ARGS`` in a fresh process where auto resolves to bf16 (tests/_auto_bf16_cli.py)."""
    return subprocess.run([sys.executable, "-m", "tests._auto_bf16_cli", *args], env=child_env(),
                          capture_output=True, text=True, timeout=300)


def test_cli_in_a_fresh_process(tmp_path):
    """The command line as a user starts it (no monkeypatch of this process): export and segment."""
    onnx = tmp_path / "m.onnx"
    done = _cli_child(["export", "--model", "test-san-tiny", "--size", "64", "64", "--out", str(onnx)])
    assert done.returncode == 0 and onnx.is_file(), done.stderr
    photo = noise_photo(tmp_path / "p.png")
    done = _cli_child(["segment", str(photo), "--model", "test-sed-tiny", "--classes", CLASSES,
                       "--out", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    settings = json.loads((tmp_path / "out" / ".ovss-segment" / "settings.json").read_text())
    assert settings["settings"]["dtype"] == "bf16"
