"""The convert-once cache and ``ovss.load`` on real official-layout checkpoints (the parity fixtures)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ovss
from ovss.cli.main import main
from ovss.errors import CheckpointMismatchError
from ovss.weights import cache, modelfile, resolve
from ovss.weights.build import check_fits
from ovss.weights.registry import get_weight_spec
from tests.conftest import needs, parity_dir, relative_error

# family, fixture folder, tiny registry entry shaped like the fixture, official format
CASES = [
    ("san", "san_a", "test-san-tiny", "san_d2"),
    ("catseg", "catseg_a", "test-catseg-tiny", "catseg_d2"),
    ("sed", "sed_a", "test-sed-tiny", "sed_d2"),
]


def _fixture(folder: str):
    return needs(parity_dir() / folder / "state_dict.safetensors")


@pytest.mark.parametrize(("family", "folder", "tiny", "fmt"), CASES, ids=[c[0] for c in CASES])
def test_convert_once_then_load_by_path(family, folder, tiny, fmt, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    source = _fixture(folder)
    spec = dataclasses.replace(get_weight_spec(tiny), name=f"{family}-fixture", source_format=fmt)
    out = cache.convert_checkpoint(spec, source)
    assert out == resolve.converted_path(f"{family}-fixture") and out.is_file()
    mf = modelfile.open_model_file(out)
    config, fam = mf.model_config()
    check_fits(config, mf.meta_tensors(), str(out))
    mf.verify()
    state, meta = mf.load_tensors(), mf.metadata
    assert fam == family and meta["source_format"] == fmt and meta["name"] == f"{family}-fixture"
    assert config == spec.config()
    assert meta["source_sha256"] == resolve.verify_digest(source, None, "x")
    # the file alone rebuilds the model, with exactly the converted weights
    model, info = cache.load_model(out)
    assert info["family"] == family and info["name"] == f"{family}-fixture"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    # the official file given with --weights is converted on the fly into the same weights
    again, _ = cache.load_model(tiny, weights=source)
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_segmenter_from_converted_file_reproduces_official_scores(tmp_path):
    """SAN fixture: convert -> ovss.load(file) -> predict on input.npy equals the official sem_seg."""
    source = _fixture("san_a")
    spec = dataclasses.replace(get_weight_spec("test-san-tiny"), source_format="san_d2")
    out = cache.convert_checkpoint(spec, source, tmp_path / "san.safetensors")
    seg = ovss.load(out)
    folder = parity_dir() / "san_a"
    tokens = torch.from_numpy(np.load(folder / "tokens.npy"))
    images = torch.from_numpy(np.load(folder / "input.npy"))
    ref = load_file(str(folder / "outputs.safetensors"))["sem_seg"]
    with torch.no_grad():
        text = seg.model.encode_text(tokens)
        scores = seg.model.predict(images, text, tuple(ref.shape[-2:]), tuple(ref.shape[-2:]))
    assert relative_error(scores[0], ref) <= 1e-4


def test_official_file_of_unregistered_size_is_refused(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="fits none of san-vit-b16, san-vit-l14"):
        cache.load_model(_fixture("san_a"))


def test_convert_cli_writes_where_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path / "home"))
    out = tmp_path / "w.safetensors"
    assert main(["convert", "san-vit-b16", str(_fixture("san_a")), "--out", str(out)]) == 1
    assert "san-vit-b16" in capsys.readouterr().err  # the tiny fixture is not a ViT-B/16 checkpoint
    assert not out.exists()
