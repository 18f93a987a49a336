"""The named training recipes: their numbers against the official configs (specs), lookup errors."""

from __future__ import annotations

import pytest

from ovss.engine.recipes import load_config
from ovss.errors import ConfigError


def test_official_recipe_numbers():
    san = load_config("san-vit-b16")
    assert (san.solver.iterations, san.solver.batch_size, san.solver.lr, san.solver.weight_decay) == (
        60000, 32, 1e-4, 1e-4)
    assert (san.solver.schedule, san.solver.poly_power, san.solver.warmup_iters) == ("poly", 0.9, 0)
    assert (san.solver.clip_grad_norm, san.precision, san.eval.period) == (0.01, "fp16", 5000)
    assert san.augment.min_sizes == (320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960)
    assert (san.augment.max_size, san.augment.crop_size, san.augment.pad_value) == (2560, 640, 128)
    loss = san.loss
    assert (loss.class_weight, loss.mask_weight, loss.dice_weight, loss.void_weight) == (2.0, 5.0, 5.0, 0.1)
    assert (loss.num_points, loss.oversample_ratio, loss.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert load_config("san-vit-l14").model.name == "san-vit-l14"
    for name in ("catseg-vit-b16", "catseg-vit-l14"):
        cat = load_config(name)
        assert (cat.solver.iterations, cat.solver.batch_size, cat.solver.lr, cat.solver.schedule) == (
            80000, 4, 2e-4, "cosine")
        assert cat.solver.lr_multipliers == {"clip": 0.01} and cat.augment.crop_size == 384
        assert (cat.precision, cat.tf32, cat.loss.bce_weights) == ("fp32", True, (1.0,))
    for name in ("sed-convnext-b", "sed-convnext-l"):
        sed = load_config(name)
        assert (sed.solver.iterations, sed.solver.batch_size, sed.solver.lr, sed.solver.schedule) == (
            80000, 4, 2e-4, "cosine")
        assert (sed.augment.min_sizes, sed.augment.max_size, sed.augment.crop_size) == ((768,), 2666, 768)
        assert sed.eval.period == 10000 and sed.loss.bce_weights == (1.0, 1.0, 1.0, 1.0)


def test_finetune_recipe_takes_custom_data():
    cfg = load_config("san-vit-b16-finetune").override("data.root=/my/data", "data.classes=/my/classes.txt")
    assert cfg.model.weights == "san-vit-b16" and cfg.data.benchmark is None
    assert (cfg.data.root, cfg.data.classes) == ("/my/data", "/my/classes.txt")
    assert cfg.solver.lr == 1e-4 and cfg.eval.period == 0


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'san-vit-b16'"):
        load_config("san-vit-b61")


def _flat(section: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict) and key not in ("lr_multipliers", "options"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_mmseg_recipe_is_the_official_one_with_only_the_ports_differences() -> None:
    """The mmseg port's recipe changes the loss, the warm-up, the batch split and the evaluation
    convention of the official v1 recipe, and nothing else (spec: catseg_sed.md section 1.6)."""
    official = _flat(load_config("catseg-v1-r101-vit-b16").to_dict())
    mm = _flat(load_config("catseg-v1-r101-vit-b16.mmseg").to_dict())
    changed = {key for key in official.keys() | mm.keys() if official.get(key) != mm.get(key)}
    assert changed - {"name", "model.name"} == {  # the names carry the ".mmseg" suffix
        "loss.semantic_loss", "solver.warmup_iters", "solver.warmup_factor", "solver.batch_size",
        "eval.options", "eval.convention",
    }, changed
