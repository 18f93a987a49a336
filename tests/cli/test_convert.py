"""``ovss convert`` as a new user meets it: ``--out newdir/``, a file of another variant, a trained tiny
run, and cached weights that lost their metadata."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import ovss
from ovss.cli.main import main
from ovss.engine.recipes import RECIPES
from ovss.errors import CheckpointMismatchError
from ovss.models.build import build_model
from ovss.weights.cache import load_model
from ovss.weights.modelfile import save_model_file
from ovss.weights.registry import get_weight_spec
from ovss.weights.resolve import converted_path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("ovss: error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.mark.parametrize("out", ["newdir/", "new/deeper/"])
def test_out_ending_in_a_slash_is_a_folder_created_for_the_file(out, tiny, tmp_path, home, monkeypatch):
    state, config = tiny
    source = save_model_file(tmp_path / "tiny.safetensors", state, config, "san")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "test-san-tiny", str(source), "--out", out]) == 0
    written = tmp_path / out / "test-san-tiny.safetensors"
    assert written.is_file() and (tmp_path / out).is_dir()
    model, _ = load_model(written)
    assert torch.equal(model.state_dict()["bg_embed"], state["bg_embed"])


def test_a_file_of_another_variant_is_named_not_called_crafted(tiny, tmp_path, home, capsys):
    state, config = tiny
    ovss_file = save_model_file(tmp_path / "tiny.safetensors", state, config, "san", name="test-san-tiny")
    bare = tmp_path / "tiny_bare.pt"
    torch.save(dict(state), bare)
    for source in (ovss_file, bare):
        assert main(["convert", "san-vit-b16", str(source)]) == 1
        err = _error(capsys)
        assert "crafted" not in err and "corrupt" not in err, err
        assert f"{source} holds the weights of test-san-tiny, another SAN variant, not san-vit-b16" in err
        assert "'ovss convert test-san-tiny FILE'" in err
    assert not converted_path("san-vit-b16").exists()


@pytest.mark.parametrize("recipe", ["tiny-san", "tiny-catseg", "tiny-sed", "tiny-catseg-v1"])
def test_a_trained_tiny_run_converts_or_is_said_to_differ(recipe, tmp_path, home, capsys):
    """The tiny recipes train test-*-tiny with some architecture overrides: a run whose shapes match
    converts; one whose shapes differ (tiny-san's side patch 8, tiny-catseg-v1's one block per stage)
    is told to be used directly, and it loads directly."""
    cfg = RECIPES[recipe]()
    spec = get_weight_spec(cfg.model.name)
    config = spec.config().override(*cfg.model.overrides)
    torch.manual_seed(0)
    model = build_model(config)
    final = save_model_file(tmp_path / "model_final.safetensors", model.state_dict(), config, spec.family,
                            name=cfg.name)  # as the trainer writes it
    code = main(["convert", spec.name, str(final), "--out", str(tmp_path / "converted.safetensors")])
    same_shapes = recipe in ("tiny-catseg", "tiny-sed")
    assert code == (0 if same_shapes else 1)
    if not same_shapes:
        err = _error(capsys)
        assert f"holds a {'SAN' if recipe == 'tiny-san' else 'CAT-Seg v1'} model named '{recipe}' whose " \
               f"architecture differs from {spec.name}'s (" in err
        assert "use the file itself (--model FILE, or ovss.load(FILE)) instead of converting it" in err
        assert ("side_patch_size 8 vs 16" if recipe == "tiny-san" else "resnet.depths") in err
    loaded, _ = load_model(final)  # used directly, the file's own architecture
    assert loaded.config == config


def test_cached_weights_without_ovss_metadata_say_delete_and_download(tiny, home):
    state, config = tiny
    target = converted_path("san-vit-b16")
    save_model_file(target, state, config, "san", name="san-vit-b16")
    save_file(load_file(str(target)), str(target))  # the same tensors, the metadata lost
    with pytest.raises(CheckpointMismatchError) as info:
        ovss.load("san-vit-b16")
    msg = str(info.value)
    assert f"{target} is a safetensors file without ovss metadata; delete it and run 'ovss download " \
           "san-vit-b16'" in msg
    assert "--weights" not in msg
    # a file of the user's own (not the cache) keeps the advice to pass it with its model name
    mine = converted_path("x").parent.parent / "mine.safetensors"
    save_file(load_file(str(target)), str(mine))
    from ovss.weights.modelfile import open_model_file

    with pytest.raises(CheckpointMismatchError, match="pass it with --model NAME --weights"):
        open_model_file(mine).model_config()
